"""Report helpers: the ``format_*`` functions build rich renderables from the measurement
fixtures and print nothing; ``show`` prints them (no torch).

Every expected figure is computed from the loaded object (mostly with ``report.fmt``), not
copied from the output; table rows are compared cell by cell.
"""

from __future__ import annotations

import dataclasses
import io
import math
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bscrit import report
from bscrit.artifacts.measurement import Measurement, load_measurement
from bscrit.optim.registry import OptimizerInfo
from bscrit.optim.state import ParamGroupInfo
from bscrit.report.format import fmt, fmt_ci, plain_line
from bscrit.runs.svag.results import SvagResult, SvagRun, svag_verdict
from bscrit.runs.svag.verdict import RATIO_LABELS
from bscrit.theory.prediction import check, predict_files
from bscrit.theory.recommendation import batch_range
from bscrit.theory.scaled import scale_hyperparameters

MEAS = Path(__file__).parents[1] / "assets" / "measurements"
FIXTURES = ("sgd_b128", "sgd_b512", "sgd_small_nsr", "adam_noisy")
MEASUREMENT_HEADERS = [
    "parameters",
    "count",
    "G ± s.e.",
    "N ± s.e.",
    "NSR",
    "NSR 95% CI",
    "R = ‖x‖²",
]


def path(name: str) -> str:
    return str(MEAS / f"{name}.json")


def render(*renderables: object, width: int = 120) -> str:
    """What ``show`` prints, as plain text, on a console of the given width."""
    console = Console(file=io.StringIO(), width=width, record=True, highlight=False)
    report.show(*renderables, console=console)  # type: ignore[arg-type]
    return console.export_text()


