"""Measurement artifacts (bscrit.artifacts.measurement, .records, .files, .jsonvalues): round
trip, inf ↔ null, the schema policy, safe I/O.

The schema policy is the format-history comment at the top of bscrit/artifacts/measurement.py:
additive changes keep the schema number (unknown keys ignored, missing new keys read as
absent), other changes bump SCHEMA with an upgrade function in ``_UPGRADES``, newer schemas are
refused with "upgrade bscrit". No torch.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import os
import random
import zipfile
from pathlib import Path

import pytest

from bscrit.artifacts import files
from bscrit.artifacts import measurement as results
from bscrit.artifacts.files import dumps, read_json, write_atomic, write_json
from bscrit.artifacts.jsonvalues import estimate_dict
from bscrit.artifacts.measurement import (
    KIND_MEASUREMENT,
    SCHEMA,
    Measurement,
    check_schema,
    csv_path_for,
    load_measurement,
    write_measurement,
)
from bscrit.artifacts.records import ParamSetStats
from bscrit.cli import outputs
from bscrit.errors import ArtifactError
from bscrit.stats.estimators import Estimate, noise_stats_from_jackknife

ASSETS = Path(__file__).parents[1] / "assets" / "measurements"
FIXTURES = sorted(p.name for p in ASSETS.glob("*.json"))


def load(name: str) -> Measurement:
    return load_measurement(ASSETS / name)


def base_dict() -> dict:
    return copy.deepcopy(load("sgd_b128.json").to_dict())


# ----------------------------------------------------------------------------------------------
# Round trip and inf ↔ null
# ----------------------------------------------------------------------------------------------


def test_there_are_fixtures() -> None:
    assert {"sgd_b128.json", "sgd_b512.json", "adam_noisy.json", "sgd_small_nsr.json"} <= set(
        FIXTURES
    )


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_round_trips_through_dict_and_json(name: str) -> None:
    m = load(name)
    d = m.to_dict()
    again = Measurement.from_dict(copy.deepcopy(d))
    assert again.to_dict() == d
    assert again == m
    # Through the JSON text too: dumps is strict JSON (no NaN/Infinity tokens).
    text = dumps(d)
    assert text.endswith("\n")
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == d
    assert Measurement.from_dict(json.loads(text)).to_dict() == d
    # The stored file holds the same numbers the loaded object writes back.
    raw = json.loads((ASSETS / name).read_text(encoding="utf-8"))
    assert raw["stats"]["all"] == d["stats"]["all"]
    assert raw["batch_size"] == m.batch_size and raw["dataset_size"] == m.dataset_size


def test_unbounded_nsr_interval_of_a_fixture_is_inf_in_memory_and_null_on_disk() -> None:
    # adam_noisy: Ĝ's interval includes 0, so the NSR interval has no upper end.
    raw = json.loads((ASSETS / "adam_noisy.json").read_text(encoding="utf-8"))
    assert raw["stats"]["all"]["nsr_ci95"][1] is None
    m = load("adam_noisy.json")
    assert m.all.nsr_ci95[1] == math.inf
    assert not m.all.signal_detected
    assert math.isfinite(m.all.nsr_ci95[0]) and m.all.nsr_ci95[0] > 0
    assert json.loads(dumps(m.to_dict()))["stats"]["all"]["nsr_ci95"] == [m.all.nsr_ci95[0], None]


def _buried_signal_stats() -> ParamSetStats:
    """Ĝ < 0: NSR itself is inf (and its upper end). m = 10 groups, as in the fixtures."""
    g_loo = [-0.02, 0.0, -0.01, 0.01, -0.03] * 2
    s = noise_stats_from_jackknife(-0.01, 1.0, g_loo, [1.0, 1.1, 0.9, 1.0, 1.05] * 2, k=50)
    assert s.nsr == math.inf and s.nsr_ci95[1] == math.inf
    return ParamSetStats.from_noise_stats(s, R=10.0, num_params=100, num_tensors=2)


def test_infinite_nsr_is_written_as_null_and_read_back_as_inf() -> None:
    st = _buried_signal_stats()
    m = dataclasses.replace(load("adam_noisy.json"), all=st)
    text = dumps(m.to_dict())
    assert "Infinity" not in text
    on_disk = json.loads(text)["stats"]["all"]
    assert on_disk["nsr"] is None
    assert on_disk["nsr_ci95"][1] is None
    assert on_disk["G"] == -0.01 and on_disk["signal_detected"] is False
    back = Measurement.from_dict(json.loads(text))
    assert back.all.nsr == math.inf and back.all.nsr_ci95[1] == math.inf
    assert back.all == st
    # The rebuilt NoiseStats (from the stored jackknife values) agrees.
    assert back.all.noise_stats().nsr == math.inf


def test_estimate_dict_maps_non_finite_to_none() -> None:
    e = Estimate(2.5, 0.25, (2.0, 3.0))
    assert estimate_dict(e) == {"value": 2.5, "se": 0.25, "ci95": [2.0, 3.0]}
    e = Estimate(math.inf, math.inf, (1.5, math.inf))
    assert estimate_dict(e) == {"value": None, "se": None, "ci95": [1.5, None]}
    e = Estimate(-1.0, math.nan, (-math.inf, 0.5))
    d = estimate_dict(e)
    assert d == {"value": -1.0, "se": None, "ci95": [None, 0.5]}
    json.dumps(d, allow_nan=False)  # strict JSON


# ----------------------------------------------------------------------------------------------
# The schema policy
# ----------------------------------------------------------------------------------------------


def test_current_schema_and_every_older_schema_has_an_upgrade() -> None:
    assert isinstance(SCHEMA, int) and SCHEMA >= 1
    assert set(results._UPGRADES) == set(range(1, SCHEMA))
    assert base_dict()["schema"] == SCHEMA
    assert base_dict()["kind"] == KIND_MEASUREMENT == "bscrit.measurement"


def test_check_schema_returns_the_dict() -> None:
    d = base_dict()
    out = check_schema(d, KIND_MEASUREMENT, "x.json")
    assert out == base_dict()
    assert out["schema"] == SCHEMA


def test_unknown_keys_are_ignored() -> None:
    d = base_dict()
    ref = Measurement.from_dict(copy.deepcopy(d))
    d["written_by_a_newer_bscrit"] = {"anything": [1, 2, 3]}
    d["stats"]["all"]["preconditioned_G"] = 0.5
    d["stats"]["some_future_set"] = {"G": 1.0}  # ("preconditioned" is a known key now)
    d["checkpoints"][0]["saved_by"] = "trainer v9"  # ("step" is a known key now)
    d["per_parameter"][0]["new_column"] = "x"
    m = Measurement.from_dict(d, source="newer.json")
    assert m == ref
    assert m.to_dict() == ref.to_dict()
    assert m.all.G == 0.11 and m.all.N == 0.9  # sgd_b128, "all" set
    assert "preconditioned_G" not in m.to_dict()["stats"]["all"]


def test_checkpoint_step_round_trips_and_reads_as_none_when_absent() -> None:
    d = base_dict()
    assert Measurement.from_dict(copy.deepcopy(d)).checkpoints[0].step is None
    d["checkpoints"][0]["step"] = 1200
    m = Measurement.from_dict(d)
    assert m.checkpoints[0].step == 1200
    assert Measurement.from_dict(m.to_dict()).checkpoints[0].step == 1200


def test_missing_optional_keys_read_as_absent() -> None:
    d = base_dict()
    for key in ("spec", "model", "amp", "estimator", "warnings", "extra", "equilibrium_note"):
        d.pop(key)
    d["stats"].pop("scale_invariant")
    d["checkpoints"][0].pop("equilibrium")
    d["checkpoints"][0].pop("elapsed_s")
    d["per_parameter"][0].pop("invariance_ratio")
    m = Measurement.from_dict(d)
    assert (m.spec, m.model, m.amp) == (None, None, None)
    assert m.estimator == "batch"
    assert m.warnings == () and m.extra == {} and m.equilibrium_note == ""
    assert m.scale_invariant is None
    assert m.checkpoints[0].equilibrium is None and m.checkpoints[0].elapsed_s == 0.0
    assert math.isnan(m.per_parameter[0].invariance_ratio)
    assert m.all == load("sgd_b128.json").all


def test_newer_schema_is_refused_with_upgrade_bscrit() -> None:
    d = base_dict()
    d["schema"] = SCHEMA + 1
    with pytest.raises(ArtifactError, match="upgrade bscrit") as e:
        Measurement.from_dict(d, source="future.json")
    assert "future.json" in e.value.message
    assert str(SCHEMA + 1) in e.value.message


@pytest.mark.parametrize("bad", [0, -1, "1", 1.0, True, None, [1]], ids=repr)
def test_invalid_schema_values_are_refused(bad) -> None:
    d = base_dict()
    d["schema"] = bad
    with pytest.raises(ArtifactError, match="'schema'") as e:
        Measurement.from_dict(d, source="bad.json")
    assert e.value.message.startswith("bad.json:")
    assert "upgrade bscrit" not in e.value.message


def test_missing_schema_is_refused() -> None:
    d = base_dict()
    del d["schema"]
    with pytest.raises(ArtifactError, match="'schema' is None"):
        Measurement.from_dict(d, source="old.json")


@pytest.mark.parametrize("kind", ["bscrit.svag", "bscrit.prediction", None, 1])
def test_wrong_kind_is_refused(kind) -> None:
    d = base_dict()
    d["kind"] = kind
    with pytest.raises(ArtifactError, match="'kind'") as e:
        Measurement.from_dict(d, source="k.json")
    assert KIND_MEASUREMENT in e.value.message


def test_missing_kind_is_refused() -> None:
    d = base_dict()
    del d["kind"]
    with pytest.raises(ArtifactError, match="'kind' is None"):
        Measurement.from_dict(d)


@pytest.mark.parametrize(
    "value", [[base_dict()], "text", 3, None], ids=["array", "str", "int", "null"]
)
def test_non_object_json_is_refused(value, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="expected a JSON object"):
        Measurement.from_dict(value, source="v.json")
    p = tmp_path / "v.json"
    p.write_text(json.dumps(value), encoding="utf-8")
    with pytest.raises(ArtifactError, match="expected a JSON object") as e:
        load_measurement(p)
    assert str(p) in e.value.message


def test_malformed_body_is_an_artifact_error() -> None:
    d = base_dict()
    del d["stats"]["all"]["jackknife"]
    with pytest.raises(ArtifactError, match="malformed measurement artifact"):
        Measurement.from_dict(d, source="m.json")
    d = base_dict()
    d["batch_size"] = "lots"
    with pytest.raises(ArtifactError, match="m.json: malformed"):
        Measurement.from_dict(d, source="m.json")


def _rename(d: dict, old: str, new: str) -> dict:
    """A pure upgrade step: a copy of ``d`` with one top-level key renamed."""
    out = {k: v for k, v in d.items() if k != old}
    out[new] = d[old]
    return out


def test_upgrade_loop_applies_each_step_in_order(monkeypatch) -> None:
    calls: list[int] = []

    def v1_to_v2(d: dict) -> dict:
        calls.append(d["schema"])
        return _rename(d, "n_groups", "groups")

    ref = load("sgd_b128.json")  # before the patch: the fixture is schema 1
    # Pretend schema 1 called the key "n_groups" and schema 2 renamed it "groups".
    v1 = _rename(ref.to_dict(), "groups", "n_groups")
    monkeypatch.setattr(results, "SCHEMA", 2)
    monkeypatch.setattr(results, "_UPGRADES", {1: v1_to_v2})

    v1["schema"] = 1
    snapshot = copy.deepcopy(v1)
    out = results.check_schema(v1, KIND_MEASUREMENT, "v1.json")
    assert calls == [1]
    assert out["schema"] == 2
    assert out["groups"] == 10 and "n_groups" not in out
    assert v1 == snapshot  # the caller's dict is left alone

    # A full load of the old artifact gives the same measurement as the current one.
    m = Measurement.from_dict(copy.deepcopy(v1), source="v1.json")
    assert m == ref
    assert m.to_dict()["schema"] == 2
    assert calls == [1, 1]

    # The current schema is not upgraded, a newer one is refused.
    current = m.to_dict()
    assert results.check_schema(current, KIND_MEASUREMENT, "v2.json") == current
    assert calls == [1, 1]
    current["schema"] = 3
    with pytest.raises(ArtifactError, match="upgrade bscrit"):
        results.check_schema(current, KIND_MEASUREMENT, "v3.json")


def test_upgrade_loop_chains_several_steps(monkeypatch) -> None:
    monkeypatch.setattr(results, "SCHEMA", 3)
    monkeypatch.setattr(
        results,
        "_UPGRADES",
        {1: lambda d: _rename(d, "a", "b"), 2: lambda d: _rename(d, "b", "c")},
    )
    d = {"kind": KIND_MEASUREMENT, "schema": 1, "a": 7}
    assert results.check_schema(d, KIND_MEASUREMENT, "x") == {
        "kind": KIND_MEASUREMENT,
        "schema": 3,
        "c": 7,
    }
    d2 = {"kind": KIND_MEASUREMENT, "schema": 2, "b": 8}
    assert results.check_schema(d2, KIND_MEASUREMENT, "x") == {
        "kind": KIND_MEASUREMENT,
        "schema": 3,
        "c": 8,
    }


# ----------------------------------------------------------------------------------------------
# read_json: every failure is an ArtifactError naming the file
# ----------------------------------------------------------------------------------------------


def _assert_artifact_error(path: Path, match: str) -> None:
    with pytest.raises(ArtifactError, match=match) as e:
        read_json(path)
    assert str(path) in e.value.message
    with pytest.raises(ArtifactError) as e2:
        load_measurement(path)
    assert str(path) in e2.value.message


def test_read_json_missing_file(tmp_path: Path) -> None:
    _assert_artifact_error(tmp_path / "nope.json", "no such file")


def test_read_json_folder(tmp_path: Path) -> None:
    d = tmp_path / "a_folder.json"
    d.mkdir()
    _assert_artifact_error(d, "is a folder")


def test_read_json_random_bytes(tmp_path: Path) -> None:
    data = random.Random(0).randbytes(4096)
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # so the test exercises the binary-file path
    p = tmp_path / "random.json"
    p.write_bytes(data)
    _assert_artifact_error(p, "binary file")


def test_read_json_zip_file(tmp_path: Path) -> None:
    # torch.save writes a zip archive: passing a checkpoint by mistake must not crash.
    p = tmp_path / "model.pt"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", bytes(range(256)) * 8)
    assert p.read_bytes()[:4] == b"PK\x03\x04"
    with pytest.raises(ArtifactError) as e:
        read_json(p)
    assert str(p) in e.value.message
    assert "binary file" in e.value.message or "not valid JSON" in e.value.message


def test_read_json_ascii_zip_header_is_invalid_json(tmp_path: Path) -> None:
    p = tmp_path / "header.json"
    p.write_bytes(b"PK\x03\x04\x14\x00\x00\x00")  # valid UTF-8, not JSON
    _assert_artifact_error(p, "not valid JSON")


@pytest.mark.parametrize(
    "text,line", [("", 1), ('{"schema": 1,}', 1), ('{\n  "a": 1\n  "b": 2\n}', 3), ("nan?", 1)]
)
def test_read_json_invalid_json(tmp_path: Path, text: str, line: int) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text, encoding="utf-8")
    _assert_artifact_error(p, rf"not valid JSON \(line {line}, column \d+")


def test_read_json_reads_a_valid_file(tmp_path: Path) -> None:
    p = tmp_path / "ok.json"
    p.write_text('{"a": [1, 2.5, null]}', encoding="utf-8")
    assert read_json(p) == {"a": [1, 2.5, None]}
    assert read_json(str(p)) == {"a": [1, 2.5, None]}


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------


def test_write_measurement_writes_json_and_csv_and_no_temp_files(tmp_path: Path) -> None:
    m = load("sgd_b128.json")
    out = tmp_path / "deep" / "run" / "m.json"
    json_p, csv_p = write_measurement(m, out)
    assert json_p == out
    assert csv_p == out.with_name("m.params.csv") == csv_path_for(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.json", "m.params.csv"]
    assert out.read_text(encoding="utf-8") == dumps(m.to_dict())
    assert load_measurement(out) == m
    rows = list(csv.DictReader(io.StringIO(csv_p.read_text(encoding="utf-8"))))
    assert [r["name"] for r in rows] == [r.name for r in m.per_parameter]
    assert rows[0]["shape"] == "x".join(str(s) for s in m.per_parameter[0].shape)
    for row, pr in zip(rows, m.per_parameter):
        assert int(row["numel"]) == pr.numel
        assert float(row["G"]) == pytest.approx(pr.G, rel=1e-15)
        assert float(row["nsr"]) == pytest.approx(pr.N / pr.G, rel=1e-12)

    # Writing again replaces both files in place, still without leftovers.
    m2 = dataclasses.replace(m, seed=7)
    write_measurement(m2, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.json", "m.params.csv"]
    assert load_measurement(out).seed == 7


def test_write_atomic_creates_folders_and_replaces(tmp_path: Path) -> None:
    p = tmp_path / "a" / "b" / "f.txt"
    write_atomic(p, "first ✓\n")
    assert p.read_text(encoding="utf-8") == "first ✓\n"
    write_atomic(str(p), "second")
    assert p.read_text(encoding="utf-8") == "second"
    assert [x.name for x in p.parent.iterdir()] == ["f.txt"]


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    p = tmp_path / "f.json"
    write_atomic(p, "old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(p, "half \ud800 written")  # a lone surrogate cannot be encoded
    assert p.read_text(encoding="utf-8") == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]


def test_write_json_refuses_nan_before_touching_the_disk(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    with pytest.raises(ValueError):
        write_json(p, {"G": math.nan})
    assert list(tmp_path.iterdir()) == []
    write_json(p, {"G": 1.5, "nsr": None})
    assert json.loads(p.read_text(encoding="utf-8")) == {"G": 1.5, "nsr": None}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_write_atomic_gives_the_file_the_users_umask_not_0600(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "f.json", "{}")
        write_measurement(load("sgd_b128.json"), tmp_path / "m.json")
    finally:
        os.umask(old)
    for name in ("f.json", "m.json", "m.params.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_write_atomic_raises_an_exit_3_error_naming_the_file_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(ArtifactError) as e:
        write_atomic(tmp_path / "m.json", "{}")
    assert e.value.exit_code == 3
    assert f"cannot write {tmp_path / 'm.json'} (No space left on device)" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # the temp file is gone


# ----------------------------------------------------------------------------------------------
# Output paths checked before any work
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,folder,message",
    [
        ("dir", False, "is an existing folder, expected a file name"),
        ("new/", False, "ends in '/', expected a file name"),
        ("dir/", False, "ends in '/', expected a file name"),
        ("file.txt", True, "exists and is not a folder"),
        ("file.txt/m.json", False, "cannot create a folder under the file"),
        ("file.txt/a/b", True, "cannot create a folder under the file"),
    ],
)
def test_check_output_path_refuses_what_cannot_be_written(
    tmp_path: Path, name: str, folder: bool, message: str
) -> None:
    from bscrit.errors import UsageError

    (tmp_path / "dir").mkdir()
    (tmp_path / "file.txt").write_text("x")
    raw = str(tmp_path / name) + ("/" if name.endswith("/") else "")
    with pytest.raises(UsageError) as e:
        outputs.check_output_path(raw, folder=folder, key="out")
    assert e.value.exit_code == 2
    assert message in e.value.for_cli() and e.value.for_cli().startswith(f"--out {raw}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file.txt"]  # nothing created


def test_check_output_path_accepts_new_and_existing_paths_and_creates_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "old.json").write_text("{}")
    for name, folder in [("old.json", False), ("a/b/m.json", False), ("out", True), (".", True)]:
        assert outputs.check_output_path(tmp_path / name, folder=folder) == tmp_path / name
    assert [p.name for p in tmp_path.iterdir()] == ["old.json"]  # no probe file left


def test_check_output_path_refuses_a_device(tmp_path: Path) -> None:
    from bscrit.errors import UsageError

    with pytest.raises(UsageError, match="exists and is not a regular file"):
        outputs.check_output_path("/dev/null")


def test_check_output_path_refuses_a_read_only_folder_and_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import shutil
    import tempfile

    from bscrit.errors import UsageError

    real = tempfile.mkstemp

    def read_only(*a: object, **k: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(outputs.tempfile, "mkstemp", read_only)
    with pytest.raises(UsageError, match=r"cannot write in .* \(Read-only file system\)"):
        outputs.check_output_path(tmp_path / "m.json", key="plot")
    monkeypatch.setattr(outputs.tempfile, "mkstemp", real)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(UsageError, match=r"the disk holding .* is full \(4096 bytes free\)"):
        outputs.check_output_path(tmp_path / "sub" / "m.json")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_check_output_path_refuses_a_folder_without_write_permission(tmp_path: Path) -> None:
    from bscrit.errors import UsageError

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UsageError, match="Permission denied"):
            outputs.check_output_path(ro / "m.json")
    finally:
        ro.chmod(0o755)
