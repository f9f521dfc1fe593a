"""Sharded measurement (``--shard fsdp``, FSDP2) on CPU with gloo: 2 and 4 ranks give the numbers
of one process with ``micro_batch_size = B/W`` (plain and preconditioned, on a transformer with
tied embeddings and AdamW with a no-decay group); FSDP2 is made to sum and the sum is the mean
gradient; a DCP folder saved by a sharded run loads shard by shard; what cannot work is refused.

Every multi-process run is a real torchrun job in a subprocess with a timeout (a hang fails the
test, not CI); the worker scripts meet at a barrier before tearing gloo down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bscrit.cli import app
from bscrit.errors import UsageError

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="needs torch.distributed with gloo",
    ),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):  # pragma: no cover - torch < 2.6
    pytest.skip("fully_shard is public from torch 2.6", allow_module_level=True)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
GUARD_S = 120  # a run that takes longer than this hangs: fail the test instead of CI

#: Two pre-norm transformer blocks, d = 32, input and output embeddings tied.
MODEL = """
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h):
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        return h + self.mlp(self.ln2(h))


class TinyTransformer(nn.Module):
    def __init__(self, vocab=256, dim=32, layers=2, length=12):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(length, dim))
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.emb(input_ids) + self.pos[: input_ids.shape[1]]
        for b in self.blocks:
            h = b(h)
        logits = self.head(self.norm(h))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def make_model():
    torch.manual_seed(0)
    return TinyTransformer()


