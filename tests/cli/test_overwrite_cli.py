"""Nothing of the user's overwritten: an output path that is one of the command's inputs (links
followed, hard links too) is refused before any work, exit 2, naming both paths; the writers
create their temporary files exclusively and never follow a link planted at the old predictable
temporary name or at the target (issue 26)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bscrit.cli import app

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MEASUREMENTS = ASSETS / "measurements"
runner = CliRunner()


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    return tmp_path


def _digest(*paths: Path) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def _refused(r: object, *names: str) -> str:
    """Exit 2, one message naming ``names``, no traceback; returns the message on one line."""
    text = " ".join(r.output.split())  # type: ignore[attr-defined]
    assert r.exit_code == 2, r.output  # type: ignore[attr-defined]
    assert "Traceback" not in text and "an input of this command" in text, text
    for n in names:
        assert n in text, (n, text)
    return text


# -- measure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "what"),
    [("tiny.pt", "the checkpoint"), ("valid.yaml", "the spec"), ("tiny.py", "the factory file")],
)
def test_measure_out_equal_to_an_input_is_refused(work: Path, target: str, what: str) -> None:
    before = _digest(work / "tiny.pt", work / "valid.yaml", work / "tiny.py")
    r = runner.invoke(app, ["measure", str(work / "valid.yaml"), "-q", "--out", str(work / target)])
    _refused(r, f"--out {work / target}", what, str(work / target))
    assert _digest(work / "tiny.pt", work / "valid.yaml", work / "tiny.py") == before


def test_measure_out_through_a_symlink_or_a_hard_link_to_the_checkpoint_is_refused(
    work: Path,
) -> None:
    ckpt = work / "tiny.pt"
    before = ckpt.read_bytes()
    (work / "soft.json").symlink_to(ckpt)
    os.link(ckpt, work / "hard.json")
    spec = str(work / "valid.yaml")
    r = runner.invoke(
        app, ["measure", spec, "-c", str(ckpt), "-q", "--out", str(work / "soft.json")]
    )
    _refused(r, "soft.json", f"resolves to {ckpt}", "the checkpoint")
    r = runner.invoke(app, ["measure", spec, "-q", "--out", str(work / "hard.json")])
    _refused(r, "hard.json", "hard link", str(ckpt))
    assert ckpt.read_bytes() == before and (work / "soft.json").is_symlink()


def test_measure_csv_beside_the_out_equal_to_an_input_is_refused(work: Path) -> None:
    """``--out m.json`` also writes ``m.params.csv``: that one may not be an input either."""
    shutil.copy(work / "tiny.pt", work / "m.params.csv")
    r = runner.invoke(
        app,
        ["measure", str(work / "valid.yaml"), "-c", str(work / "m.params.csv"), "-q",
         "--out", str(work / "m.json")],
    )  # fmt: skip
    _refused(r, "m.params.csv", "the checkpoint")
    assert not (work / "m.json").exists()


def test_measure_out_inside_a_checkpoint_folder_or_glob_is_refused(work: Path) -> None:
    hf = work / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    r = runner.invoke(
        app,
        [
            "measure",
            str(work / "valid.yaml"),
            "-c",
            str(hf),
            "-q",
            "--out",
            str(hf / "config.json"),
        ],
    )
    _refused(r, "config.json", f"a file of the checkpoint {hf}")
    assert (hf / "config.json").read_text() == "{}"
    runs = work / "runs"
    runs.mkdir()
    for e in (1, 2):
        shutil.copy(work / "tiny.pt", runs / f"epoch{e}.pt")
    for c in (str(runs), str(runs / "epoch*.pt")):
        r = runner.invoke(
            app,
            ["measure", str(work / "valid.yaml"), "-c", c, "-q", "--out", str(runs / "epoch2.pt")],
        )
        _refused(r, "epoch2.pt", "the checkpoint")


def test_measure_out_naming_a_file_the_spec_names_in_its_kwargs_is_refused(work: Path) -> None:
    (work / "data.npz").write_bytes(b"user data")
    text = (work / "valid.yaml").read_text().replace("{n: 64}", "{n: 64, path: data.npz}")
    (work / "kw.yaml").write_text(text)
    r = runner.invoke(
        app, ["measure", str(work / "kw.yaml"), "-q", "--out", str(work / "data.npz")]
    )
    _refused(r, "data.npz", "the file the spec names")
    assert (work / "data.npz").read_bytes() == b"user data"


def test_measure_out_elsewhere_still_works_and_replaces_a_link_without_following_it(
    work: Path,
) -> None:
    """A link at the target that points to a file the command does not read: the result replaces
    the link (atomic rename), the file it pointed to is untouched; a link planted at the old
    predictable temporary name is not followed either."""
    victim = work / "victim.txt"
    victim.write_text("keep me")
    out = work / "m.json"
    out.symlink_to(victim)
    (work / ".m.json.tmp").symlink_to(victim)
    (work / "m.json.tmp").symlink_to(victim)
    r = runner.invoke(
        app, ["measure", str(work / "valid.yaml"), "--batches", "40", "-q", "--per-tensor", "none",
              "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "keep me"
    assert not out.is_symlink() and json.loads(out.read_text())["kind"] == "bscrit.measurement"
    assert (work / ".m.json.tmp").is_symlink() and (work / "m.json.tmp").is_symlink()
    assert not [
        p for p in work.iterdir() if p.name.startswith(".m.json.") and p.name != ".m.json.tmp"
    ]


# -- svag, confirm -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["svag", "confirm"])
def test_run_outputs_equal_to_an_input_are_refused(work: Path, command: str) -> None:
    spec, ckpt = str(work / "valid.yaml"), work / "tiny.pt"
    meas = work / "m.json"
    shutil.copy(MEASUREMENTS / "sgd_b128.json", meas)
    before = _digest(ckpt, work / "valid.yaml", meas)
    base = [command, spec, "-t", "16", "-q"]
    # --plot is the spec; --plot is the measurement B' comes from
    _refused(runner.invoke(app, [*base, "--plot", spec]), f"--plot {spec}", "the spec")
    r = runner.invoke(
        app, [command, spec, "--from-measurement", str(meas), "-q", "--plot", str(meas)]
    )
    _refused(r, "--plot", "the measurement")
    # a file of the --out folder is a link to the checkpoint
    out = work / "out"
    out.mkdir()
    name = "svag.json" if command == "svag" else "confirm.json"
    (out / name).symlink_to(ckpt)
    _refused(runner.invoke(app, [*base, "--out", str(out)]), name, f"resolves to {ckpt}")
    # the --out folder is the checkpoint file
    r = runner.invoke(app, [*base, "-c", str(ckpt), "--out", str(ckpt)])
    _refused(r, f"--out {ckpt}", "the checkpoint")
    assert _digest(ckpt, work / "valid.yaml", meas) == before


@pytest.mark.parametrize("command", ["svag", "confirm"])
def test_plot_naming_a_file_of_out_is_refused(work: Path, command: str) -> None:
    out = work / "out"
    name = "svag.json" if command == "svag" else "confirm.json"
    r = runner.invoke(
        app, [command, str(work / "valid.yaml"), "-t", "16", "-q", "--out", str(out),
              "--plot", str(out / name)],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "is also the file of --out" in " ".join(r.output.split())
    assert not out.exists()


# -- schedule ------------------------------------------------------------------------------------


def test_schedule_outputs_equal_to_an_input_are_refused(tmp_path: Path) -> None:
    m1, m2 = tmp_path / "a.json", tmp_path / "b.json"
    shutil.copy(MEASUREMENTS / "sgd_b128.json", m1)
    shutil.copy(MEASUREMENTS / "sgd_b512.json", m2)
    before = _digest(m1, m2)
    _refused(runner.invoke(app, ["schedule", str(m1), str(m2), "--out", str(m2)]),
             f"--out {m2}", "the measurement")  # fmt: skip
    fig = tmp_path / "fig.png"
    fig.symlink_to(m1)
    _refused(runner.invoke(app, ["schedule", str(m1), str(m2), "--plot", str(fig)]),
             "--plot", f"resolves to {m1}")  # fmt: skip
    series = tmp_path / "series.jsonl"
    series.write_text("")
    _refused(runner.invoke(app, ["schedule", str(series), "--out", str(series)]), "the series file")
    r = runner.invoke(app, ["schedule", str(m1), str(m2), "--out", str(tmp_path / "s.png"),
                            "--plot", str(tmp_path / "s.png")])  # fmt: skip
    assert r.exit_code == 2 and "is also the file of --out" in " ".join(r.output.split())
    assert _digest(m1, m2) == before


# -- demo ----------------------------------------------------------------------------------------


def test_demo_refuses_a_workdir_it_would_take_from_the_user(tmp_path: Path) -> None:
    """Checked before any training: a file as the folder, a link where one of its files goes,
    files of its names that no earlier demo wrote."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    r = runner.invoke(app, ["demo", "--quick", "--workdir", str(afile)])
    assert r.exit_code == 2 and "exists and is not a folder" in r.output, r.output
    victim = tmp_path / "my_spec.yaml"
    victim.write_text("model: mine\n")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "spec.yaml").symlink_to(victim)
    r = runner.invoke(app, ["demo", "--quick", "--workdir", str(linked)])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "spec.yaml is a link" in text and str(victim) in text, r.output
    project = tmp_path / "project"
    project.mkdir()
    (project / "measurement.json").write_text("{}")
    r = runner.invoke(app, ["demo", "--quick", "--workdir", str(project)])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "measurement.json, not written by bscrit demo" in text, r.output
    assert victim.read_text() == "model: mine\n"
    assert (project / "measurement.json").read_text() == "{}"
    assert "Traceback" not in text


def test_demo_accepts_its_own_earlier_workdir(tmp_path: Path) -> None:
    from bscrit.cli.demo import check_workdir
    from bscrit.workflows.demo import MARKER, DemoConfig

    d = tmp_path / "demo"
    d.mkdir()
    (d / "measurement.json").write_text("{}")
    (d / MARKER).write_text("")
    check_workdir(d, DemoConfig.quick())  # no error
    check_workdir(tmp_path / "new", DemoConfig.quick())