def rows(text: str) -> dict[str, list[str]]:
    """The table rows of ``text`` by their first cell (header rows too), cells stripped."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        for bar in ("│", "┃"):
            if line.startswith(bar):
                cells = [c.strip() for c in line.strip(bar).split(bar)]
                out.setdefault(cells[0], cells)
    return out


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def _stats_cells(label: str, s, frac: float) -> list[str]:  # type: ignore[no-untyped-def]
    lo, hi = s.nsr_ci95
    return [
        label,
        f"{s.num_params:,} ({frac:.0%})",
        f"{fmt(s.G)} ± {fmt(s.G_se)}",
        f"{fmt(s.N)} ± {fmt(s.N_se)}",
        fmt(s.nsr),
        f"[{fmt(lo)}, {fmt(hi) if math.isfinite(hi) else '∞'}]",
        fmt(s.R),
    ]


# ----------------------------------------------------------------------------------------------
# messages, imports, show
# ----------------------------------------------------------------------------------------------


def test_report_messages_are_not_parsed_as_markup(capsys: pytest.CaptureFixture[str]) -> None:
    report.error("gloo [x.cc:12] [/closing] failed")
    report.warn("[bold]literal[/]")
    err = capsys.readouterr().err
    assert "[x.cc:12] [/closing]" in err and "[bold]literal[/]" in err


def test_report_imports_no_torch() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, bscrit.report\n"
            "bad = sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules)\n"
            "assert not bad, bad\n",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


def test_format_functions_print_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    m = load_measurement(path("sgd_b512"))
    p = predict_files([path("sgd_b128"), path("sgd_b512")])
    made = [
        report.format_measurement(m),
        report.format_per_tensor(m.per_parameter),
        report.format_prediction(p),
        report.format_check(check(p, 4096)),
        report.format_scaled(p.scaled),  # type: ignore[arg-type]
        report.format_svag(_svag_result()),
        report.format_svag_cost([1, 2], 10, {1: 30, 2: 50}, 64, "cpu"),
    ]
    assert capsys.readouterr() == ("", "")
    assert all(isinstance(x, (Group, Table, Text)) for x in made)


def test_show_prints_stdout_then_warnings_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from bscrit.report import console

    old = console.out
    console.out = Console(file=io.StringIO(), width=120, highlight=False)
    try:
        assert report.out is console.out  # the package reads the console module's
        r = report.Report(Text("body [not markup]"), warnings=["careful [x]"])
        report.show(r, "plain [bold]str[/]")
        printed = report.out.file.getvalue()  # type: ignore[attr-defined]
    finally:
        console.out = old
    assert printed == "body [not markup]\nplain [bold]str[/]\n"
    assert capsys.readouterr().err == "warning: careful [x]\n"


def test_show_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    report.show(report.format_svag_cost([1, 2], 10, {1: 30, 2: 50}, 64, "cpu"), stderr=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "l = 2: 20 steps, 50 forward-backward passes" in captured.err


def test_plain_lines_are_neither_wrapped_nor_cropped() -> None:
    long = "x" * 150 + " end"
    r = report.Report(plain_line(long), Text("y " * 60))
    text = render(r, width=80)
    assert long in lines(text)  # the plain line in one piece
    assert max(len(line) for line in lines(text)[1:]) <= 80  # other text wraps at the width


# ----------------------------------------------------------------------------------------------
# measure
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_measurement_table(name: str) -> None:
    m = load_measurement(path(name))
    text = render(report.format_measurement(m))
    first = lines(text)[0]
    for part in (
        f"B={m.batch_size}",
        f"n={m.dataset_size}",
        f"k={m.num_batches} batches in {m.groups} groups",
        f"device={m.device}",
        f"mode={m.mode}",
        f"{m.elapsed_s:.2f}s",
    ):
        assert part in first
    assert first.startswith("bscrit measure")
    assert f"NSR = N/G (jackknife over {m.groups} groups)" in text
    got = rows(text)
    assert got["parameters"] == MEASUREMENT_HEADERS
    assert got["all trainable"] == _stats_cells("all trainable", m.all, 1.0)
    if m.scale_invariant is not None:
        expected = _stats_cells("scale-invariant", m.scale_invariant, m.scale_invariant_fraction)
        assert got["scale-invariant"] == expected
    else:
        assert got["scale-invariant"] == ["scale-invariant", "none"] + ["—"] * 5
    if m.equilibrium is not None:
        e = m.equilibrium
        assert (
            f"equilibrium: (2−ηλ)λR = {fmt(e.lhs)} vs η(G+N) = {fmt(e.rhs)}  "
            f"ρ = {e.residual:+.3f}  ({m.equilibrium_note})"
        ) in lines(text)
    else:
        assert f"equilibrium: not checked ({m.equilibrium_note})" in lines(text)
    assert "Per checkpoint" not in text  # one checkpoint: no per-checkpoint table


def test_measurement_nsr_and_interval_of_the_fixture() -> None:
    """sgd_b128: NSR = N/G of the scale-invariant set, shown with its jackknife interval."""
    m = load_measurement(path("sgd_b128"))
    si = m.scale_invariant
    assert si is not None
    cells = rows(render(report.format_measurement(m)))["scale-invariant"]
    assert float(cells[4]) == pytest.approx(si.N / si.G, rel=1e-3)
    lo, hi = (float(x) for x in cells[5].strip("[]").split(","))
    assert lo < float(cells[4]) < hi
    assert (lo, hi) == (float(fmt(si.nsr_ci95[0])), float(fmt(si.nsr_ci95[1])))


def test_measurement_without_scale_invariant_set_or_equilibrium_with_amp() -> None:
    m = load_measurement(path("sgd_b128"))
    m = dataclasses.replace(m, scale_invariant=None, equilibrium=None, amp="bf16")
    text = render(report.format_measurement(m))
    assert rows(text)["scale-invariant"] == ["scale-invariant", "none"] + ["—"] * 5
    assert "amp=bf16" in lines(text)[0]
    assert f"equilibrium: not checked ({m.equilibrium_note})" in lines(text)


def test_measurement_per_checkpoint_table() -> None:
    m = load_measurement(path("sgd_b128"))
    c = m.checkpoints[0]
    other = dataclasses.replace(c, path="late.pt", equilibrium=None, scale_invariant=None)
    text = render(report.format_measurement(dataclasses.replace(m, checkpoints=(c, other))))
    assert "Per checkpoint (pooled above: mean of G and N)" in text
    got = rows(text)
    assert got["checkpoint"] == [
        "checkpoint",
        "step",
        "G (all)",
        "N (all)",
        "NSR (all)",
        "batch-noise 95% CI",
        "NSR (scale-inv.)",
        "ρ",
    ]
    assert c.scale_invariant is not None and c.equilibrium is not None
    assert got[c.path] == [
        c.path,
        "—",  # no step saved
        fmt(c.all.G),
        fmt(c.all.N),
        fmt(c.all.nsr),
        fmt_ci(c.all.nsr_ci95),
        fmt(c.scale_invariant.nsr),
        f"{c.equilibrium.residual:+.3f}",
    ]
    assert got["late.pt"][-2:] == ["—", "—"]


def _every_figure(m: Measurement) -> list[str]:
    cells = _stats_cells("all trainable", m.all, 1.0)[1:]
    if m.scale_invariant is not None:
        cells += _stats_cells("scale-invariant", m.scale_invariant, m.scale_invariant_fraction)[1:]
    return cells


@pytest.mark.parametrize("name", FIXTURES)
def test_measurement_table_at_120_columns_shows_every_figure(name: str) -> None:
    m = load_measurement(path(name))
    text = render(report.format_measurement(m), width=120)
    assert "…" not in text
    shown = [c for r in rows(text).values() for c in r]
    assert all(f in shown for f in _every_figure(m)), _every_figure(m)


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("name", FIXTURES)
def test_measurement_table_at_80_columns_shows_every_figure(name: str, width: int) -> None:
    """Too wide for the console, the table is laid out with one row per figure instead of being
    cut with '…'; at 120 columns it keeps one row per parameter set."""
    m = load_measurement(path(name))
    text = render(report.format_measurement(m), width=width)
    assert all(len(line) <= width for line in lines(text))
    assert "…" not in text
    shown = [c for r in rows(text).values() for c in r]
    missing = [f for f in _every_figure(m) if f not in shown]
    assert not missing, f"cut at {width} columns: {missing}\n{text}"
    got = rows(text)
    if width == 120:
        assert got["parameters"] == MEASUREMENT_HEADERS
    else:  # transposed: a row per figure, a column per parameter set
        assert got["parameters"] == ["parameters", "all trainable", "scale-invariant"]
        assert [got[h][0] for h in MEASUREMENT_HEADERS[1:]] == MEASUREMENT_HEADERS[1:]
        si = m.scale_invariant
        assert got["NSR"] == ["NSR", fmt(m.all.nsr), fmt(si.nsr) if si else "—"]


def _long_rows(m: Measurement) -> list:  # type: ignore[type-arg]
    r = m.per_parameter[0]
    long = dataclasses.replace(
        r, name="layer4.1.downsample.0.weight", shape=(512, 256, 1, 1), G=1.234e-05,
        N=-2.345e-05, R=12345.6, invariance_ratio=3.3e-07,
    )  # fmt: skip
    return [*m.per_parameter, long]


@pytest.mark.parametrize("width", [80, 120])
def test_per_tensor_and_per_checkpoint_tables_keep_every_figure(width: int) -> None:
    m = load_measurement(path("sgd_b128"))
    c = m.checkpoints[0]
    far = dataclasses.replace(c, path="runs/a/rather/long/folder/name/epoch_0250.pt")
    text = render(
        report.format_measurement(dataclasses.replace(m, checkpoints=(c, far))),
        report.format_per_tensor(_long_rows(m)),
        width=width,
    )
    assert all(len(line) <= width for line in lines(text))
    assert "…" not in text
    cells = [cell for line in lines(text) for cell in line.replace("┃", "│").split("│")]
    shown = {cell.strip() for cell in cells}
    for r in _long_rows(m):
        for f in (fmt(r.G), fmt(r.N), fmt(r.R), fmt(r.invariance_ratio, 2)):
            assert f in shown, (f, text)
    for f in (fmt(c.all.G), fmt(c.all.N), fmt(c.all.nsr), f"{c.equilibrium.residual:+.3f}"):
        assert f in shown, (f, text)
    # a folded name or path reads whole again down its first column
    flat = "".join(line.split("│")[1].strip() for line in lines(text) if line.startswith("│"))
    assert "layer4.1.downsample.0.weight" in flat
    assert "512×256×1×1" in flat or "512×256×1×1" in shown  # under the name, or its own column
    assert "runs/a/rather/long/folder/name/epoch_0250.pt" in flat


def test_per_tensor_table_sorted_and_limited() -> None:
    m = load_measurement(path("sgd_b128"))
    ordered = sorted(m.per_parameter, key=lambda r: r.N, reverse=True)
    assert len(ordered) == 2 and ordered[0].N > ordered[1].N
    text = render(report.format_per_tensor(m.per_parameter))
    got = rows(text)
    assert got["tensor"] == ["tensor", "shape", "G", "N", "R", "scale-inv.", "|⟨W,g⟩|/‖W‖‖g‖"]
    for r in ordered:
        assert got[r.name] == [
            r.name,
            "×".join(map(str, r.shape)),
            fmt(r.G),
            fmt(r.N),
            fmt(r.R),
            "yes" if r.scale_invariant else "no",
            fmt(r.invariance_ratio, 2),
        ]
    names = [line.split("│")[1].strip() for line in lines(text) if line.startswith("│")]
    assert names == [r.name for r in ordered]
    assert "Per tensor (largest N first)" in text

    one = render(report.format_per_tensor(m.per_parameter, 1))
    assert "Per tensor (largest N first; 1 of 2, --per-tensor all for every row)" in one
    assert ordered[0].name in rows(one) and ordered[1].name not in rows(one)
    assert ordered[1].name in rows(render(report.format_per_tensor(m.per_parameter, None)))


# ----------------------------------------------------------------------------------------------
# predict / check / scale
# ----------------------------------------------------------------------------------------------


def test_prediction_two_baselines() -> None:
    p = predict_files([path("sgd_b128"), path("sgd_b512")], 2.0)
    rep = report.format_prediction(p)
    text = render(rep)
    got_lines = lines(text)
    assert got_lines[0].startswith(f"bscrit predict: C² = {p.c2:g} ([LMA21] Thms 5.2, 5.5, 5.6")
    tables = text.split("┃ quantity")[1:]
    assert len(tables) == len(p.measurements) == 2
    for b, part in zip(p.measurements, tables):
        assert b.optimizer is not None
        head = f"{b.source}: B = {b.batch_size}, n = {b.dataset_size}, sgd, lr {b.optimizer.lr:g}"
        assert head in got_lines
        got = rows("┃ quantity" + part)
        ns = b.noise
        assert got["NSR = N^B/G"] == ["NSR = N^B/G", fmt(ns.nsr), fmt_ci(ns.nsr_ci95)]
        assert got["G = ‖∇L‖²"] == ["G = ‖∇L‖²", fmt(ns.G.value), fmt_ci(ns.G.ci95)]
        assert got["N^B = Tr Σ^B"] == ["N^B = Tr Σ^B", fmt(ns.N.value), fmt_ci(ns.N.ci95)]
        lo, hi = b.b_star_ci95
        assert got["B* = C²(B + B·NSR)"] == [
            "B* = C²(B + B·NSR)",
            f"{b.b_star:.0f}",
            f"[{lo:.0f}, {hi:.0f}]",
        ]
        # B* is the theorem's C²(B + B·NSR) of the measured NSR
        assert float(got["B* = C²(B + B·NSR)"][1]) == pytest.approx(
            p.c2 * (b.batch_size + b.batch_size * ns.nsr), abs=0.5
        )
        assert got["parameter set"][1] == "scale-invariant"
        assert got["equilibrium residual ρ"][1] == f"{b.equilibrium_residual:+.3f}"
        nlo, nhi = ns.nsr_ci95
        assert (
            f"  Thm 5.2 (ii): NSR {fmt(ns.nsr)} [95%: {fmt(nlo)}, {fmt(nhi)}]; the whole "
            f"interval ≥ 1/(C² − 1) = {fmt(b.sde_nsr_threshold)}: the theorem says nothing here."
        ) in got_lines
        assert f"  Both a heuristic reading here: {b.heuristic}." in got_lines  # momentum 0.9
        assert f"  Parameters: {b.param_set_reason}." in got_lines
    r = p.recommended
    got = rows(text.split("Recommendation")[1])
    assert got["B* across baselines (min, max)"][1] == batch_range(*p.range)
    assert got["recommended range"][1] == batch_range(r.min, r.max)
    assert got["largest power of two in it"][1] == str(r.max_pow2)
    assert got["largest multiple of 8 in it"][1] == str(r.max_mult8)
    assert r.min == p.base.batch_size and r.max == pytest.approx(p.base.b_star_ci95[0])
    assert f"  {r.note}." in got_lines
    # the base run's optimizer is scaled to the top of the range: κ and lr old -> new
    s = p.scaled
    assert s is not None
    assert (
        f"{s.reference}: sgd, B = {p.base.batch_size} -> B' = {s.target_batch_size} "
        f"(κ = {s.kappa:.4g})"
    ) in got_lines
    assert s.kappa == pytest.approx(s.target_batch_size / p.base.batch_size)
    assert rows(text)["lr"][1] == f"{s.old['lr']:g} -> {s.old['lr'] * s.kappa:.6g}"
    # warnings travel with the report, on stderr only
    expected = [f"{b.source}: {w}" for b in p.measurements for w in b.warnings] + list(p.warnings)
    assert list(rep.warnings) == expected + list(s.warnings)
    assert any("equilibrium residual" in w for w in rep.warnings)
    assert "warning" not in text


def test_prediction_one_baseline_has_no_range_row() -> None:
    p = predict_files([path("sgd_b128")])
    got = rows(render(report.format_prediction(p)))
    assert "B* across baselines (min, max)" not in got
    assert "recommended range" in got


def test_prediction_certified_failure_and_thm55() -> None:
    p = predict_files([path("sgd_small_nsr")])
    (b,) = p.measurements
    # one checkpoint's interval: the readings are provisional, never "certified"
    assert (b.sde_thm52, b.thm55) == ("provisional", "provisional")
    assert not b.sde_certified_invalid and b.thm55_base_batch_below is not None
    got_lines = lines(render(report.format_prediction(p)))
    ns = b.noise
    lo, hi = ns.nsr_ci95
    assert (
        f"  Thm 5.2 (ii): NSR {fmt(ns.nsr)} [95%: {fmt(lo)}, {fmt(hi)}]; the whole interval < "
        f"1/(C² − 1) = {fmt(b.sde_nsr_threshold)}: the equilibria of SGD and its SDE are not "
        "C-close here, provisional (the 95% interval covers the measured checkpoint(s) only; "
        "the theorem speaks of the equilibrium)."
    ) in got_lines
    assert (
        f"  Thm 5.5: (C² − 1)·NSR < 1 over the whole interval: B = {b.batch_size} is past the "
        f"critical batch of every base batch below {b.thm55_base_batch_below:.0f} (κ > "
        f"{fmt(b.thm55_kappa_min)}, from the upper end), provisional (the 95% interval covers "
        "the measured checkpoint(s) only; the theorem speaks of the equilibrium)."
    ) in got_lines
    assert not any("certified" in line for line in got_lines)


def test_prediction_unbounded_b_star() -> None:
    """adam_noisy: Ĝ's interval includes 0, so B* has only a lower bound."""
    p = predict_files([path("adam_wide")])  # adam_noisy with betas the rule can scale far
    (b,) = p.measurements
    assert not b.b_star_bounded
    rep = report.format_prediction(p)
    got = rows(render(rep))
    assert got["B* = C²(B + B·NSR)"][1:] == [f"> {b.b_star_ci95[0]:.0f}", "no upper bound"]
    assert got["NSR = N^B/G"][2] == f"[{fmt(b.noise.nsr_ci95[0])}, ∞]"
    assert got["parameter set"][1] == "all"
    assert "(η/4)·G  [SDBD21 eq. 22]" not in got  # adam: no implicit-regularisation rows
    # the range is capped at n = 60000; Adam's hyperparameters are scaled there, and the
    # prediction's own warnings follow the measurement's
    assert p.recommended.limited_by is None and p.scaled is not None  # no limit detected
    assert list(rep.warnings) == [f"{b.source}: {w}" for w in b.warnings] + list(p.warnings) + list(
        p.scaled.warnings
    )