def optimizer(model):
    decay = [p for n, p in model.named_parameters()
             if n.endswith("weight") and "ln" not in n and "norm" not in n]
    rest = [p for p in model.parameters() if not any(p is q for q in decay)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": rest, "weight_decay": 0.0}], lr=1e-2)


def train(model, opt, rank=0, world=1):
    import lm

    ds = lm.make_tokens(24)
    per = 8 // world
    for i in range(3):
        batch = [ds[j] for j in range(i * 8 + rank * per, i * 8 + rank * per + per)]
        b = {k: torch.stack([e[k] for e in batch]) for k in batch[0]}
        opt.zero_grad()
        model(**b)["loss"].backward()
        opt.step()
"""

SPEC = """
model: {factory: tlm.py:make_model}
checkpoint: ref.pt
data: {factory: lm.py:make_tokens, kwargs: {n: 64}}
loss: model
batch_size: 8
measure: {batches: 12, groups: 3, seed: 0, device: cpu, shard_blocks: [Block]}
"""

#: FSDP2 as bscrit shards it sums the ranks' weighted gradients: the mean gradient, in shards.
MEAN_GRADIENT = """
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from bscrit.engine.sharded import shard_model
import tlm
dist.init_process_group("gloo")
r, w = dist.get_rank(), dist.get_world_size()
ref, model = tlm.make_model(), tlm.make_model()
model, wrapped = shard_model(model, init_device_mesh("cpu", (w,)), ("Block",))
assert wrapped == ["blocks.0", "blocks.1"], wrapped
ids = torch.randint(0, 256, (8, 12), generator=torch.Generator().manual_seed(1))
names = [n for n, _ in ref.named_parameters()]
mean = torch.autograd.grad(ref(ids, labels=ids)["loss"], list(ref.parameters()))
c = 8 // w
(model(ids[r * c:(r + 1) * c], labels=ids[r * c:(r + 1) * c])["loss"] / w).backward()
for n, p, g in zip(names, model.parameters(), mean):
    mine = torch.chunk(g, w, dim=0)[r]
    local = p.grad.to_local()
    assert local.shape == mine.shape and local.numel() < g.numel(), n
    torch.testing.assert_close(local, mine, rtol=1e-5, atol=1e-7)
dist.barrier()
dist.destroy_process_group()
"""

#: A sharded run saves a DCP folder (model and AdamW state, by name, sharded).
SAVE_DCP = """
import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
import tlm
dist.init_process_group("gloo")
r, w = dist.get_rank(), dist.get_world_size()
model = tlm.make_model()
mesh = init_device_mesh("cpu", (w,))
for b in model.blocks:
    fully_shard(b, mesh=mesh)
fully_shard(model, mesh=mesh)
opt = tlm.optimizer(model)
tlm.train(model, opt, r, w)
msd, osd = get_state_dict(model, opt)
assert type(osd["state"]["emb.weight"]["exp_avg_sq"]).__name__ == "DTensor"
dcp.save({"model": msd, "optim": osd, "train_state": {"step": torch.tensor(3)}},
         checkpoint_id="step-3")
dist.barrier()
dist.destroy_process_group()
"""

#: A sharded measurement of checkpoint argv[2] with spec argv[1] into argv[3], with spies: no
#: reader of whole files runs (DCP's read_folder, safetensors' load_file), the DCP weights and
#: optimizer state arrive as DTensor shards, safetensors tensors are read by rows.
MEASURE_SHARDED = """
import json, os, sys
import safetensors.torch
import bscrit.load.dcp as bdcp
from bscrit.engine import precondition, sharded_loop
from bscrit.load import lazy_tensors
from bscrit.specfile.document import load_spec
from bscrit.workflows.measure import measure_session
from bscrit.workflows.plan import MeasureOptions


def whole(*args, **kwargs):
    raise AssertionError("a checkpoint was read whole")


bdcp.read_folder = safetensors.torch.load_file = whole
read, entry_read, dtensors, rows = bdcp._read, lazy_tensors.Entry.read, [], []


def spy(folder, md, keys, targets=None, no_dist=True):
    values = read(folder, md, keys, targets, no_dist)
    dtensors.extend((k, v) for k, v in values.items() if hasattr(v, "to_local"))
    return values


def entry_spy(self, lo=None, hi=None):
    rows.append((self.shape, lo, hi))
    return entry_read(self, lo, hi)


bdcp._read, lazy_tensors.Entry.read = spy, entry_spy
init, planned = sharded_loop.ShardedLoop.__init__, []


def init_spy(self, **kwargs):  # the group sums: this rank's shards only
    init(self, **kwargs)
    planned.append(sum(w.numel() for w in self.host.inner.weights))


sharded_loop.ShardedLoop.__init__ = init_spy
build, states = precondition.build_preconditioner, []


def build_spy(params, state, *args, **kwargs):  # the optimizer state the reading comes from
    states.extend(st["exp_avg_sq"] for st in (state or {}).get("state", {}).values())
    return build(params, state, *args, **kwargs)


precondition.build_preconditioner = build_spy
spec, ckpt, out = sys.argv[1:4]
m = measure_session(load_spec(spec), [ckpt], MeasureOptions(shard="fsdp", mode=sys.argv[4]))
if ckpt.startswith("step"):
    names = [k for k, _ in dtensors]
    assert any(k.endswith("exp_avg_sq") for k in names), names
    assert any(k.startswith("model.") for k in names), names
    assert all(v.to_local().shape[0] < v.shape[0] for _, v in dtensors if v.shape[0] >= 2)
elif not ckpt.endswith(".pt"):
    assert rows and all(hi - lo < shape[0] for shape, lo, hi in rows if shape and shape[0] >= 2)
assert states or "sharded" in ckpt  # the GPT-2 folder has no optimizer state
assert all(hasattr(v, "to_local") for v in states), [type(v) for v in states]  # shards only
if m is not None:
    json.dump(m.to_dict(), open(out, "w"))
    total = sum(t["numel"] for t in m.to_dict()["per_parameter"])
    world = int(os.environ["WORLD_SIZE"])
    assert planned and all(n <= 1.1 * total / world for n in planned), (planned, total)
"""


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The model, the data, an AdamW checkpoint (3 steps, decay and no-decay groups), the spec."""
    shutil.copy(ASSETS / "lm.py", tmp_path / "lm.py")
    (tmp_path / "tlm.py").write_text(MODEL)
    (tmp_path / "spec.yaml").write_text(SPEC)
    monkeypatch.syspath_prepend(str(tmp_path))
    import tlm

    model = tlm.make_model()
    opt = tlm.optimizer(model)
    tlm.train(model, opt)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3},
               tmp_path / "ref.pt")  # fmt: skip
    sys.modules.pop("tlm", None)  # the next test's tlm.py is another file
    return tmp_path


def _env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=f"{cwd}{os.pathsep}{env.get('PYTHONPATH', '')}")
    return env


def _torchrun(cwd: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(nproc), *args]  # fmt: skip
    r = subprocess.run(cmd, cwd=cwd, env=_env(cwd), capture_output=True, text=True,
                       timeout=GUARD_S)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _one_process(work: Path, out: str, *extra: str) -> dict:
    r = CliRunner().invoke(
        app, ["measure", str(work / "spec.yaml"), "-q", "--out", str(work / out), *extra]
    )
    assert r.exit_code == 0, r.output
    return json.loads((work / out).read_text())


