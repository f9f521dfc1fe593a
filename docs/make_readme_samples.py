"""Regenerate the sample outputs in README.md and the figures in examples/digits/README.md from
real runs of the current code.

    python docs/make_readme_samples.py            # everything: a few minutes on 2 CPU cores
    python docs/make_readme_samples.py --fast     # predict / check / scale only (seconds)
    python docs/make_readme_samples.py --render   # re-render every sample from the artifacts of
                                                  # the last full run (docs/samples/; seconds)

Each generated part of a README sits between ``<!-- sample: NAME -->`` and ``<!-- /sample -->``;
the script replaces what lies between the two markers and leaves the rest of the file alone.

- ``predict``, ``check``, ``scale``: the commands shown, run on the measurement fixtures in
  ``tests/assets/measurements/`` (no torch, seconds).
- ``measure``, ``svag``: the commands shown, run on the digits example (``examples/digits``; its
  checkpoint is trained first when missing, or with ``--retrain``). Their artifacts are kept in
  ``docs/samples/`` and the script checks that re-rendering them gives exactly what the run
  printed, so that the test can re-render them without training anything.
- ``demo-svag``: the verdict of the SVAG step of a full ``bscrit demo``; its figure is copied to
  ``docs/img/svag-digits-demo.png``.
- ``digits-measure``, ``digits-eval`` (examples/digits/README.md): ``bscrit measure`` with
  k = 2000 batches at the digits checkpoint, in train and in eval mode, and ``bscrit predict``.

Outputs are shown as a terminal shows them, stdout and stderr interleaved, at 120 columns (what
bscrit uses outside a terminal), without the progress bars. ``tests/e2e/test_readme_samples.py``
fails when a README differs from what this script would write.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DIGITS_README = ROOT / "examples" / "digits" / "README.md"
FIXTURES = ROOT / "tests" / "assets" / "measurements"
SAMPLES = ROOT / "docs" / "samples"
MEASURE_JSON = SAMPLES / "measure-digits.json"
SVAG_JSON = SAMPLES / "svag-digits-512.json"
VALUES_JSON = SAMPLES / "values.json"
FIGURE = ROOT / "docs" / "img" / "svag-digits-demo.png"
CKPT = ROOT / "examples" / "digits" / "ckpt.pt"
WIDTH = 120

MARKER = re.compile(r"<!-- sample: (?P<name>[\w-]+) -->(?P<body>.*?)<!-- /sample -->", re.S)
# the final state of a progress bar: "SVAG ━━━━ 2100/2100 8.9 step/s ..." (not a table border)
PROGRESS = re.compile(r"^[^\s┃│┏┡└┗╭╰].*━.*\d+/\d+")

# the commands of the samples (arguments after `bscrit`)
PREDICT = ["predict", "sgd_b128.json", "sgd_b512.json"]
CHECKS = [["check", "sgd_b128.json", "--batch-size", "1024"],
          ["check", "sgd_b128.json", "--batch-size", "4096"]]  # fmt: skip
SCALE = ["scale", "--optimizer", "adamw", "--batch-size", "256", "--target-batch-size", "1024",
         "--lr", "3e-4", "--weight-decay", "0.05", "--steps", "100000",
         "--warmup-steps", "2000"]  # fmt: skip
MEASURE = ["measure", "examples/digits/spec.yaml", "-c", "examples/digits/ckpt.pt",
           "--out", "m.json"]  # fmt: skip
SVAG = ["svag", "examples/digits/spec.yaml", "-c", "examples/digits/ckpt.pt",
        "--target-batch-size", "512", "--l", "1,2,4", "--effective-steps", "300",
        "--eval-every", "30", "--out", "svag-512", "--plot", "svag-512.png"]  # fmt: skip
DIGITS_K = 2000


# ----------------------------------------------------------------------------------------------
# README blocks
# ----------------------------------------------------------------------------------------------


def read_samples(text: str) -> dict[str, str]:
    """What lies between the markers of each sample, by name."""
    found: dict[str, str] = {}
    for m in MARKER.finditer(text):
        if m["name"] in found:
            raise ValueError(f"sample {m['name']!r} is marked twice")
        found[m["name"]] = m["body"]
    return found


def replace_samples(text: str, bodies: dict[str, str]) -> str:
    """``text`` with the body of every sample named in ``bodies`` replaced."""
    missing = set(bodies) - set(read_samples(text))
    if missing:
        raise ValueError(f"no marker for the sample(s) {sorted(missing)}")
    return MARKER.sub(
        lambda m: f"<!-- sample: {m['name']} -->{bodies.get(m['name'], m['body'])}<!-- /sample -->",
        text,
    )


def code_block(transcript: str) -> str:
    """The body of a block sample: a ``text`` code block, on lines of its own."""
    return "\n```text\n" + transcript + "```\n"


def transcript_lines(*parts: str) -> str:
    """The parts as lines, without trailing spaces (invisible on a terminal, and editors strip
    them from a README)."""
    return "".join(line.rstrip() + "\n" for p in parts if p for line in p.splitlines())


# ----------------------------------------------------------------------------------------------
# running commands
# ----------------------------------------------------------------------------------------------


def _env(threads: int | None = None) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": str(WIDTH), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    env.pop("CI", None)
    env.pop("FORCE_COLOR", None)
    if threads is not None:  # the digits network is tiny: one thread is as fast and repeatable
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_bscrit(args: list[str], cwd: Path, threads: int | None = None) -> tuple[int, str]:
    """``bscrit ARGS`` in ``cwd``: exit code and the output a terminal shows (stdout and stderr
    interleaved), without progress bars."""
    r = subprocess.run(
        [sys.executable, "-m", "bscrit", *args],
        cwd=cwd,
        env=_env(threads),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
    )
    out = "".join(line for line in r.stdout.splitlines(True) if not PROGRESS.match(line))
    return r.returncode, out


def command(args: list[str], width: int = 100) -> str:
    """``$ bscrit ARGS``, continued on a new line (``\\``) before an option past ``width``."""
    lines, line = [], "$ bscrit"
    for i, a in enumerate(args):
        word = shlex.quote(a)
        starts_option = a.startswith("-") and i > 0
        if (
            starts_option
            and len(line) + 1 + len(" ".join(shlex.quote(x) for x in _option(args, i))) + 2 > width
        ):
            lines.append(line + " \\")
            line = "     "
        line += " " + word
    return "\n".join([*lines, line])


def _option(args: list[str], i: int) -> list[str]:
    """The option at ``args[i]`` with its value, if it has one."""
    if i + 1 < len(args) and not args[i + 1].startswith("-"):
        return args[i : i + 2]
    return args[i : i + 1]


def _expect(rc: int, out: str, args: list[str], codes: tuple[int, ...] = (0,)) -> str:
    if rc not in codes:
        raise SystemExit(f"`bscrit {shlex.join(args)}` exited {rc}:\n{out}")
    return out


@contextlib.contextmanager
def digits_workdir() -> Iterator[Path]:
    """A temporary folder in which ``examples/`` is the repository's, so that the commands read
    as in the README and write their outputs (m.json, svag-512/) outside the repository."""
    with tempfile.TemporaryDirectory(prefix="bscrit-samples-") as d:
        (Path(d) / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
        yield Path(d)


# ----------------------------------------------------------------------------------------------
# predict / check / scale: the fixtures, run every time (the test does the same)
# ----------------------------------------------------------------------------------------------


def fast_samples() -> dict[str, str]:
    """The README bodies of the predict, check and scale samples, from real runs."""
    rc, out = run_bscrit(PREDICT, FIXTURES)
    predict = transcript_lines(command(PREDICT), _expect(rc, out, PREDICT))
    check = ""
    for args in CHECKS:
        rc, out = run_bscrit(args, FIXTURES)
        check += transcript_lines(
            command(args) + '; echo "exit $?"', _expect(rc, out, args, (0, 1, 5, 6)), f"exit {rc}"
        )
    rc, out = run_bscrit(SCALE, FIXTURES)
    scale = transcript_lines(command(SCALE), _expect(rc, out, SCALE))
    return {"predict": code_block(predict), "check": code_block(check), "scale": code_block(scale)}


# ----------------------------------------------------------------------------------------------
# measure / svag / demo / digits: from the artifacts of a real run
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _recording() -> Iterator[Callable[[], str]]:
    """Route bscrit.report's stdout and stderr consoles into one recording at WIDTH columns."""
    from rich.console import Console

    from bscrit.report import console as report

    buf = io.StringIO()
    console = Console(file=buf, width=WIDTH, highlight=False, soft_wrap=False, no_color=True)
    console_err = Console(file=buf, width=WIDTH, highlight=False, no_color=True)
    old = report.out, report.err
    report.out, report.err = console, console_err
    try:
        yield buf.getvalue
    finally:
        report.out, report.err = old


