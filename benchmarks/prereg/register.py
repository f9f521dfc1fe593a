"""Step 1 of the pre-registered validation: bscrit's answers, written BEFORE the truth is measured.

For each setting (``settings.py``): train the base run to its checkpoint (cached in ``work/``,
git-ignored), write a spec, and record what bscrit says with its frozen defaults:

- ``bscrit measure`` (SGD: ``--sample-steps auto``, the equilibrium draws; LM: one checkpoint,
  ``-k 400`` because the default k = ⌈n/B⌉ ≈ 30,000 batches is not affordable here),
- ``bscrit predict --json`` (the recommended range),
- ``bscrit check -b B' --json`` at every B' of the grid (LM: under both ``--adam-rule`` values):
  the exit code and the verdict line,
- ``bscrit confirm --json`` at every B' of SGD settings (defaults: 3 seeds, δ = 10%),
- ``bscrit svag --json`` at every B' of ``teacher-si`` (the other settings: not affordable).

Output: ``registered/<setting>.json`` (committed, never edited afterwards; ``score.py`` checks in
git that it was committed before the truth and not changed since). Resumable: each bscrit answer is
cached under ``work/<setting>/``.

    python benchmarks/prereg/register.py --setting teacher-si
    python benchmarks/prereg/register.py --all
    python benchmarks/prereg/register.py --smoke --out /tmp/prereg   # ~1 min; numbers mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from settings import COUNTING, FREEZE_COMMIT, SETTINGS, LmSetting, SgdSetting, get  # noqa: E402

#: bscrit as frozen: a checkout of FREEZE_COMMIT (``BSCRIT_FROZEN=/path``, run by an interpreter
#: that imports bscrit from there: README of this folder), else this tree.
FROZEN = os.environ.get("BSCRIT_FROZEN", str(ROOT))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1",
       "PYTHONPATH": FROZEN + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
SVAG_SETTINGS = ("teacher-si", "smoke-sgd")


def bscrit(*args: str, cache: Path | None = None) -> dict[str, Any]:
    """``python -m bscrit ARGS`` single-threaded: exit code, stdout, stderr's last lines, seconds;
    cached in ``cache`` (a JSON file) when given."""
    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "bscrit", *args], capture_output=True, text=True,
                       env=ENV, cwd=FROZEN)  # fmt: skip
    out = {"args": list(args), "exit": p.returncode, "stdout": p.stdout,
           "stderr_tail": p.stderr.strip().splitlines()[-6:],
           "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(out))
    return out


def _json(text: str) -> dict[str, Any] | None:
    try:
        return json.loads(text[text.index("{") :])
    except ValueError:
        return None


def _code(v: Any) -> str | None:
    """A verdict's code: confirm prints it as a string, svag as {"code": ...}."""
    return v if isinstance(v, str) or v is None else v.get("code")


# ----------------------------------------------------------------------------------------------
# base runs and specs
# ----------------------------------------------------------------------------------------------


def sgd_base(st: SgdSetting, work: Path) -> tuple[Path, Path]:
    """The seed-0 run at B0 to the end of the constant-LR phase, and its spec."""
    import torch
    from common import train_classifier

    torch.set_num_threads(1)
    ckpt = work / f"base-e{st.decay_epoch}.pt"
    if not ckpt.exists():
        train_classifier(st.data, st.arch, st.B0, st.lr0, st.weight_decay, st.decay_epoch,
                         st.decay_epoch, 0, st.width, save_at=st.decay_epoch,
                         save_to=ckpt)  # fmt: skip
    spec = work / "spec.yaml"
    common = HERE / "common.py"
    spec.write_text(
        f"model:\n  factory: {common}:make_classifier\n"
        f"  kwargs: {{name: {st.data}, arch: {st.arch}, width: {st.width}, seed: 0}}\n"
        f"checkpoint:\n  path: {ckpt}\n  key: model\n"
        f"data:\n  factory: {common}:make_dataset\n  kwargs: {{name: {st.data}, split: train}}\n"
        f"eval_data:\n  factory: {common}:make_dataset\n"
        f"  kwargs: {{name: {st.data}, split: test}}\n"
        f"loss: cross_entropy\nbatch_size: {st.B0}\n"
        f"optimizer: {{name: sgd, lr: {st.lr0}, weight_decay: {st.weight_decay}}}\n"
        "schedule: {name: constant}\n"
        "measure: {device: cpu, seed: 0, mode: train}\n"
    )
    return ckpt, spec


def lm_base(st: LmSetting, work: Path) -> tuple[Path, Path]:
    """The base run to ``branch_step`` (AdamW, warm-up then constant LR), and its spec."""
    ckpt = work / f"base-s{st.branch_step}.pt"
    if not ckpt.exists():
        from lm_runs import train_base

        train_base(st, ckpt)
    spec = work / "spec.yaml"
    common = HERE / "common.py"
    spec.write_text(
        f"model:\n  factory: {common}:make_lm\n"
        f"  kwargs: {{d: {st.d_model}, layers: {st.layers}, seed: 0}}\n"
        f"checkpoint:\n  path: {ckpt}\n  key: model\n"
        f"data:\n  factory: {common}:make_windows\n  kwargs: {{split: train}}\n"
        f"eval_data:\n  factory: {common}:make_windows\n  kwargs: {{split: heldout}}\n"
        f"loss: {{factory: {common}:make_lm_loss}}\nbatch_size: {st.B0}\n"
        "optimizer: {name: adamw}\n"
        f"schedule: {{name: constant, warmup_steps: {st.warmup_steps}}}\n"
        "measure: {device: cpu, seed: 0, mode: train}\n"
    )
    return ckpt, spec