@pytest.mark.parametrize("target", [512, 2000, 4096])
@pytest.mark.parametrize("strict", [False, True])
def test_check_line(target: int, strict: bool) -> None:
    p = predict_files([path("sgd_b128"), path("sgd_b512")])
    r = check(p, target, strict)
    rep = report.format_check(r)
    # one checkpoint each: in range is provisional (exit 6); the warn zone undecided (exit 5)
    tag = {"ok": "PROVISIONAL", "warn": "UNDECIDED", "fail": "FAIL"}[r.verdict]
    assert lines(render(rep, width=80)) == [f"{tag}: {r.reason}"]  # one line, never wrapped
    assert int(r.exit_code) == {"ok": 6, "warn": 5, "fail": 1}[r.verdict]
    assert list(rep.warnings) == [f"{b.source}: {w}" for b in p.measurements for w in b.warnings]
    lo, est = p.base.b_star_ci95[0], p.base.b_star
    expected = "ok" if target <= lo else ("fail" if strict or target > est else "warn")
    assert r.verdict == expected


def test_scaled_sgd_linear_rule() -> None:
    opt = OptimizerInfo("sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    s = scale_hyperparameters(opt, 128, 1024, epochs=3.0, steps=1000, warmup_steps=100)
    text = render(report.format_scaled(s))
    assert lines(text)[0] == (f"{s.reference}: sgd, B = 128 -> B' = 1024 (κ = {1024 / 128:.4g})")
    got = rows(text)
    assert got["hyperparameter"] == ["hyperparameter", "old -> new", "how"]
    assert got["lr"][:2] == ["lr", f"{0.1:g} -> {0.1 * 1024 / 128:g}"]  # η' = κη
    assert "LMA21" in got["lr"][2]
    assert got["momentum"][1] == "0.9 -> 0.9" and got["weight_decay"][1] == "0.0005 -> 0.0005"
    assert got["steps"][1] == f"1000 -> {s.steps[1]}" and s.steps[1] == 1000 // 8
    assert got["warmup_steps"][1] == f"100 -> {s.warmup_steps[1]}"
    assert got["epochs"][1:] == ["3 -> 3", "unchanged"]
    assert lines(render(report.format_scaled(s, title="my title")))[0] == "my title"


def test_scaled_adam_square_root_rule_keeps_six_digits() -> None:
    opt = OptimizerInfo("adam", lr=1e-3, betas=(0.9, 0.9999), eps=1e-8)
    s = scale_hyperparameters(opt, 32, 64)
    got = rows(render(report.format_scaled(s)))
    assert got["lr"][1] == f"0.001 -> {1e-3 * math.sqrt(2):.6g}"  # η' = √κ η
    assert got["beta2"][1] == "0.9999 -> 0.9998"  # 1 − κ(1 − β), not rounded to 4 digits
    assert "steps" not in got and "epochs" not in got


def test_scaled_per_group_rows_and_measurement_optimizer_lines() -> None:
    base = OptimizerInfo("adamw", lr=1e-3, weight_decay=0.05, lr_current=4e-4, groups=(
        ParamGroupInfo(0, 3, {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                              "weight_decay": 0.0}, lr_current=4e-4, params=67),
        ParamGroupInfo(1, 3, {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                              "weight_decay": 0.05}, lr_current=4e-4, params=1376),
    ))  # fmt: skip
    got = rows(render(report.format_scaled(scale_hyperparameters(base, 32, 128))))
    assert got["group 0"][1] == "lr 0.001 -> 0.002, weight_decay 0 -> 0"
    assert got["group 1"][1] == "lr 0.001 -> 0.002, weight_decay 0.05 -> 0.1"
    m = dataclasses.replace(load_measurement(MEAS / "adam_noisy.json"), optimizer=base)
    text = lines(render(report.format_measurement(m)))
    assert text[1] == "adamw: lr 0.001 (the schedule's base; 0.0004 at the checkpoint)"
    assert text[2] == ("adamw: weight decay 0.05 on group(s) 1 (3 tensors, 1,376 params); none on "
                       "group(s) 0 (3 tensors, 67 params)")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# svag
# ----------------------------------------------------------------------------------------------

STEPS = tuple(float(e) for e in range(0, 101, 5))


def _run(l: int, loss_end: float, norm_end: float = 30.0) -> SvagRun:  # noqa: E741
    """From a common start to the end values in 40 steps, then flat with a small alternation."""

    def path_(start: float, end: float) -> tuple[float, ...]:
        return tuple(start + (end - start) * min(1.0, e / 40) + 0.002 * end * (-1) ** i
                     for i, e in enumerate(STEPS))  # fmt: skip

    return SvagRun(
        l=l,
        optimizer=OptimizerInfo("sgd", lr=0.8 / l),
        steps=100 * l,
        effective_steps=STEPS,
        values={
            "train_loss": path_(0.5, loss_end),
            "eval_acc": path_(0.9, 0.98),
            "norm_sq": path_(40.0, norm_end),
        },
        elapsed_s=1.25 * l,
    )


def _svag_result(loss_end_1: float = 0.9, runs: list[SvagRun] | None = None) -> SvagResult:
    runs = runs or [_run(1, loss_end_1), _run(2, 0.3), _run(4, 0.3)]
    target = OptimizerInfo("sgd", lr=3.2, weight_decay=1 / 256)  # τ = 1/(2ηλ) = 40 steps
    verdict, tau = svag_verdict(runs, target, 1024)
    return SvagResult(
        batch_size=32,
        target_batch_size=1024,
        kappa=32.0,
        rule="linear",
        rule_reference="linear scaling rule [LMA21 Def. 2.1]",
        base_optimizer=OptimizerInfo("sgd", lr=0.1),
        target_optimizer=target,
        ls=(1, 2, 4),
        effective_steps=100,
        eval_every=5,
        eval_batches=8,
        eval_examples=None,
        seed=0,
        device="cpu",
        forward_backward={1: 288, 2: 488, 4: 1888},
        runs=tuple(runs),
        verdict=verdict,
        relaxation_steps=tau,
        notes=("a note [x]",),
        warnings=("w [bold]",),
    )


def test_svag_report() -> None:
    r = _svag_result()
    rep = report.format_svag(r)
    text = render(rep)
    got = rows(text)
    assert "docs/theory.md §6" in text and "THEORY" not in text
    assert got["l"] == [
        "l",
        "steps",
        "sgd hyperparameters (SVAG rule, docs/theory.md §6)",
        "fwd-bwd passes",
        "time",
    ]
    for run in r.runs:
        assert got[str(run.l)] == [
            str(run.l),
            str(run.steps),
            f"lr {run.optimizer.lr:g}",
            f"{r.forward_backward[run.l]:,}",
            f"{run.elapsed_s:.1f} s",
        ]
    assert got["test function"] == [
        "test function", "l = 1", "l = 2", "l = 4", "SDE", "SGD/SDE [95%]",
    ]  # fmt: skip
    v = r.verdict
    loss = got[RATIO_LABELS["train_loss"] + " *"]
    for i, lv in enumerate((1, 2, 4)):
        s = v.stat("train_loss", lv)
        assert s is not None and loss[1 + i].startswith(f"{fmt(s.mean)} ±")
    ratio = v.ratio("train_loss")
    assert ratio is not None and ratio.ratio == pytest.approx(3.0, rel=0.01)
    assert loss[5] == f"{fmt(ratio.ratio, 3)} [{fmt(ratio.lo, 3)}, {fmt(ratio.hi, 3)}] ✗"
    assert got[RATIO_LABELS["eval_acc"]][5].endswith("]")  # shown, does not decide: no mark
    assert v.code == "sde_fails" and v.failing == ("train_loss",)
    got_lines = lines(text)
    assert f"verdict ({v.code}): {v.text}" in got_lines
    assert "  note: a note [x]" in got_lines
    assert got_lines[0].startswith(
        f"SVAG (Stochastic Variance Amplified Gradient, [LMA21] §4) at B' = 1024 from B = 32 "
        f"(κ = 32; {r.rule_reference}), 100 effective steps"
    )
    assert rep.warnings == ("w [bold]",)


def test_svag_verdict_holds_is_green() -> None:
    r = _svag_result(loss_end_1=0.3)
    assert r.verdict.code == "sde_holds", r.verdict.text
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system="standard")
    report.show(report.format_svag(r), console=console)
    assert "\x1b[1;32mverdict (sde_holds):\x1b[0m" in console.file.getvalue()  # type: ignore[attr-defined]


