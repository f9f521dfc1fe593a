"""Property-based tests of every reader at the boundary (:mod:`bscrit.boundary`): measurement
JSON, ``Measurement.save``, ``series.jsonl`` lines and the spec, each fuzzed from the fixtures.

The properties: a reader either returns a value every later step takes (predict, check, scale,
schedule, save) or raises a :class:`~bscrit.errors.BscritError` (exit 2 or 3 on the command
line); never another exception. What the API writes, it reads back. Fixed seed, bounded examples:
the file runs in a few seconds. The parsing limits (size, depth, aliases) have explicit tests.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bscrit import boundary
from bscrit.artifacts.measurement import Measurement, load_measurement
from bscrit.artifacts.schedule_io import megatron_schedule, read_series, schedule_yaml_text
from bscrit.errors import ArtifactError, BscritError, SpecError
from bscrit.integrations import recorder
from bscrit.specfile.document import load_spec
from bscrit.theory.prediction import check, predict
from bscrit.theory.rescale import scale_request
from bscrit.theory.schedule import make_schedule, point_from_measurement

ASSETS = Path(__file__).resolve().parents[1] / "assets"
FIXTURES = sorted((ASSETS / "measurements").glob("*.json"))
FUZZ = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Values no field should choke on: the edges of int64 and of the floats, NaN and ±inf, wrong
#: types, containers.
EDGES = [0, -1, 1, 2, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, 0.5, -0.0, 1e-300, 5e-324, 1e308,
         -1e308, math.nan, math.inf, -math.inf, True, False, None, "1", "x", "", [], {}, [1, 2],
         {"a": 1}]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(EDGES).map(copy.deepcopy),  # a fresh [] / {} each time: mutations nest
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)


def leaves(d: Any, path: tuple = ()) -> list[tuple]:
    """Every key path of a JSON value (containers included), for the mutations to pick from."""
    out = [path] if path else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += leaves(v, (*path, k))
    elif isinstance(d, list):
        for i, v in enumerate(d[:3]):
            out += leaves(v, (*path, i))
    return out


def mutate(d: Any, path: tuple, value: Any, delete: bool) -> None:
    target = d
    for k in path[:-1]:
        target = target[k]
    if delete and isinstance(target, dict):
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


BASES = {p.name: json.loads(p.read_text()) for p in FIXTURES}
PATHS = {name: leaves(d) for name, d in BASES.items()}


#: Numbers a reader may well accept: the edges of the float and int64 ranges, subnormals.
NUMBERS = st.one_of(
    st.sampled_from([0, 1, 2, 5e-324, 1e-300, 1e-30, 1e30, 1e300, 1e308, 2**62, 2**63 - 1]),
    st.floats(min_value=0.0, max_value=1e308),
    st.integers(0, 2**63 - 1),
)


def _get(d: Any, path: tuple) -> Any:
    for k in path:
        d = d[k]
    return d


@st.composite
def measurement_json(draw: st.DrawFn) -> dict:
    """A fixture measurement with 1 to 3 of its values replaced (or keys deleted): any value
    anywhere, or ("numeric") a number where a number was."""
    name = draw(st.sampled_from(sorted(BASES)))
    d = copy.deepcopy(BASES[name])
    numeric = draw(st.booleans())
    for _ in range(draw(st.integers(1, 3))):
        paths = leaves(d)
        if numeric:
            paths = [p for p in paths if type(_get(d, p)) in (int, float)]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        value = draw(NUMBERS if numeric else VALUES)
        mutate(d, path, value, delete=not numeric and draw(st.booleans()))
    return d


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _everything_after(m: Measurement, folder: Path) -> None:
    """predict, check, scale, a schedule point, and save → load: values or BscritErrors only."""
    try:
        p = predict([("m", m)])
        json.dumps(p.to_dict(), allow_nan=False)
        for target in (1, m.batch_size, 2**40):
            json.dumps(check(p, target).to_dict(), allow_nan=False)
        json.dumps(scale_request(2 * m.batch_size, measurement=m).to_dict(), allow_nan=False)
        point_from_measurement("m", m)
    except BscritError:
        pass
    out = folder / "saved.json"
    out.unlink(missing_ok=True)
    try:
        m.save(out)
    except BscritError:
        assert not out.exists()  # refused before writing
        return
    back = load_measurement(out)  # what the API writes, its reader takes
    assert back.to_dict() == json.loads(out.read_text())


@FUZZ
@given(d=measurement_json())
def test_fuzzed_measurement_json_is_read_or_refused(work, d):
    f = work / "m.json"
    f.write_text(json.dumps(d))  # NaN / Infinity as the JSON extensions Python writes
    try:
        m = load_measurement(f)
    except ArtifactError as e:
        assert str(f) in str(e)
        return
    _everything_after(m, work)


def _set_stats(m: Measurement, **kw: Any) -> Measurement:
    import dataclasses

    return dataclasses.replace(m, all=dataclasses.replace(m.all, **kw))


@FUZZ
@given(
    name=st.sampled_from(sorted(BASES)),
    top=st.dictionaries(
        st.sampled_from(["batch_size", "dataset_size", "seed", "elapsed_s", "groups",
                         "micro_batch_size", "scale_invariant_fraction"]),
        VALUES, max_size=2,
    ),
    stats=st.dictionaries(st.sampled_from(["G", "N", "nsr", "R", "k", "G_se"]), VALUES, max_size=2),
    extra=st.dictionaries(st.one_of(st.text(max_size=3), st.integers(-2, 2)), VALUES, max_size=2),
)  # fmt: skip
def test_measurement_save_never_writes_what_its_reader_refuses(work, name, top, stats, extra):
    import dataclasses

    m = load_measurement(ASSETS / "measurements" / name)
    m = dataclasses.replace(m, **top, extra=extra)
    m = _set_stats(m, **stats)
    out = work / "api.json"
    out.unlink(missing_ok=True)
    try:
        m.save(out)
    except BscritError:
        assert not out.exists()
        return
    load_measurement(out)


# ----------------------------------------------------------------------------------------------
# series.jsonl
# ----------------------------------------------------------------------------------------------

GOOD_LINE = {
    "step": 10, "examples_seen": 160, "G": 1.0, "N": 2.0, "nsr": 2.0, "b_star": 80.0,
    "b_star_ci95": [40.0, None], "G_ci95": [0.5, 1.5], "N_ci95": [1, 3], "nsr_ci95": [1.0, None],
    "batch_size": 16, "seconds": 0.1, "param_set": "all", "file": "step-0000010.json",
}  # fmt: skip


@st.composite
def series_lines(draw: st.DrawFn) -> list[dict]:
    """1 to 4 lines: the good line at drawn steps, some values replaced or keys deleted."""
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        d = copy.deepcopy(GOOD_LINE)
        d["step"] = draw(st.integers(0, 40))
        d["examples_seen"] = d["step"] * 16
        for _ in range(draw(st.integers(0, 2))):
            mutate(d, draw(st.sampled_from(leaves(d))), draw(VALUES), draw(st.booleans()))
        lines.append(d)
    return lines


@FUZZ
@given(lines=series_lines())
def test_fuzzed_series_lines_are_read_or_refused(work, lines):
    f = work / "series.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in lines))
    for read in (recorder.read_series, read_series):
        try:
            read(f)
        except ArtifactError as e:
            assert str(f) in str(e)
    try:
        points = read_series(f)
    except ArtifactError:
        return
    steps = [p.step for p in points]
    assert steps == sorted(set(steps))  # accepted lines are in training order, once each
    for p in points:
        assert p.b_star_ci95[0] <= p.b_star_ci95[1]
    try:
        s = make_schedule(points)
        json.dumps(s.to_dict(), allow_nan=False)
        schedule_yaml_text(s)
        megatron_schedule(s, 2**40)
    except BscritError:
        pass


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([{**GOOD_LINE, "step": 20}, {**GOOD_LINE, "step": 20}], r":2: key 'step': 20 repeats"),
        ([{**GOOD_LINE, "step": 20}, GOOD_LINE], r":2: key 'step': 10 is before step 20"),
        ([GOOD_LINE, {**GOOD_LINE, "step": 20, "examples_seen": 10}], r"key 'examples_seen'"),
        ([{**GOOD_LINE, "b_star": 10.0}], r":1: key 'b_star_ci95': b_star = 10.0 is outside"),
        ([{**GOOD_LINE, "b_star_ci95": [50, 40]}], r"key 'b_star_ci95': the lower end 50"),
        ([{**GOOD_LINE, "nsr": 5.0, "nsr_ci95": [1.0, None]}], r"key 'nsr': 5.0 but N/G = 2"),
        ([{**GOOD_LINE, "step": 2**63}], r":1: step: 9223372036854775808 is outside int64"),
        ([{**GOOD_LINE, "batch_size": 0}], r":1: key 'batch_size': expected a positive integer"),
    ],
)  # fmt: skip
def test_inconsistent_series_lines_name_file_line_and_key(tmp_path, lines, match):
    f = tmp_path / "series.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in lines))
    with pytest.raises(ArtifactError, match=match):
        read_series(f)


# ----------------------------------------------------------------------------------------------
# The spec
# ----------------------------------------------------------------------------------------------

SPEC = yaml.safe_load((ASSETS / "valid.yaml").read_text())


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("spec")
    for name in ("tiny.py", "tiny.pt"):
        shutil.copy(ASSETS / name, d / name)
    return d


@FUZZ
@given(data=st.data())
def test_fuzzed_spec_values_are_read_or_refused(spec_dir, data):
    d = copy.deepcopy(SPEC)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(leaves(d)))
        mutate(d, path, data.draw(VALUES), data.draw(st.booleans()))
    f = spec_dir / "spec.yaml"
    f.write_text(yaml.safe_dump(d))
    try:
        s = load_spec(f)
    except SpecError as e:
        assert e.problems and all(str(p) for p in e.problems)
        return
    assert 1 <= s.batch_size <= boundary.INT64_MAX
    assert s.measure.seed <= boundary.INT64_MAX and s.measure.groups >= 2


@FUZZ
@given(text=st.text(alphabet="[]{}:&*!-,|>\n '\"ab0.~", max_size=60))
def test_fuzzed_yaml_text_is_read_or_refused(spec_dir, text):
    f = spec_dir / "text.yaml"
    f.write_text(text)
    try:
        load_spec(f)
    except SpecError:
        pass


# ----------------------------------------------------------------------------------------------
# The parsing limits
# ----------------------------------------------------------------------------------------------


def _laughs(levels: int = 9, width: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    inner = "".join(f"    {line}\n" for line in lines)
    return (
        f"model:\n  factory: tiny.py:make_model\n  kwargs:\n{inner}data: {{factory: "
        f"tiny.py:make_dataset, kwargs: {{x: *a{levels}}}}}\nloss: mse\nbatch_size: 8\n"
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (_laughs(), "more than 100,000 values once its aliases are expanded"),
        (_laughs(levels=2, width=60), "aliases, more than the 100"),
        ("model: " + "[" * 200 + "]" * 200 + "\n", "nested deeper than 64 levels"),
        ("model: &a [*a]\n", "recursive"),
        ("batch_size: " + "9" * 5000 + "\n", "cannot read"),
    ],
)
def test_yaml_limits_refuse_quickly(spec_dir, text, match):
    f = spec_dir / "limit.yaml"
    f.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=match):
        load_spec(f)
    assert time.perf_counter() - t0 < 5.0


def test_yaml_size_limit(spec_dir, monkeypatch):
    monkeypatch.setattr(boundary, "MAX_YAML_BYTES", 100)
    f = spec_dir / "big.yaml"
    f.write_text("# " + "x" * 200 + "\nmodel: m\n")
    with pytest.raises(SpecError, match="more than the 100 bytes a spec"):
        load_spec(f)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
        ('{"seed": NaN}', "seed: nan is not a JSON number"),
        ('{"a": {"b": [1e999]}}', r"a.b\[0\]: inf is not a JSON number"),
        ('{"seed": 9223372036854775808}', "seed: 9223372036854775808 is outside int64"),
        ('{"seed": ' + "9" * 5000 + "}", "not a number bscrit reads"),
    ],
)
def test_json_limits_name_the_key(tmp_path, text, match):
    f = tmp_path / "m.json"
    f.write_text(text)
    with pytest.raises(ArtifactError, match=match):
        load_measurement(f)


def test_json_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(boundary, "MAX_JSON_BYTES", 1 << 20)
    f = tmp_path / "m.json"
    f.write_text(" " * (2 << 20) + "{}")
    with pytest.raises(ArtifactError, match="more than the 1 MiB a bscrit measurement may be"):
        load_measurement(f)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("nsr", 3.0, "stats.all.nsr: 3.0 but N/G"),
        ("G_ci95", [0.2, 0.3], r"stats.all.G_ci95: G = 0.11 is outside its own interval"),
        ("N_ci95", [1.0, 0.5], "stats.all.N_ci95: the lower end 1 is above the upper end 0.5"),
        ("nsr_ci95", [9.0, 1.0], "stats.all.nsr_ci95: the lower end 9"),
    ],
)
def test_inconsistent_measurement_fields_are_refused(tmp_path, key, value, match):
    d = copy.deepcopy(BASES["sgd_b128.json"])
    d["stats"]["all"][key] = value
    f = tmp_path / "m.json"
    f.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match=match):
        load_measurement(f)


# ----------------------------------------------------------------------------------------------
# The schedule's stage YAML, and the bugs the fuzzing found (kept as plain regressions)
# ----------------------------------------------------------------------------------------------

STAGES = {"kind": "bscrit.schedule", "schema": 1, "stages": [
    {"start_examples": 0, "start_step": 0, "batch_size": 8, "hyperparameters": {"lr": 0.1}},
    {"start_examples": 800, "start_step": 100, "batch_size": 16, "hyperparameters": {"lr": 0.2}},
]}  # fmt: skip


@FUZZ
@given(data=st.data())
def test_fuzzed_stage_yaml_is_read_or_refused(tmp_path_factory, data):
    from bscrit.artifacts.schedule_io import load_stages

    d = copy.deepcopy(STAGES)
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(leaves(d)))
        mutate(d, path, data.draw(VALUES), data.draw(st.booleans()))
    f = tmp_path_factory.mktemp("stages") / "s.yaml"
    f.write_text(yaml.safe_dump(d))
    try:
        stages = load_stages(f)
    except BscritError:
        return
    assert all(1 <= s.batch_size <= boundary.INT64_MAX for s in stages)
    assert [s.start_examples for s in stages] == sorted(s.start_examples for s in stages)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d["stages"][1]["hyperparameters"].update(lr=math.nan), r"hyperparameters.lr"),
        (lambda d: d["stages"][1].update(start_examples=-1), r"key 'stages.1': start_examples"),
        (lambda d: d["stages"][1].update(start_step=2**63), r"stages.1': start_step: .*int64"),
        (lambda d: d["stages"][0].update(start_examples=900), r"key 'stages.1': starts before"),
    ],
)
def test_bad_stage_yaml_names_the_stage(tmp_path, edit, match):
    from bscrit.artifacts.schedule_io import load_stages
    from bscrit.errors import UsageError

    d = copy.deepcopy(STAGES)
    edit(d)
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(d))
    with pytest.raises(UsageError, match=match):
        load_stages(f)


def test_stage_yaml_billion_laughs_is_refused_quickly(tmp_path):
    from bscrit.artifacts.schedule_io import load_stages
    from bscrit.errors import UsageError

    f = tmp_path / "s.yaml"
    f.write_text(_laughs())
    t0 = time.perf_counter()
    with pytest.raises(UsageError, match="once its aliases are expanded"):
        load_stages(f)
    assert time.perf_counter() - t0 < 5.0


def _edited(name: str, edit: Any, folder: Path) -> Path:
    d = copy.deepcopy(BASES[name])
    edit(d)
    f = folder / "edited.json"
    f.write_text(json.dumps(d))
    return f


def test_tiny_lr_has_no_relaxation_time_and_no_zero_division(tmp_path):
    # 2ηλ = 2 · 5e-324 · 5e-4 underflows to 0: was ZeroDivisionError in relaxation_steps
    f = _edited("sgd_b128.json", lambda d: d["optimizer"].update(lr=5e-324), tmp_path)
    p = predict([("m", load_measurement(f))])
    json.dumps(p.to_dict(), allow_nan=False)


def test_huge_jackknife_values_give_unbounded_intervals_not_overflow(tmp_path):
    # (x − mean)**2 of 1e308 raised OverflowError; G's interval was ±inf, then json.dumps failed
    def edit(d: dict) -> None:
        d["stats"]["scale_invariant"]["jackknife"]["G"][0] = 1e308

    p = predict([("m", load_measurement(_edited("sgd_b128.json", edit, tmp_path)))])
    assert p.to_dict()["measurements"][0]["G_ci95"] == [None, None]
    json.dumps(p.to_dict(), allow_nan=False)


def test_equilibrium_interval_of_a_wrong_type_names_its_key(tmp_path):
    # was AttributeError: 'str' object has no attribute 'get'
    f = _edited("sgd_b128.json", lambda d: d.update(equilibrium_interval="x"), tmp_path)
    with pytest.raises(ArtifactError, match="equilibrium_interval: expected a mapping"):
        load_measurement(f)


def test_a_numeric_string_is_not_a_json_number(tmp_path):
    f = tmp_path / "series.jsonl"  # was TypeError comparing '1' with a float
    f.write_text(json.dumps({**GOOD_LINE, "G": "1"}) + "\n")
    with pytest.raises(ArtifactError, match="key 'G': expected a number, got '1'"):
        read_series(f)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"x": math.nan}, "extra.x: nan is not a JSON number"),
        ({"x": 2**64}, "extra.x: 18446744073709551616 is outside int64"),
        ({(1, 2): 1}, "not JSON"),
    ],
)
def test_save_refuses_what_load_would_refuse_and_writes_nothing(tmp_path, extra, match):
    import dataclasses

    m = dataclasses.replace(
        load_measurement(ASSETS / "measurements" / "sgd_b128.json"), extra=extra
    )
    with pytest.raises(ArtifactError, match=match) as e:
        m.save(tmp_path / "m.json")
    assert e.value.exit_code == 3 and not list(tmp_path.iterdir())


def test_api_numbers_are_checked_all_at_once():
    from bscrit.errors import UsageError

    m = load_measurement(ASSETS / "measurements" / "sgd_b128.json")
    with pytest.raises(UsageError, match="c2 must be a number > 1.*an integer of 401 digits"):
        predict([("m", m)], c2=10**400)
    with pytest.raises(
        UsageError, match=r"3 problems:\n  - steps: .*int64.*\n  - c2: .*\n  - lr: "
    ):
        scale_request(256, measurement=m, values={"lr": math.nan}, steps=2**70, c2=math.inf)


def test_spec_warmup_longer_than_the_run_is_refused(spec_dir):
    d = copy.deepcopy(SPEC)
    d["schedule"] = {"name": "cosine", "warmup_steps": 500, "total_steps": 100}
    f = spec_dir / "warmup.yaml"
    f.write_text(yaml.safe_dump(d))
    with pytest.raises(SpecError, match="schedule.warmup_steps: 500 is more than total_steps"):
        load_spec(f)


@pytest.mark.parametrize("kind", ["svag", "confirm"])
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"kind": "bscrit.svag", "schema": 2, "runs": [{"x": NaN}]}', r"runs\[0\].x: nan"),
        ('{"seed": -9223372036854775809}', "seed: .* is outside int64"),
        ("[" * 5000 + "]" * 5000, "nested deeper than 64 levels"),
    ],
)
def test_run_artifacts_are_read_within_the_same_limits(tmp_path, kind, text, match):
    from bscrit.runs.confirm.results import CONFIRM_ARTIFACT
    from bscrit.runs.svag.results import SVAG_ARTIFACT

    artifact = {"svag": SVAG_ARTIFACT, "confirm": CONFIRM_ARTIFACT}[kind]
    (tmp_path / artifact.json_name).write_text(text)
    with pytest.raises(ArtifactError, match=match):
        artifact.load(tmp_path)
