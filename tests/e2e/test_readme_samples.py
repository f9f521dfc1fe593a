"""The sample outputs in README.md and examples/digits/README.md are what the code prints.

``docs/make_readme_samples.py`` writes them from real runs. Here the predict / check / scale
samples are run again on the fixtures and compared line by line; the measure, svag and demo
samples come from a training run, so they are re-rendered from the artifacts that run left in
``docs/samples/`` (the script checks that this re-rendering is exactly what the run printed) and
their format is checked against the tables the code draws now. On a difference: run
``python docs/make_readme_samples.py`` (``--render``: without training, when only the format
changed; ``--fast``: predict / check / scale only).
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DIGITS_README = ROOT / "examples" / "digits" / "README.md"
FIXTURE = ROOT / "tests" / "assets" / "measurements" / "sgd_b128.json"
HOW = "regenerate with `python docs/make_readme_samples.py` (see its docstring)"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_readme_samples", ROOT / "docs" / "make_readme_samples.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _diff(name: str, readme: str, code: str) -> str:
    lines = difflib.unified_diff(readme.splitlines(True), code.splitlines(True),
                                 f"README: {name}", "what the code prints")  # fmt: skip
    return f"sample {name!r} drifted from the code; {HOW}\n" + "".join(lines)


def _block(gen: ModuleType, name: str) -> list[str]:
    """The lines of a README code-block sample, without the fences."""
    body = gen.read_samples(README.read_text())[name]
    assert body.startswith("\n```text\n") and body.endswith("```\n"), name
    return body[len("\n```text\n") : -len("```\n")].splitlines()


def _cells(line: str) -> list[str]:
    bar = "┃" if line.startswith("┃") else "│"
    return [c.strip() for c in line.strip().strip(bar).split(bar)]


def _table_rows(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith(("│", "┃")):
            cells = _cells(line)
            out.setdefault(cells[0], cells)
    return out


def _render(*renderables: object) -> list[str]:
    import io

    from rich.console import Console

    from bscrit import report

    console = Console(file=io.StringIO(), width=120, record=True, highlight=False)
    report.show(*renderables, console=console)  # type: ignore[arg-type]
    return console.export_text().splitlines()


# ----------------------------------------------------------------------------------------------


def test_every_sample_is_marked_once_and_the_set_up_keeps_two_commands(gen: ModuleType) -> None:
    text = README.read_text()
    assert set(gen.read_samples(text)) == {"measure", "predict", "check", "scale", "svag",
                                           "demo-svag"}  # fmt: skip
    assert set(gen.read_samples(DIGITS_README.read_text())) == {"digits-measure", "digits-eval"}
    assert text.count("<!-- sample:") == text.count("<!-- /sample -->") == 6
    setup = text.split("## Set-up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert len(setup.strip().splitlines()) == 2


def test_predict_check_scale_samples_are_what_the_code_prints(gen: ModuleType) -> None:
    """Runs the commands of the samples on the fixtures (no torch) and compares."""
    readme = gen.read_samples(README.read_text())
    for name, body in gen.fast_samples().items():
        assert readme[name] == body, _diff(name, readme[name], body)


def test_training_samples_are_what_the_code_prints_for_their_artifacts(gen: ModuleType) -> None:
    for rel, samples in gen.rendered_samples().items():
        found = gen.read_samples((ROOT / rel).read_text())
        for name, body in samples.items():
            assert found[name] == body, _diff(f"{rel}: {name}", found[name], body)


def test_measure_sample_has_the_format_of_the_code(gen: ModuleType) -> None:
    from bscrit import report
    from bscrit.artifacts.measurement import load_measurement

    lines = _block(gen, "measure")
    assert lines[0] == "$ bscrit measure examples/digits/spec.yaml -c examples/digits/ckpt.pt " \
                       "--out m.json"  # fmt: skip
    assert re.fullmatch(r"bscrit measure  B=32  n=1500  k=\d+ batches in \d+ groups  "
                        r"device=cpu  mode=train  \d+\.\d\ds", lines[1])  # fmt: skip
    fixture = load_measurement(FIXTURE)
    now = _table_rows(_render(report.format_measurement(fixture),
                              report.format_per_tensor(fixture.per_parameter)))  # fmt: skip
    got = _table_rows(lines)
    for header in ("parameters", "tensor"):  # the column headers the code draws now
        assert got[header] == now[header], (header, got[header], now[header])
    for label in ("all trainable", "scale-invariant", "0.weight", "3.weight"):
        assert len(got[label]) == 7, got[label]
    nsr, lo, hi = got["scale-invariant"][4], *got["scale-invariant"][5].strip("[]").split(", ")
    assert float(lo) < float(nsr) < float(hi)
    assert any(re.fullmatch(r"equilibrium: \(2−ηλ\)λR = \S+ vs η\(G\+N\) = \S+  ρ = [+-]\d\.\d{3}  "
                            r"\(.*\)", line) for line in lines)  # fmt: skip
    assert lines[-1] == "wrote m.json and m.params.csv"


def test_svag_and_demo_samples_have_the_format_of_the_code(gen: ModuleType) -> None:
    from bscrit.runs.svag.verdict import VERDICT_TEXT

    lines = _block(gen, "svag")
    assert lines[0].startswith("$ bscrit svag examples/digits/spec.yaml")
    got = _table_rows(lines)
    assert got["test function"] == ["test function", "l = 1", "l = 2", "l = 4", "SDE",
                                    "SGD/SDE [95%]"]  # fmt: skip
    for label in ("train loss *", "held-out loss *"):
        assert len(got[label]) == 6 and re.search(r"\] [✓✗?]$", got[label][5]), got[label]
    verdicts = [line for line in lines if line.startswith("verdict (")]
    assert len(verdicts) == 1
    code = re.match(r"verdict \((\w+)\): ", verdicts[0])
    assert code and code[1] in VERDICT_TEXT
    assert lines[-1] == "wrote svag-512/svag.json, svag-512/trajectories.csv, svag-512.png"
    demo = gen.read_samples(README.read_text())["demo-svag"]
    assert re.fullmatch(r"`svag\.png`, B' = \d+; verdict `(sde_holds|sde_fails|not_converged)`: "
                        r"(l = \d+ and \d+ |SGD/SDE |the SVAG runs ).*", demo), demo  # fmt: skip
    assert gen.FIGURE.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_markers_are_replaced_and_the_rest_is_kept(gen: ModuleType) -> None:
    text = (
        "a\n<!-- sample: x -->\nold\n<!-- /sample -->\nb (<!-- sample: y -->old<!-- /sample -->)\n"
    )
    new = gen.replace_samples(text, {"x": "\nnew\n"})
    assert new == text.replace("\nold\n", "\nnew\n")
    assert gen.read_samples(new) == {"x": "\nnew\n", "y": "old"}
    with pytest.raises(ValueError, match="no marker"):
        gen.replace_samples(text, {"z": ""})