def test_svag_cost_lines() -> None:
    passes = {1: 288, 2: 488, 4: 1888}
    text = render(report.format_svag_cost([1, 2, 4], 100, passes, 1024, "cuda:0"))
    total = sum(passes.values())
    assert lines(text) == [
        "SVAG at B' = 1024 on cuda:0: 100 effective steps for each l in 1, 2, 4.",
        "Cost: SVAG with l takes 2·l forward-backward passes per effective step (+ evaluation):",
        "  l = 1: 100 steps, 288 forward-backward passes of batch 1024",
        "  l = 2: 200 steps, 488 forward-backward passes of batch 1024",
        "  l = 4: 400 steps, 1,888 forward-backward passes of batch 1024",
        f"  total: {total:,} forward-backward passes, i.e. about {total // 2:,} training steps at "
        "batch size 1024",
    ]


def test_plot_svag_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "sub" / "svag.png"
    from bscrit.report.svag_plot import plot_svag

    plot_svag(_svag_result(), target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in target.parent.iterdir()] == ["svag.png"]  # no temporary left


@pytest.mark.parametrize(
    ("low", "high", "shown"),
    [(32, 992.7, "[32, 992.7]"), (128, 1866.75, "[128, 1866]"), (8, 99.996, "[8, 99.99]"),
     (16, math.inf, "[16, ∞)"), (0.3, 0.7, "[0.3, 0.7]"), (12.01, 64.0, "[12.01, 64]")],
)  # fmt: skip
def test_a_batch_range_is_one_format_rounded_inward(low, high, shown):
    assert batch_range(low, high) == shown


def test_predict_and_check_print_the_recommended_range_alike() -> None:
    p = predict_files([path("sgd_b128")])
    r = p.recommended
    shown = batch_range(r.min, r.max)
    assert shown == "[128, 1866]"  # the top, 1866.75, is not rounded up to a B' that fails
    got = rows(render(report.format_prediction(p)))
    assert got["recommended range"][1] == shown
    c = check(p, 1024)
    assert f"within the recommended range {shown} (" in c.reason
    assert check(p, 1867).verdict != "ok"  # above the range printed and the range itself