def measure_transcript(m: Any, args: list[str] = MEASURE) -> str:
    """What ``bscrit measure ... --out m.json`` prints for the measurement ``m`` (as cli.measure
    prints it: tables, warnings, the files written)."""
    from bscrit import report

    with _recording() as text:
        report.show(report.format_measurement(m))
        report.show(report.format_per_tensor(m.per_parameter, 20))
        line = report.format_stopping(m)
        if line is not None:
            report.info(line)
        for w in m.warnings:
            report.warn(w)
        out = args[args.index("--out") + 1]
        report.info(f"wrote {out} and {out.removesuffix('.json')}.params.csv")
        return transcript_lines(command(args), text())


def svag_transcript(r: Any, args: list[str] = SVAG) -> str:
    """What ``bscrit svag ... --out DIR --plot PNG`` prints without a terminal for the result
    ``r`` (as cli.svag prints it: the cost, the tables and verdict, the files written)."""
    from bscrit import report

    out, plot = args[args.index("--out") + 1], args[args.index("--plot") + 1]
    with _recording() as text:
        report.show(
            report.format_svag_cost(
                r.ls, r.effective_steps, r.forward_backward, r.target_batch_size, r.device,
                r.sizing,
            ),
            stderr=True,
        )
        report.info("non-interactive (no terminal or CI set): starting without asking")
        report.show(report.format_svag(r))
        report.info(f"wrote {out}/svag.json, {out}/trajectories.csv, {plot}")
        return transcript_lines(command(args), text())


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def demo_sentence(v: dict[str, Any]) -> str:
    """The README's words on the SVAG figure of ``bscrit demo``, from its verdict (svag.json
    schema 2: the ratios SGD/SDE against [1/C, C]; a schema-1 verdict is read as before)."""
    from bscrit.runs.svag.verdict import RATIO_LABELS

    head = f"`svag.png`, B' = {v['target_batch_size']}; verdict `{v['code']}`"
    if "high_ls" in v:  # schema 1: pairwise agreement
        lo, (a, b) = v["reference_l"], v["high_ls"]
        metrics = list(dict.fromkeys(f.split(":")[0] for f in v["failing"]))
        labels = _join([RATIO_LABELS.get(x, x) for x in metrics]) if metrics else ""
        if v["code"] == "sde_holds":
            return f"{head}: l = {a} and {b} agree with plain SGD (l = {lo})"
        if v["code"] == "sde_fails":
            return f"{head}: l = {a} and {b} agree, plain SGD (l = {lo}) separates in {labels}"
        return f"{head}: l = {a} and {b} still disagree in {labels}"
    c = v["config"]["C"]
    used = [r for r in v["ratios"] if r["decides"]]
    said = _join([f"{RATIO_LABELS.get(r['metric'], r['metric'])} {r['ratio']:.2f}" for r in used])
    if v["code"] == "not_converged":
        return f"{head}: the SVAG runs l = {_join([str(x) for x in v['sde_ls']])} have not settled"
    where = {"sde_holds": "within", "inconclusive": "not all decided within"}.get(
        v["code"], "not all within"
    )
    return f"{head}: SGD/SDE {said}, {where} [1/C, C] = [{1 / c:.2f}, {c:.2f}]"


