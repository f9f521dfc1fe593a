"""SIGTERM under ``measure --nproc`` exits 143 as without it (torchrun's agent turns the signal
into its own exception, which the launcher maps to the CLI's ``Terminated``), and the digits
example saves its checkpoints atomically, never through a planted link (issue 26)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_sigterm_under_nproc_exits_143_and_writes_nothing(tmp_path: Path) -> None:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    shutil.copy(ASSETS / "marked_loss.py", tmp_path / "marked.py")
    marker = tmp_path / "measuring"
    loss = f"loss: {{factory: marked.py:make_loss, kwargs: {{marker: '{marker}'}}}}"
    spec = (tmp_path / "valid.yaml").read_text().replace("loss: cross_entropy", loss)
    (tmp_path / "slow.yaml").write_text(spec)
    out = tmp_path / "m.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "bscrit", "measure", str(tmp_path / "slow.yaml"), "--batches",
           "2000000", "--quiet", "--out", str(out), "--nproc", "2"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate(timeout=10)
        time.sleep(0.5)  # the ranks are measuring
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr
    assert "interrupted (SIGTERM); no output file was written" in stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".m.json*"))


def test_digits_checkpoints_are_saved_atomically_and_never_through_a_link(tmp_path: Path) -> None:
    from bscrit.examples.digits.train import save_atomic

    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"keep me")
    target = tmp_path / "checkpoints" / "final.pt"
    target.parent.mkdir()
    target.symlink_to(victim)
    (target.parent / ".final.pt.tmp").symlink_to(victim)
    save_atomic({"w": torch.ones(2)}, target)
    assert victim.read_bytes() == b"keep me"
    assert not target.is_symlink()
    assert torch.equal(torch.load(target)["w"], torch.ones(2))
    assert sorted(p.name for p in target.parent.iterdir()) == [".final.pt.tmp", "final.pt"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