def _assert_same(a: dict, b: dict, rel: float = 1e-5) -> None:
    """G, N (plain and preconditioned), their s.e., intervals, jackknife values, the mean loss
    and every tensor's numbers agree to ``rel``; the same batches and groups."""
    assert "preconditioned" in a["stats"] and "preconditioned" in b["stats"]
    for part in ("all", "preconditioned"):
        sa, sb = a["stats"][part], b["stats"][part]
        for key in ("G", "G_se", "N", "N_se", "nsr", "R", "G_ci95", "N_ci95"):
            assert sb[key] == pytest.approx(sa[key], rel=rel), (part, key)
        for key, values in sa["jackknife"].items():
            assert sb["jackknife"][key] == pytest.approx(values, rel=rel), (part, key)
    assert (b["num_batches"], b["groups"]) == (a["num_batches"], a["groups"])
    assert b["extra"]["mean_loss"] == pytest.approx(a["extra"]["mean_loss"], rel=rel)
    for ta, tb in zip(a["per_parameter"], b["per_parameter"], strict=True):
        assert (tb["name"], tb["shape"]) == (ta["name"], ta["shape"])
        for key in ("G", "N", "R", "invariance_ratio"):
            assert tb[key] == pytest.approx(ta[key], rel=rel, abs=1e-12), (ta["name"], key)


def _sharded(work: Path, nproc: int, out: str) -> dict:
    r = _torchrun(work, nproc, "-m", "bscrit", "measure", "spec.yaml", "--shard", "fsdp",
                  "--out", out, "--per-tensor", "none")  # fmt: skip
    assert r.stdout.count("bscrit measure  B=8") == 1  # rank 0 alone prints
    b = json.loads((work / out).read_text())
    d = b["extra"]["distributed"]
    assert (d["world_size"], d["shard"], d["sharded_blocks"]) == (nproc, "fsdp", 2)
    assert f"{8 // nproc} on each rank" in d["unit_of_sampling"]
    return b


def test_fsdp_sums_the_ranks_weighted_gradients_into_the_mean_gradient(work: Path) -> None:
    (work / "mean.py").write_text(MEAN_GRADIENT)
    _torchrun(work, 2, "mean.py")


def test_two_sharded_ranks_equal_one_process_in_micro_batches_of_b_over_w(work: Path) -> None:
    a = _one_process(work, "one.json", "--micro-batch-size", "4")
    b = _sharded(work, 2, "two.json")
    _assert_same(a, b)
    # 28 tensors, the tied embedding counted once, in the parameter count too
    assert len(b["per_parameter"]) == 28
    assert sum(t["numel"] for t in b["per_parameter"]) == sum(
        t["numel"] for t in a["per_parameter"]
    )


@pytest.mark.slow
def test_four_sharded_ranks_equal_one_process_in_micro_batches_of_b_over_w(work: Path) -> None:
    """Through measure_session, with spies: each rank's group sums and AdamW state (read whole
    from the torch.save file) are its quarter."""
    a = _one_process(work, "one.json", "--micro-batch-size", "2")
    (work / "measure_sharded.py").write_text(MEASURE_SHARDED)
    _torchrun(work, 4, "measure_sharded.py", "spec.yaml", "ref.pt", "four.json", "train")
    b = json.loads((work / "four.json").read_text())
    assert (b["extra"]["distributed"]["world_size"], b["extra"]["distributed"]["shard"]) == (
        4,
        "fsdp",
    )
    _assert_same(a, b)