def _g(x: float, digits: int = 3) -> str:
    return f"{x:#.{digits}g}".rstrip(".")  # 33.0, not 33


def _signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def digits_paragraphs(d: dict[str, Any]) -> dict[str, str]:
    """The figures of examples/digits/README.md from the k = 2000 measurements."""
    t, e = d["train"], d["eval"]
    rho = t["rho"]
    at_eq = "at equilibrium" if abs(rho) <= 0.5 else "not at equilibrium (|ρ| > 0.5)"
    n, lo, hi = t["n"], t["b_star_ci95"][0], t["b_star_ci95"][1]
    where = "above" if lo > n else ("below" if hi is not None and hi < n else "around")
    measure = (
        f"At the epoch-1000 checkpoint (train mode, k = {t['k']} batches of {t['B']}) we get "
        f"G ≈ {_g(t['G'])}, N ≈ {_g(t['N'])}, NSR ≈ {_g(t['nsr'])} (95%: {_g(t['nsr_ci95'][0])}–"
        f"{_g(t['nsr_ci95'][1])}), R ≈ {_g(t['R'])} and ρ ≈ {_signed(rho)}: {at_eq}. The bound "
        f"of Thm 5.6 with C² = 2 then puts the critical batch at B* = C²(B + B·N/G) ≈ "
        f"{t['b_star']:.0f} (95%: {lo:.0f}–{'∞' if hi is None else f'{hi:.0f}'}), {where} the "
        f"whole training set (n = {n})."
    )
    glued = re.sub(r" ([≈=]) ", "\u00a0\\1\u00a0", measure)  # no line break around ≈ and =
    measure = "\n" + textwrap.fill(glued, 99, break_on_hyphens=False).replace("\u00a0", " ") + "\n"
    eval_ = f"eval-mode G ≈ {_g(e['G'], 2)}, NSR ≈ {_g(e['nsr'], 2)}"
    return {"digits-measure": measure, "digits-eval": eval_}


