"""Output that survives any terminal encoding (issue 26): under ``PYTHONIOENCODING=ascii`` or
``latin-1`` every command prints (symbols in ASCII: ``≈`` → ``~``, ``κ`` → ``kappa``), with the
exit code it has on a UTF-8 stream and no traceback; ``--json`` is the same JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bscrit.report.encoding import to_ascii

M = Path(__file__).resolve().parents[1] / "assets" / "measurements"
B128, B512, ADAM = str(M / "sgd_b128.json"), str(M / "sgd_b512.json"), str(M / "adam_noisy.json")

#: (arguments, the exit code on any stream)
COMMANDS = [
    (["predict", B128, B512], 0),
    (["predict", ADAM], 0),
    (["check", B128, "-b", "99999"], 1),
    (["scale", "-t", "512", "--optimizer", "adam", "-b", "64", "--lr", "0.001"], 0),
    (["--help"], 0),
    (["scale", "--help"], 0),
    (["measure", "--help"], 0),
    (["predict", "missing.json"], 2),  # an error message
    (["scale", "-t", "0"], 2),  # typer's own usage error
]


def _run(args: list[str], encoding: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": encoding, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "bscrit", *args], capture_output=True, env=env, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
@pytest.mark.parametrize(("args", "code"), COMMANDS, ids=[" ".join(a)[:40] for a, _ in COMMANDS])
def test_commands_print_on_a_non_utf8_stream(encoding: str, args: list[str], code: int) -> None:
    r = _run(args, encoding)
    out, err = r.stdout.decode(encoding), r.stderr.decode(encoding)
    assert r.returncode == code, err
    assert "Traceback" not in err and "UnicodeEncodeError" not in err, err
    assert out or err
    if encoding == "ascii":
        assert (out + err).isascii()


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_json_is_the_same_on_any_stream(encoding: str) -> None:
    utf8, other = (
        _run(["predict", B128, "--json"], "utf-8"),
        _run(["predict", B128, "--json"], encoding),
    )
    assert other.returncode == utf8.returncode == 0
    assert json.loads(other.stdout) == json.loads(utf8.stdout)


def test_ascii_tables_stay_aligned_and_spell_the_symbols() -> None:
    r = _run(["predict", B128], "ascii")
    text = r.stdout.decode("ascii")
    assert "kappa" in text and "C^2" in text and "||grad L||^2" in text and "~" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table and len({len(line) for line in table[:10]}) == 1, table[:10]  # aligned columns


def test_schedule_on_an_ascii_stream(tmp_path: Path) -> None:
    files = []
    for step, src in ((1000, B128), (2000, B512)):
        d = json.loads(Path(src).read_text())
        d["checkpoints"][0]["step"] = step
        files.append(tmp_path / f"m{step}.json")
        files[-1].write_text(json.dumps(d))
    r = _run(["schedule", *map(str, files)], "ascii")
    assert r.returncode == 0 and (r.stdout + r.stderr).isascii(), r.stderr


def test_to_ascii_spells_the_symbols() -> None:
    assert to_ascii("B* ≈ 2·κη ± 3, ∞") == "B* ~ 2*kappa*eta +/- 3, inf"
    assert to_ascii("τ = 1/(2ηλ), 10⁻³, β₂, √κ, ‖g‖², —") == (
        "tau = 1/(2*eta*lambda), 10^-3, beta2, sqrt(kappa), ||g||^2, --"
    )
    assert to_ascii("café ☃") == "cafe ?"
