"""Distributed measurement on CPU with gloo: same numbers as one process, clean failures.

The multi-process tests start real torchrun jobs (2 ranks) in a subprocess, each with a timeout
that fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bscrit.cli import app
from bscrit.engine.distributed import ENV_TIMEOUT, _failure_message, all_reduce_sum, unwrap_model
from bscrit.engine.launch import measure_args_from_argv
from bscrit.engine.session import Session
from bscrit.errors import BscritError
from bscrit.specfile.document import load_spec
from bscrit.workflows.measure import run_measurement
from bscrit.workflows.plan import MeasureOptions

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
GUARD_S = 90  # a run that takes longer than this hangs: fail the test instead of CI

# A copy of tiny.make_model whose forward misbehaves on rank 1 after a few calls.
FLAKY = """
import os
import time

from torch import nn


class Flaky(nn.Sequential):
    calls = 0

    def __init__(self, how):
        super().__init__(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        self.how = how

    def forward(self, x):
        Flaky.calls += 1
        if os.environ.get("RANK") == "1" and Flaky.calls > 3:
            if self.how == "raise":
                raise RuntimeError("flaky model broke on purpose")
            time.sleep(1000)  # "hang"
        return super().forward(x)


def make_model(how):
    return Flaky(how)
"""

DDP_FACTORY = """
import sys

from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import tiny  # noqa: E402


def make_model(width=8):
    return DistributedDataParallel(tiny.make_model(width=width))
"""


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
        timeout=GUARD_S,
    )  # fmt: skip
    return r, time.perf_counter() - t0


def _flaky_spec(work: Path, how: str) -> Path:
    (work / "flaky.py").write_text(FLAKY)
    text = (work / "valid.yaml").read_text()
    text = text.replace("tiny.py:make_model", "flaky.py:make_model")
    text = text.replace("{width: 8}", "{how: " + how + "}")
    (work / "flaky.yaml").write_text(text)
    return work / "flaky.yaml"


def _assert_same_stats(a: dict, b: dict, rel: float) -> None:
    """G, N, NSR, their s.e., 95% intervals and jackknife values agree to ``rel``."""
    for part in ("all", "scale_invariant"):
        sa, sb = a["stats"][part], b["stats"][part]
        for key in ("G", "G_se", "N", "N_se", "nsr", "R", "G_ci95", "N_ci95", "nsr_ci95"):
            assert sb[key] == pytest.approx(sa[key], rel=rel), (part, key)
        for key, values in sa["jackknife"].items():
            assert sb["jackknife"][key] == pytest.approx(values, rel=rel), (part, key)
    assert b["num_batches"] == a["num_batches"] and b["groups"] == a["groups"]
    assert b["extra"]["mean_loss"] == pytest.approx(a["extra"]["mean_loss"], rel=rel)


# ----------------------------------------------------------------------------------------------
# Two ranks against one process (torchrun, gloo)
# ----------------------------------------------------------------------------------------------


def test_two_ranks_give_the_same_statistics_as_one_process(work: Path) -> None:
    one = work / "one.json"
    r = CliRunner().invoke(
        app, ["measure", str(work / "valid.yaml"), "--batches", "42", "--out", str(one), "-q"]
    )
    assert r.exit_code == 0, r.output
    two = work / "two.json"
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "bscrit", "measure", "valid.yaml", "--batches", "42", "--out", str(two),
            "--per-tensor", "none"]  # fmt: skip
    r2, elapsed = _run(args, work)
    assert r2.returncode == 0, r2.stderr
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    # the same 42 batches in the same 4 groups; only the float32 summation order differs
    _assert_same_stats(a, b, rel=1e-5)
    assert b["extra"]["distributed"]["world_size"] == 2
    assert b["extra"]["distributed"]["backend"] == "gloo"
    assert "per-rank batch of B = 8" in b["extra"]["distributed"]["unit_of_sampling"]
    assert "distributed" not in a["extra"]
    # rank 0 alone prints the table and writes the files
    assert r2.stdout.count("bscrit measure  B=8") == 1
    assert r2.stderr.count("wrote ") == 1
    assert elapsed < GUARD_S


def test_two_ranks_adaptive_past_max_groups_equal_one_process(work: Path) -> None:
    """Adaptive: 8 batches in 4 groups, +2 per check: 32 groups at 64 batches, then the extra
    batches are dealt into them (a block of one batch per group, on one rank) up to 80."""
    opts = ["--batches", "8", "--groups", "4", "--target-rel-error", "1e-9", "--max-batches",
            "80", "--per-tensor", "none"]  # fmt: skip
    one = work / "one.json"
    r = CliRunner().invoke(app, ["measure", str(work / "valid.yaml"), *opts, "--out", str(one)])
    assert r.exit_code == 0, r.output
    two = work / "two.json"
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "bscrit", "measure", "valid.yaml", *opts, "--out", str(two)]  # fmt: skip
    r2, _ = _run(args, work)
    assert r2.returncode == 0, r2.stderr
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["num_batches"] == 80 and a["groups"] == 32
    assert a["extra"]["stopping"]["reason"] == "budget exhausted"
    _assert_same_stats(a, b, rel=1e-5)


def test_world_of_one_in_process_equals_single_process_and_unwraps_ddp(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The distributed path with one rank (in this process) reproduces the plain run bitwise."""
    # a DDP-wrapping factory and a checkpoint saved from the DDP model ("module." keys)
    (work / "ddp.py").write_text(DDP_FACTORY)
    (work / "ddp.yaml").write_text(
        (work / "valid.yaml").read_text().replace("tiny.py:make_model", "ddp.py:make_model")
    )
    ckpt = torch.load(work / "tiny.pt", weights_only=True)
    sd = ckpt["model"] if "model" in ckpt else ckpt
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, work / "ddp.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    opts = MeasureOptions(batches=40)
    plain = run_measurement(load_spec(work / "valid.yaml"), None, opts)
    with Session("cpu", 30) as dist:
        assert dist is not None and dist.world_size == 1 and dist.is_main
        m = run_measurement(load_spec(work / "ddp.yaml"), [work / "ddp.pt"], opts, dist=dist)
    assert not torch.distributed.is_initialized()  # the session closed its process group
    assert m.all.G == plain.all.G and m.all.N == plain.all.N
    assert m.all.jackknife_G == plain.all.jackknife_G
    assert m.extra["distributed"]["world_size"] == 1
    assert [r.name for r in m.per_parameter] == [r.name for r in plain.per_parameter]


# ----------------------------------------------------------------------------------------------
# Failures end the run on every rank, with one clear message, instead of hanging
# ----------------------------------------------------------------------------------------------


def test_a_failing_rank_stops_every_rank_with_a_clear_error(work: Path) -> None:
    spec = _flaky_spec(work, "raise")
    out = work / "m.json"
    args = ["-m", "bscrit", "measure", str(spec), "--batches", "40", "--out", str(out), "-q",
            "--nproc", "2"]  # fmt: skip
    r, elapsed = _run(args, work, **{ENV_TIMEOUT: "60"})
    assert r.returncode == 3, r.stderr
    # printed once, by rank 0; the batch number is the single-process one (rank 1's 4th = 7)
    line = (
        "rank 1 failed: the forward/backward pass failed at batch 7: flaky model broke on purpose"
    )
    assert r.stderr.count(line) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert elapsed < 60  # no timeout was needed: the other rank learned it at the group's end


def test_a_stuck_rank_ends_in_a_timeout_with_a_clear_error(work: Path) -> None:
    spec = _flaky_spec(work, "hang")
    out = work / "m.json"
    args = ["-m", "bscrit", "measure", str(spec), "--batches", "40", "--out", str(out), "-q",
            "--nproc", "2", "--dist-timeout", "3"]  # fmt: skip
    r, elapsed = _run(args, work)
    assert r.returncode == 3, r.stderr
    assert "rank 0: lost contact with the other ranks" in r.stderr
    assert "timeout 3 s" in r.stderr and "--dist-timeout" in r.stderr
    assert not out.exists()
    assert elapsed < GUARD_S


# ----------------------------------------------------------------------------------------------
# Small pieces
# ----------------------------------------------------------------------------------------------


def test_measure_args_drop_nproc() -> None:
    argv = ["bscrit", "measure", "s.yaml", "--nproc", "4", "-k", "200", "--nproc=2", "-q"]
    assert measure_args_from_argv(argv) == ["s.yaml", "-k", "200", "-q"]
    with pytest.raises(BscritError, match="torchrun"):
        measure_args_from_argv(["pytest", "-q"])


def test_failure_message_names_ranks_or_says_it_once() -> None:
    assert _failure_message({1: (3, "boom")}, 4) == "rank 1 failed: boom"
    assert _failure_message({0: (2, "bad spec"), 1: (2, "bad spec")}, 2) == "bad spec"
    msg = _failure_message({1: (3, "a"), 2: (3, "b"), 3: (3, "a")}, 4)
    assert msg == "ranks 1, 3 failed: a\nrank 2 failed: b"


def test_unwrap_ddp_and_reject_fsdp() -> None:
    inner = torch.nn.Linear(2, 2)
    assert unwrap_model(torch.nn.DataParallel(inner)) is inner

    class FullyShardedDataParallel(torch.nn.Module):
        pass

    with pytest.raises(BscritError, match="FSDP"):
        unwrap_model(FullyShardedDataParallel())


def test_all_reduce_sum_buckets_mixed_dtypes_and_strides(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        ts = [torch.arange(6.0).reshape(2, 3).t(), torch.ones(5, dtype=torch.float64),
              torch.full((4,), 2.0), torch.zeros(3, dtype=torch.float64)]  # fmt: skip
        before = [t.clone() for t in ts]
        all_reduce_sum(ts, bucket_bytes=16)  # tiny buckets: every path (single, flat, flush)
        assert all(torch.equal(a, b) for a, b in zip(ts, before))
    finally:
        dist.destroy_process_group()


DICT_SPEC = """
model: {factory: lm.py:make_tagger}
checkpoint: tagger.pt
data: {factory: lm.py:make_tokens, kwargs: {n: 48}}
loss: model
batch_size: 8
micro_batch_size: 2
measure: {batches: 12, groups: 3, seed: 0, device: cpu}
"""


def test_two_ranks_on_dict_examples_in_micro_batches_equal_one_process(work: Path) -> None:
    """Ranks compute whole batches (dict examples, the model's own loss, micro-batches of 2) as
    one process does without micro-batches: only the float32 summation order differs."""
    shutil.copy(ASSETS / "lm.py", work / "lm.py")
    sys.path.insert(0, str(ASSETS))
    try:
        import lm
    finally:
        sys.path.remove(str(ASSETS))
    torch.manual_seed(0)
    torch.save(lm.make_tagger().state_dict(), work / "tagger.pt")
    (work / "dict.yaml").write_text(DICT_SPEC)
    one = work / "one.json"
    r = CliRunner().invoke(
        app, ["measure", str(work / "dict.yaml"), "--micro-batch-size", "8", "--out", str(one)]
    )
    assert r.exit_code == 0, r.output
    two = work / "two.json"
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "bscrit", "measure", "dict.yaml", "--out", str(two), "-q"]  # fmt: skip
    r2, _ = _run(args, work)
    assert r2.returncode == 0, r2.stderr
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["micro_batch_size"] == 2 and b["extra"]["distributed"]["world_size"] == 2
    for key in ("G", "N", "R"):
        assert b["stats"]["all"][key] == pytest.approx(a["stats"]["all"][key], rel=1e-5), key