def rendered_samples() -> dict[str, dict[str, str]]:
    """The bodies of the samples that come from a training run, re-rendered from the artifacts
    in docs/samples/ (no torch): ``{file: {name: body}}``."""
    from bscrit.artifacts.measurement import load_measurement
    from bscrit.runs.svag.results import load_svag

    values = json.loads(VALUES_JSON.read_text())
    readme = {
        "measure": code_block(measure_transcript(load_measurement(MEASURE_JSON))),
        "svag": code_block(svag_transcript(load_svag(SVAG_JSON))),
        "demo-svag": demo_sentence(values["demo"]),
    }
    return {"README.md": readme, "examples/digits/README.md": digits_paragraphs(values["digits"])}


def _ensure_checkpoint(retrain: bool) -> None:
    if CKPT.exists() and not retrain:
        return
    print(f"training {CKPT.relative_to(ROOT)} ...", file=sys.stderr)
    subprocess.run([sys.executable, str(ROOT / "examples" / "digits" / "train.py")], cwd=ROOT,
                   env=_env(1), check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def _same(what: str, real: str, rendered: str) -> None:
    if real != rendered:
        import difflib

        diff = "".join(difflib.unified_diff(real.splitlines(True), rendered.splitlines(True),
                                            "run", "re-rendered"))  # fmt: skip
        raise SystemExit(f"{what}: re-rendering the artifact differs from the run:\n{diff}")


def _digits_numbers(workdir: Path, mode: str) -> dict[str, Any]:
    from bscrit.artifacts.measurement import Measurement
    from bscrit.theory.prediction import predict

    args = ["measure", "examples/digits/spec.yaml", "-c", "examples/digits/ckpt.pt",
            "-k", str(DIGITS_K), "--mode", mode, "--json", "--quiet"]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "bscrit", *args], cwd=workdir, env=_env(1),
                       capture_output=True, text=True, check=True)  # fmt: skip
    m = Measurement.from_dict(json.loads(r.stdout))
    b = predict([("m", m)]).base
    eq = m.equilibrium
    return {
        "mode": mode,
        "k": m.num_batches,
        "B": m.batch_size,
        "n": m.dataset_size,
        "param_set": b.param_set,
        "G": b.noise.G.value,
        "N": b.noise.N.value,
        "nsr": b.nsr,
        "nsr_ci95": [b.nsr_ci95[0], b.nsr_ci95[1] if math.isfinite(b.nsr_ci95[1]) else None],
        "R": (m.scale_invariant or m.all).R,
        "rho": eq.residual if eq is not None else None,
        "b_star": b.b_star,
        "b_star_ci95": [
            b.b_star_ci95[0],
            b.b_star_ci95[1] if math.isfinite(b.b_star_ci95[1]) else None,
        ],  # fmt: skip
    }


