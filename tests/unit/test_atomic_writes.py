"""Every writer creates its temporary file exclusively (a random name, ``mkstemp``) in the target
folder and never follows a link: one planted at the old predictable temporary name, or at the
target itself, leaves the file it points to untouched (issue 26). The target being a link to an
*input* is refused before any work by the commands (tests/cli/test_overwrite_cli.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bscrit.artifacts.files import append_line, write_atomic
from bscrit.artifacts.folders import write_folder
from bscrit.cli.outputs import Inputs, check_output_path, distinct_outputs
from bscrit.errors import ArtifactError, UsageError


@pytest.fixture()
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "elsewhere" / "victim.txt"
    v.parent.mkdir()
    v.write_text("keep me")
    return v


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _plant(folder: Path, name: str, victim: Path) -> list[Path]:
    """Links to ``victim`` at the target and at the predictable temporary names a writer could
    have used (``.NAME.tmp``, ``NAME.tmp``, ``NAME~``)."""
    links = [folder / name, folder / f".{name}.tmp", folder / f"{name}.tmp", folder / f"{name}~"]
    for link in links:
        link.symlink_to(victim)
    return links


def _check(folder: Path, name: str, links: list[Path], victim: Path) -> None:
    assert victim.read_text() == "keep me"
    assert not (folder / name).is_symlink() and (folder / name).is_file()
    assert all(p.is_symlink() for p in links[1:])  # the planted names are left alone
    left = [p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and p not in links]
    assert not left, left  # no temporary file left behind


def test_write_atomic_replaces_a_planted_link_and_never_writes_through_it(
    tmp_path: Path, victim: Path
) -> None:
    links = _plant(tmp_path, "m.json", victim)
    write_atomic(tmp_path / "m.json", "{}\n")
    _check(tmp_path, "m.json", links, victim)
    assert (tmp_path / "m.json").read_text() == "{}\n"
    # the umask, as open() would give, not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == _umask_mode()


def test_write_folder_files_replace_planted_links(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "svag"
    out.mkdir()
    links = _plant(out, "svag.json", victim)
    write_folder(out, [("svag.json", "{}\n"), ("trajectories.csv", "a\n")])
    _check(out, "svag.json", links, victim)


def test_save_figure_replaces_a_planted_link(tmp_path: Path, victim: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bscrit.report.figure import save_figure

    links = _plant(tmp_path, "f.png", victim)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, tmp_path / "f.png")
    _check(tmp_path, "f.png", links, victim)
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE((tmp_path / "f.png").stat().st_mode) == _umask_mode()


def test_schedule_yaml_writer_replaces_a_planted_link(tmp_path: Path, victim: Path) -> None:
    import json

    from typer.testing import CliRunner

    from bscrit.cli import app

    assets = Path(__file__).resolve().parents[1] / "assets" / "measurements"
    files = []
    for step, name in ((1000, "sgd_b128.json"), (2000, "sgd_b512.json")):
        d = json.loads((assets / name).read_text())
        d["checkpoints"][0]["step"] = step
        files.append(tmp_path / f"m{step}.json")
        files[-1].write_text(json.dumps(d))
    links = _plant(tmp_path, "s.yaml", victim)
    r = CliRunner().invoke(app, ["schedule", *map(str, files), "--out", str(tmp_path / "s.yaml")])
    assert r.exit_code == 0, r.output
    _check(tmp_path, "s.yaml", links, victim)


def test_series_lines_are_appended_but_never_through_a_planted_link(
    tmp_path: Path, victim: Path
) -> None:
    series = tmp_path / "series.jsonl"
    append_line(series, '{"step": 1}')
    append_line(series, '{"step": 2}')
    assert series.read_text().splitlines() == ['{"step": 1}', '{"step": 2}']
    planted = tmp_path / "other" / "series.jsonl"
    planted.parent.mkdir()
    planted.symlink_to(victim)
    with pytest.raises(ArtifactError, match="cannot write"):
        append_line(planted, '{"step": 3}')
    assert victim.read_text() == "keep me"


def test_check_output_path_probe_is_exclusive_and_leaves_nothing(
    tmp_path: Path, victim: Path
) -> None:
    (tmp_path / ".bscrit-probe.tmp").symlink_to(victim)
    check_output_path(tmp_path / "m.json")
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bscrit-probe.tmp", "elsewhere"]


def test_inputs_find_files_links_hard_links_folders_and_globs(tmp_path: Path) -> None:
    ckpt = tmp_path / "runs" / "epoch1.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    (tmp_path / "runs" / "notes.txt").write_text("not a checkpoint")
    hf = tmp_path / "hf"
    (hf / "sub").mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    (hf / "sub" / "tok.json").write_text("{}")
    (tmp_path / "link.pt").symlink_to(ckpt)
    os.link(ckpt, tmp_path / "hard.pt")
    for given in (
        [ckpt],
        [tmp_path / "runs"],
        [str(tmp_path / "runs" / "*.pt")],
        [tmp_path / "link.pt"],
    ):
        inputs = Inputs.of(("the checkpoint", given))
        assert inputs.find(ckpt) is not None, given
        assert inputs.find(tmp_path / "link.pt") is not None
        assert inputs.find(tmp_path / "hard.pt") is not None
        assert inputs.find(tmp_path / "runs" / "new.json") is None
    folder = Inputs.of(("the checkpoint", [tmp_path / "runs"]))
    assert folder.find(tmp_path / "runs" / "notes.txt") is None  # not taken by -c runs/ either
    hf_inputs = Inputs.of(("the checkpoint", [hf]))
    assert hf_inputs.find(hf / "sub" / "tok.json") is not None  # every file of a checkpoint folder
    with pytest.raises(UsageError, match="hard link"):
        Inputs.of(("the checkpoint", [ckpt])).refuse(tmp_path / "hard.pt", "plot")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert Inputs.of(("the checkpoint", [ckpt])).find(loop) is None  # a link loop: no crash


def test_two_outputs_that_are_one_file_are_refused(tmp_path: Path) -> None:
    distinct_outputs([(tmp_path / "a.json", "out"), (tmp_path / "b.png", "plot")])
    with pytest.raises(UsageError, match="also the file of"):
        distinct_outputs([(tmp_path / "a.json", "out"), (tmp_path / "a.json", "plot")])
