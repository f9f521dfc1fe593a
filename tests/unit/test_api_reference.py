"""docs/api.md's reference of the ``Measurement`` and ``Prediction`` objects agrees with the code:
every dataclass a user reaches from them (``m.all``, ``p.base.noise.G``, …) has a table, every
field and public property a row, with the type the code annotates and a meaning; no row names
an attribute that is gone (no torch)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

from bscrit.artifacts.measurement import Measurement
from bscrit.theory.prediction import Prediction

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
SECTION = "## Reference: the `Measurement` and `Prediction` objects"
ROW = re.compile(r"^\| `(\w+)`( \(property\))? \| `(.+?)` \| (.*) \|$")


def _dataclasses_in(tp: object) -> list[type]:
    found = [tp] if dataclasses.is_dataclass(tp) and isinstance(tp, type) else []
    for arg in typing.get_args(tp):
        found += _dataclasses_in(arg)
    return found


def _properties(cls: type) -> dict[str, property]:
    return {n: v for n, v in inspect.getmembers(cls) if isinstance(v, property) and n[0] != "_"}


def reachable() -> dict[str, dict[str, str]]:
    """Class name -> {attribute: annotated type} for every dataclass reachable from the two."""
    out: dict[str, dict[str, str]] = {}
    todo: list[type] = [Measurement, Prediction]
    while todo:
        cls = todo.pop(0)
        if cls.__name__ in out:
            continue
        namespace = vars(sys.modules[cls.__module__])
        hints = typing.get_type_hints(cls, namespace)
        attrs = {f.name: str(cls.__annotations__[f.name]) for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            todo += _dataclasses_in(hints[f.name])
        for name, prop in _properties(cls).items():
            attrs[name + " (property)"] = str(prop.fget.__annotations__["return"])
            todo += _dataclasses_in(typing.get_type_hints(prop.fget, namespace)["return"])
        out[cls.__name__] = attrs
    return out


def documented() -> dict[str, dict[str, tuple[str, str]]]:
    """Class name -> {attribute: (type, meaning)} from the reference section's tables."""
    text = DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"{DOC} has no {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    out: dict[str, dict[str, tuple[str, str]]] = {}
    current = None
    for line in section.splitlines():
        if line.startswith("### `"):
            current = line.removeprefix("### `").rstrip("`")
            out[current] = {}
            continue
        m = ROW.match(line)
        if m and current is not None:
            name = m.group(1) + (m.group(2) or "")
            assert name not in out[current], f"{current}.{name} is listed twice"
            out[current][name] = (m.group(3).replace("\\|", "|"), m.group(4).strip())
    return out


def test_every_attribute_users_reach_is_documented_with_its_type():
    code, doc = reachable(), documented()
    assert {"Measurement", "ParamSetStats", "Prediction", "MeasurementBounds"} <= set(code)
    assert set(doc) == set(code), "classes documented but unreachable, or reachable but not"
    for cls, attrs in code.items():
        missing = sorted(set(attrs) - set(doc[cls]))
        gone = sorted(set(doc[cls]) - set(attrs))
        assert not missing, f"docs/api.md: {cls} lacks rows for {missing}"
        assert not gone, f"docs/api.md: {cls} documents attributes that are gone: {gone}"
        for name, annotated in attrs.items():
            shown, meaning = doc[cls][name]
            assert shown == annotated, f"{cls}.{name}: documented as {shown}, is {annotated}"
            assert len(meaning) > 2, f"{cls}.{name} has no meaning"


def test_the_documented_example_runs_on_a_fixture():
    import bscrit

    fixture = Path(__file__).resolve().parents[1] / "assets" / "measurements" / "sgd_b128.json"
    m = bscrit.load_measurement(fixture)
    assert m.all.nsr > 0 and len(m.all.nsr_ci95) == 2
    assert m.checkpoints[0].step is None or m.checkpoints[0].step >= 0
    p = bscrit.predict(m)
    assert p.base.b_star > 0 and p.recommended.max >= p.recommended.min