def _keep(artifact: Path, to: Path, work: Path) -> None:
    """Copy an artifact into docs/samples/ with the paths of this machine made relative."""
    text = json.dumps(json.loads(artifact.read_text()), indent=1, ensure_ascii=False) + "\n"
    for folder in (ROOT, work, work.resolve()):
        text = text.replace(str(folder) + "/", "")
    to.write_text(text)


def run_slow(retrain: bool) -> None:
    """Run measure, svag, the demo and the k = 2000 measurements; keep their artifacts."""
    from bscrit.artifacts.measurement import load_measurement
    from bscrit.runs.svag.results import load_svag

    _ensure_checkpoint(retrain)
    SAMPLES.mkdir(exist_ok=True)
    values: dict[str, Any] = {}
    with digits_workdir() as work:
        print("bscrit measure ...", file=sys.stderr)
        rc, out = run_bscrit(MEASURE, work, threads=1)
        real = transcript_lines(command(MEASURE), _expect(rc, out, MEASURE))
        _keep(work / "m.json", MEASURE_JSON, work)
        _same("measure", real, measure_transcript(load_measurement(MEASURE_JSON)))

        print("bscrit svag ...", file=sys.stderr)
        rc, out = run_bscrit(SVAG, work, threads=1)
        real = transcript_lines(command(SVAG), _expect(rc, out, SVAG, (0, 1, 5)))
        _keep(work / "svag-512" / "svag.json", SVAG_JSON, work)
        _same("svag", real, svag_transcript(load_svag(SVAG_JSON)))

        print(f"bscrit measure -k {DIGITS_K} (train and eval mode) ...", file=sys.stderr)
        values["digits"] = {
            "train": _digits_numbers(work, "train"),
            "eval": _digits_numbers(work, "eval"),
        }

        print("bscrit demo ...", file=sys.stderr)
        rc, out = run_bscrit(["demo", "--workdir", "demo"], work)
        _expect(rc, out, ["demo"])
        demo = load_svag(work / "demo" / "svag")
        values["demo"] = {**demo.verdict.to_dict(), "target_batch_size": demo.target_batch_size}
        shutil.copyfile(work / "demo" / "svag.png", FIGURE)
    VALUES_JSON.write_text(json.dumps(values, indent=1, ensure_ascii=False) + "\n")


def write(bodies: dict[str, dict[str, str]]) -> None:
    for rel, samples in bodies.items():
        path = ROOT / rel
        text = path.read_text()
        new = replace_samples(text, samples)
        if new != text:
            path.write_text(new)
            print(f"updated {rel}: {', '.join(sorted(samples))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true", help="predict / check / scale only")
    mode.add_argument(
        "--render", action="store_true", help="re-render the slow samples from docs/samples/"
    )
    ap.add_argument("--retrain", action="store_true", help="retrain examples/digits/ckpt.pt")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    bodies: dict[str, dict[str, str]] = {"README.md": fast_samples()}
    if not a.fast:
        if not a.render:
            run_slow(a.retrain)
        for rel, samples in rendered_samples().items():
            bodies.setdefault(rel, {}).update(samples)
    write(bodies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