# ----------------------------------------------------------------------------------------------
# bscrit's answers
# ----------------------------------------------------------------------------------------------


def answers(st: SgdSetting | LmSetting, work: Path, smoke: bool) -> dict[str, Any]:
    sgd = isinstance(st, SgdSetting)
    ckpt, spec = sgd_base(st, work) if sgd else lm_base(st, work)
    m = work / "measurement.json"
    k = ["-k", "20"] if smoke else ([] if sgd else ["-k", "400"])
    eq = ["--sample-steps", "auto", "--yes"] if sgd else []
    if smoke and sgd:
        eq = ["--sample-steps", "200", "--samples", "2", "--yes"]
    meas = bscrit("measure", str(spec), "-c", str(ckpt), "--out", str(m), "--quiet", *eq, *k,
                  cache=work / "measure.json")  # fmt: skip
    if meas["exit"] != 0:
        raise SystemExit(f"{st.name}: measure failed: {meas['stderr_tail']}")
    res: dict[str, Any] = {"measure": {k: meas[k] for k in ("args", "exit", "seconds")},
                           "measurement": json.loads(m.read_text())}  # fmt: skip
    rules = ("sgd",) if sgd else st.rules
    targets = st.grid if sgd else tuple(k * st.B0 for k in st.kappas)
    res["predict"], res["check"] = {}, []
    for rule in rules:
        flag = [] if sgd else ["--adam-rule", rule]
        p = bscrit("predict", str(m), "--json", *flag, cache=work / f"predict-{rule}.json")
        res["predict"][rule] = {"exit": p["exit"], "json": _json(p["stdout"])}
        for b in targets:
            c = bscrit("check", str(m), "-b", str(b), "--json", *flag,
                       cache=work / f"check-{rule}-{b}.json")  # fmt: skip
            res["check"].append({"rule": rule, "B": b, "exit": c["exit"],
                                 "json": _json(c["stdout"])})  # fmt: skip
    res["confirm"], res["svag"] = [], []
    for b in targets if sgd else ():
        extra = ["--examples", str(4 * b), "--points", "4", "--seeds", "2"] if smoke else []
        c = bscrit("confirm", str(spec), "-c", str(ckpt), "-t", str(b), "--json", "--yes",
                   "--quiet", *extra, cache=work / f"confirm-{b}.json")  # fmt: skip
        d = _json(c["stdout"]) or {}
        res["confirm"].append({"B": b, "exit": c["exit"], "seconds": c["seconds"],
                               "verdict": _code(d.get("verdict")),
                               "json": d, "stderr_tail": c["stderr_tail"]})  # fmt: skip
        if st.name in SVAG_SETTINGS:
            extra = ["--effective-steps", "40", "--eval-batches", "4"] if smoke else []
            s = bscrit("svag", str(spec), "-c", str(ckpt), "-t", str(b), "--json", "--yes",
                       "--quiet", *extra, cache=work / f"svag-{b}.json")  # fmt: skip
            d = _json(s["stdout"]) or {}
            res["svag"].append({"B": b, "exit": s["exit"], "seconds": s["seconds"],
                                "verdict": _code(d.get("verdict")),
                                "stderr_tail": s["stderr_tail"]})  # fmt: skip
    return res


def environment() -> dict[str, Any]:
    import torch

    import bscrit

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=FROZEN)  # fmt: skip
    return {"python": platform.python_version(), "torch": torch.__version__,
            "machine": platform.machine(), "bscrit_commit": head.stdout.strip() or None,
            "freeze_commit": FREEZE_COMMIT, "bscrit_file": bscrit.__file__}  # fmt: skip


def register(name: str, out: Path, work_root: Path, smoke: bool) -> Path:
    st = get(name)
    dest = out / f"{name}.json"
    if dest.exists() and not smoke:
        print(f"{name}: already registered ({dest}); never edited afterwards", flush=True)
        return dest
    work = work_root / name
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = answers(st, work, smoke)
    doc = {"schema": "bscrit-prereg/1", "setting": st.to_dict(), "counting": COUNTING,
           "environment": environment(), "answers": res,
           "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    if isinstance(st, LmSetting):
        from common import prose_corpus, tokenized

        c = prose_corpus()
        doc["corpus"] = {"sha256": c["sha256"], "distributions": c["distributions"],
                         "tokenizer_sha256": tokenized()[2]}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(dest)
    print(f"{name}: registered in {doc['seconds']:.0f} s → {dest}", flush=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", action="append", default=[])
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="the tiny settings; numbers mean nothing")
    ap.add_argument("--out", type=Path, default=HERE / "registered")
    ap.add_argument("--work", type=Path, default=HERE / "work")
    a = ap.parse_args(argv)
    names = a.setting or (list(SETTINGS) if a.all else [])
    if a.smoke:
        names = ["smoke-sgd", "smoke-lm"]
    if not names:
        ap.error("name --setting NAME (repeatable), --all or --smoke")
    for name in names:
        register(name, a.out, a.work, a.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