def test_a_dcp_folder_of_a_sharded_run_loads_shard_by_shard(work: Path) -> None:
    (work / "save.py").write_text(SAVE_DCP)
    _torchrun(work, 2, "save.py")
    assert {p.name for p in (work / "step-3").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    a = _one_process(work, "one.json", "-c", str(work / "step-3"), "--micro-batch-size", "4")
    (work / "measure_sharded.py").write_text(MEASURE_SHARDED)
    _torchrun(work, 2, "measure_sharded.py", "spec.yaml", "step-3", "two.json", "train")
    b = json.loads((work / "two.json").read_text())
    assert b["checkpoints"][0]["step"] == 3
    _assert_same(a, b)


def test_a_sharded_hf_folder_loads_by_rows_and_wraps_its_no_split_modules(work: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=256, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)  # wte and lm_head tied; blocks: GPT2Block
    model.save_pretrained(work / "whole")
    model.save_pretrained(work / "sharded", max_shard_size="50KB")
    assert len(list((work / "sharded").glob("model-*.safetensors"))) > 1
    spec = SPEC.replace("factory: tlm.py:make_model", f"hf: {work / 'whole'}")
    (work / "hf.yaml").write_text(spec.replace("shard_blocks: [Block]", "mode: eval"))
    r = CliRunner().invoke(app, ["measure", str(work / "hf.yaml"), "-c", str(work / "sharded"),
                                 "-q", "--json", "--micro-batch-size", "4"])  # fmt: skip
    assert r.exit_code == 0, r.output
    a = json.loads(r.stdout)
    (work / "measure_sharded.py").write_text(MEASURE_SHARDED)
    _torchrun(work, 2, "measure_sharded.py", "hf.yaml", "sharded", "two.json", "eval")
    b = json.loads((work / "two.json").read_text())
    assert b["extra"]["distributed"]["sharded_blocks"] == 2  # GPT2Block x 2, found by itself
    for key in ("G", "N", "G_se", "N_se"):
        assert b["stats"]["all"][key] == pytest.approx(a["stats"]["all"][key], rel=1e-5), key


FLAKY = """
import os
import tlm


class Flaky(tlm.TinyTransformer):
    calls = 0

    def forward(self, *args, **kwargs):
        Flaky.calls += 1
        if os.environ.get("RANK") == "1" and Flaky.calls > 3:
            raise RuntimeError("flaky model broke on purpose")
        return super().forward(*args, **kwargs)


def make_model():
    return Flaky()
"""


@pytest.mark.slow
def test_a_rank_failing_inside_fsdp_stops_every_rank_at_the_timeout(work: Path) -> None:
    """The other rank waits in FSDP's collective: every rank stops at --dist-timeout, exit 3,
    the failing rank's own error printed."""
    (work / "flaky.py").write_text(FLAKY)
    spec = (work / "spec.yaml").read_text().replace("tlm.py:make_model", "flaky.py:make_model")
    (work / "flaky.yaml").write_text(spec)
    cmd = [sys.executable, "-m", "bscrit", "measure", "flaky.yaml", "--nproc", "2", "--shard",
           "fsdp", "--dist-timeout", "5", "-q"]  # fmt: skip
    r = subprocess.run(cmd, cwd=work, env=_env(work), capture_output=True, text=True,
                       timeout=GUARD_S)  # fmt: skip
    assert r.returncode == 3, r.stderr[-3000:]
    assert "rank 1 failed: the forward/backward pass failed at batch 3: flaky model broke" in (
        " ".join(r.stderr.split())
    )


def test_b_not_divisible_by_the_ranks_and_unsupported_options_are_refused(work: Path) -> None:
    spec = str(work / "spec.yaml")
    r = CliRunner().invoke(app, ["measure", spec, "--shard", "fsdp", "--nproc", "3", "--yes"])
    assert r.exit_code == 2
    assert "B = 8 is not divisible by the 3 ranks" in r.output
    r = CliRunner().invoke(app, ["measure", spec, "--shard", "fsdp", "--nproc", "2", "--yes",
                                 "--micro-batch-size", "4", "-b", "12"])  # fmt: skip
    assert r.exit_code == 2 and "micro_batch_size 4 does not divide the 6 examples" in r.output
    r = CliRunner().invoke(app, ["measure", spec, "--shard", "fsdp", "--estimator",
                                 "per-example", "--compile"])  # fmt: skip
    assert r.exit_code == 2
    assert "--estimator per-example" in r.output and "--compile does not work with --shard" in (
        r.output.replace("\n", " ")
    )


def test_one_process_is_a_world_of_one(work: Path) -> None:
    a = _one_process(work, "one.json")
    b = _one_process(work, "shard1.json", "--shard", "fsdp")
    assert b["extra"]["distributed"]["world_size"] == 1
    _assert_same(a, b)


def test_torch_without_public_fully_shard_is_refused() -> None:
    from bscrit.engine.sharded import require_fully_shard

    with pytest.raises(UsageError, match=r"shard fsdp needs torch >= 2.6, .*installed: 2.5.1"):
        require_fully_shard("2.5.1")
    require_fully_shard()  # the installed torch has it
