"""``bscrit schedule`` logic (bscrit.theory.schedule, bscrit.artifacts.schedule_io): points read
as ``predict`` reads them, warm-up stages (monotone, within every later range, powers of two /
multiples of K), Megatron's string, the YAML round trip and its own schema, series.jsonl, and the
JSON contract. No torch."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
import yaml

from bscrit.artifacts.measurement import load_measurement
from bscrit.artifacts.schedule_io import (
    _threshold,
    load_points,
    megatron_schedule,
    read_series,
    schedule_yaml_text,
    stages_from_yaml_dict,
)
from bscrit.errors import ArtifactError, UsageError
from bscrit.theory.prediction import predict
from bscrit.theory.rescale import scale_request
from bscrit.theory.scaled import scale_hyperparameters
from bscrit.theory.schedule import (
    SchedulePoint,
    Stage,
    choose_batch_sizes,
    heuristic_reasons,
    make_schedule,
    point_from_measurement,
    stage_at,
)

ASSETS = Path(__file__).parents[1] / "assets" / "measurements"


def with_step(tmp: Path, name: str, step: int | None, examples: int | None = None) -> Path:
    """A copy of a fixture whose checkpoint records ``step`` (and ``examples_seen``)."""
    d = json.loads((ASSETS / name).read_text())
    d["checkpoints"][0]["step"] = step
    d["checkpoints"][0]["examples_seen"] = examples
    out = tmp / f"{Path(name).stem}_{step}.json"
    out.write_text(json.dumps(d))
    return out


def point(step: int, top: float, b: int = 32, heuristic: bool = False) -> SchedulePoint:
    return SchedulePoint(
        source=f"p{step}", step=step, examples_seen=step * b, tokens_seen=None, batch_size=b,
        dataset_size=10**6, nsr=10.0, nsr_ci95=(5.0, 20.0), b_star=top * 1.2,
        b_star_ci95=(top, top * 2), top=top, limited_by="b_star", interval_scope="checkpoint",
        equilibrium_residual=0.0, heuristic=heuristic, heuristic_reasons=(),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Stage sizes
# ----------------------------------------------------------------------------------------------


def test_sizes_are_the_largest_power_of_two_in_each_range_then_the_running_minimum():
    # tops 100 → 64, 1000 → 512, 300 → 256 caps the one before it, 5000 → 4096
    assert choose_batch_sizes(32, [100, 1000, 300, 5000]) == [64, 256, 256, 4096]


def test_an_empty_range_keeps_the_base_and_caps_every_earlier_stage():
    assert choose_batch_sizes(32, [1000, 20, 1000]) == [32, 32, 512]


def test_cap_start_keeps_each_stage_within_its_own_start_range_only():
    assert choose_batch_sizes(32, [100, 1000, 300, 5000], cap="start") == [64, 512, 512, 4096]
    with pytest.raises(UsageError, match="cap"):
        choose_batch_sizes(32, [100], cap="nope")


def test_a_low_later_point_is_named_when_it_caps_earlier_stages():
    s = make_schedule([point(10, 100), point(20, 1000), point(30, 300), point(40, 5000)])
    (w,) = [w for w in s.warnings if "caps the stages" in w]
    assert w.startswith(
        "p30 (step 30, top of the range 300) caps the stages from step 20 on at 256"
    )
    assert not any("caps" in w for w in make_schedule([point(10, 100)], cap="start").warnings)


def test_multiple_of_k():
    assert choose_batch_sizes(24, [100, 1000], multiple_of=24) == [96, 984]
    assert choose_batch_sizes(30, [31], multiple_of=8) == [30]  # none in [30, 31]: the base


def test_an_unbounded_top_keeps_the_previous_choice():
    assert choose_batch_sizes(32, [math.inf, 200, math.inf]) == [32, 128, 128]


@pytest.mark.parametrize("cap", ["later", "start"])
@pytest.mark.parametrize("multiple_of", [None, 8, 48])
def test_random_tops_give_monotone_stages_within_the_ranges(multiple_of, cap):
    rng = random.Random(0)
    for _ in range(200):
        base = rng.choice([8, 24, 32, 100])
        tops = [rng.choice([rng.uniform(1, 20000), math.inf]) for _ in range(rng.randint(1, 8))]
        sizes = choose_batch_sizes(base, tops, multiple_of, cap)
        assert all(a <= b for a, b in zip(sizes, sizes[1:])), (base, tops, sizes)
        for i, b in enumerate(sizes):
            assert b >= base
            if b != base:
                assert b & (b - 1) == 0 if multiple_of is None else b % multiple_of == 0
            starts = i == 0 or sizes[i - 1] < b  # a stage starts here
            if cap == "later" and b != base:  # within every later range
                assert all(b <= t for t in tops[i:] if t >= base), (base, tops, sizes)
            if starts and b != base:  # within the range where it starts
                assert b <= tops[i], (base, tops, sizes)


def test_stages_start_at_the_points_where_the_size_rises_with_scaled_hyperparameters(tmp_path):
    opt = load_measurement(ASSETS / "sgd_b128.json").optimizer
    pts = [point(100, 50), point(1000, 300), point(2000, 300), point(5000, 2000)]
    pts = [dataclasses.replace(p, optimizer=opt) for p in pts]
    s = make_schedule(pts)
    assert [(g.start_step, g.batch_size) for g in s.stages] == [(0, 32), (1000, 256), (5000, 1024)]
    assert [g.start_examples for g in s.stages] == [0, 1000 * 32, 5000 * 32]
    for g in s.stages:  # the function behind `bscrit scale`
        assert g.hyperparameters == scale_hyperparameters(opt, 32, g.batch_size).new
    assert s.stages[1].hyperparameters["lr"] == pytest.approx(0.1 * 256 / 32)
    assert stage_at(s.stages, 1000 * 32 - 1).batch_size == 32
    assert s.stage_at(1000 * 32).batch_size == 256


def test_a_warning_of_every_stage_is_said_once():
    opt = load_measurement(ASSETS / "sgd_b128.json").optimizer
    assert opt is not None
    opt = dataclasses.replace(opt, nesterov=True)
    pts = [point(100, 50), point(1000, 300), point(5000, 2000)]
    s = make_schedule([dataclasses.replace(p, optimizer=opt) for p in pts])
    assert [g.batch_size for g in s.stages] == [32, 256, 1024]
    nesterov = [w for w in s.warnings if "Nesterov" in w]
    assert nesterov == [
        "every stage: Nesterov momentum is kept as is; the linear rule does not cover it"
    ]


def test_a_point_at_step_0_sets_the_first_stage():
    s = make_schedule([point(0, 100), point(10, 1000)])
    assert [(g.start_step, g.batch_size, g.point) for g in s.stages] == [(0, 64, 0), (10, 512, 1)]


def test_points_are_ordered_and_the_earliest_is_the_base():
    s = make_schedule([point(500, 2000, b=64), point(100, 300, b=32)])
    assert [p.step for p in s.points] == [100, 500] and s.base_batch_size == 32
    assert any("different batch sizes" in w for w in s.warnings)
    assert any("no optimizer" in w for w in s.warnings)
    assert s.stages[-1].hyperparameters is None


def test_bad_inputs_are_usage_errors():
    with pytest.raises(UsageError, match="at least one"):
        make_schedule([])
    with pytest.raises(UsageError, match="multiple_of"):
        make_schedule([point(1, 100)], multiple_of=0)
    unknown = dataclasses.replace(point(1, 100), step=None, examples_seen=None, source="x.json")
    with pytest.raises(UsageError, match=r"x\.json: its checkpoint records no training step"):
        make_schedule([unknown])


# ----------------------------------------------------------------------------------------------
# Points from measurements: the numbers of `bscrit predict`
# ----------------------------------------------------------------------------------------------


def test_a_point_is_what_predict_says_about_that_file(tmp_path):
    f = with_step(tmp_path, "sgd_b128.json", 30000)
    m = load_measurement(f)
    pt = point_from_measurement(str(f), m)
    p = predict([(str(f), m)])
    assert pt.b_star == p.base.b_star and pt.b_star_ci95 == p.base.b_star_ci95
    assert pt.top == p.recommended.max and pt.nsr_ci95 == p.base.nsr_ci95
    assert pt.step == 30000 and pt.examples_seen == 30000 * 128  # step × B when not saved
    # one checkpoint: its interval is the batch noise at that draw only
    assert pt.interval_scope == "checkpoint"
    assert "batch noise only" in pt.to_dict()["interval"]
    # τ = 1/(2 · 0.1/(1 − 0.9) · 5e-4) = 1000 steps, ρ = 0.05: not heuristic
    assert not pt.heuristic, pt.heuristic_reasons


def test_the_stage_hyperparameters_equal_bscrit_scale(tmp_path):
    f = with_step(tmp_path, "sgd_b128.json", 30000)
    s = make_schedule(load_points([f]))
    top = s.stages[-1]
    assert top.batch_size == 1024  # the largest power of two ≤ the lower bound 1867 of B*
    assert top.hyperparameters == scale_request(1024, measurement=f).new


def test_early_or_off_equilibrium_points_are_heuristic(tmp_path):
    early = point_from_measurement("a", load_measurement(with_step(tmp_path, "sgd_b128.json", 10)))
    assert early.heuristic and any("relaxation time" in r for r in early.heuristic_reasons)
    off = point_from_measurement("b", load_measurement(with_step(tmp_path, "sgd_b512.json", 9000)))
    assert off.heuristic and any("|ρ| = 0.80 > 0.5" in r for r in off.heuristic_reasons)
    assert heuristic_reasons(5, None, None) == (
        "no equilibrium residual (defined for SGD with weight decay, [LMA21] eq. 11)",
    )


def test_saved_examples_seen_win_over_step_times_b(tmp_path):
    f = with_step(tmp_path, "sgd_b128.json", 100, examples=999)
    assert load_points([f])[0].examples_seen == 999


def test_a_sampled_measurement_has_no_place_on_the_timeline(tmp_path):
    d = json.loads(with_step(tmp_path, "sgd_b128.json", 10).read_text())
    d["extra"]["sampling"] = {"steps": 100}
    f = tmp_path / "sampled.json"
    f.write_text(json.dumps(d))
    with pytest.raises(UsageError, match="sampled.json: measured with --sample-steps"):
        load_points([f])


def test_a_measurement_without_a_step_is_refused_naming_it(tmp_path):
    f = with_step(tmp_path, "sgd_b128.json", None)
    with pytest.raises(UsageError, match=str(f).replace(".", r"\.")):
        make_schedule(load_points([f]))


# ----------------------------------------------------------------------------------------------
# JSON contract, Megatron, YAML
# ----------------------------------------------------------------------------------------------


def test_json_contract_keys(tmp_path):
    s = make_schedule(load_points([with_step(tmp_path, "sgd_b128.json", 3000)]))
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["kind"] == "bscrit.schedule" and d["schema"] == 1
    for st in d["stages"]:
        assert {"start_step", "start_examples", "batch_size", "hyperparameters"} <= set(st)
    for p in d["points"]:
        assert {"step", "b_star", "b_star_ci95", "equilibrium_residual", "heuristic"} <= set(p)
        assert {"interval_scope", "examples_seen"} <= set(p)


def test_thresholds_take_a_suffix_only_when_exact():
    assert _threshold(0) == "0"
    assert _threshold(250 * 10**9) == "250B"
    assert _threshold(3000) == "3K"
    assert _threshold(1500) == "1500"
    assert _threshold(2 * 10**12) == "2T"
    assert _threshold(1_500_000) == "1500K"


def test_megatron_string_in_samples_and_tokens():
    s = make_schedule([point(1000, 700), point(4000, 1600)])
    assert megatron_schedule(s) == "0:32 32K:512 128K:1024"
    # tokens = examples × 2048: 32000 · 2048 = 65 536 000
    assert megatron_schedule(s, seq_length=2048) == "0:32 65536K:512 262144K:1024"


def test_yaml_round_trip(tmp_path):
    f = with_step(tmp_path, "sgd_b128.json", 3000)
    s = make_schedule(load_points([f]))
    d = yaml.safe_load(schedule_yaml_text(s))
    back = stages_from_yaml_dict(d, "s.yaml")
    assert [(b.start_examples, b.batch_size, b.hyperparameters) for b in back] == [
        (g.start_examples, g.batch_size, g.hyperparameters) for g in s.stages
    ]
    with pytest.raises(UsageError, match="s.yaml: not a bscrit schedule"):
        stages_from_yaml_dict({"stages": []}, "s.yaml")
    d["stages"][1]["batch_size"] = 0
    with pytest.raises(UsageError, match=r"s.yaml: key 'stages.1'"):
        stages_from_yaml_dict(d, "s.yaml")


def test_yaml_schema_is_its_own(tmp_path, monkeypatch):
    """The YAML's format number is SCHEDULE_YAML_SCHEMA: bumping the measurement's schema (with
    an upgrade step) or ``schedule --json``'s neither re-versions the YAML nor runs the
    measurement's upgrades on it; a newer YAML schema is refused, a missing one read as 1."""
    from bscrit.artifacts import measurement, schedule_io
    from bscrit.theory import schedule as theory_schedule

    s = make_schedule(load_points([with_step(tmp_path, "sgd_b128.json", 3000)]))
    before = yaml.safe_load(schedule_yaml_text(s))
    assert before["schema"] == schedule_io.SCHEDULE_YAML_SCHEMA == 1

    def measurement_upgrade(d: dict) -> dict:
        raise AssertionError("the measurement's upgrade ran on a schedule YAML")

    monkeypatch.setattr(measurement, "SCHEMA", measurement.SCHEMA + 1)
    monkeypatch.setattr(measurement, "_UPGRADES", {1: measurement_upgrade})
    monkeypatch.setattr(theory_schedule, "SCHEMA", theory_schedule.SCHEMA + 1)
    d = yaml.safe_load(schedule_yaml_text(s))
    assert d == before  # same text, same schema number
    assert [st.batch_size for st in stages_from_yaml_dict(d, "s.yaml")] == [
        st.batch_size for st in s.stages
    ]
    assert stages_from_yaml_dict({k: v for k, v in d.items() if k != "schema"}, "s.yaml")
    newer = {**d, "schema": schedule_io.SCHEDULE_YAML_SCHEMA + 1}
    with pytest.raises(UsageError, match=r"s.yaml: key 'schema' is 2, .*upgrade bscrit"):
        stages_from_yaml_dict(newer, "s.yaml")

    # Its own upgrades run instead (here a pretend schema 2 that keeps the stages as they are).
    calls: list[int] = []

    def yaml_upgrade(old: dict) -> dict:
        calls.append(old["schema"])
        return dict(old)

    monkeypatch.setattr(schedule_io, "SCHEDULE_YAML_SCHEMA", 2)
    monkeypatch.setattr(schedule_io, "_YAML_UPGRADES", {1: yaml_upgrade})
    assert stages_from_yaml_dict(d, "s.yaml")[0].batch_size == s.stages[0].batch_size
    assert calls == [1] and d["schema"] == 1  # the caller's dict is left alone
    assert yaml.safe_load(schedule_yaml_text(s))["schema"] == 2


# ----------------------------------------------------------------------------------------------
# series.jsonl
# ----------------------------------------------------------------------------------------------


def series_line(step: int, b_star: float, lo: float | None, b: int = 16) -> str:
    return json.dumps({
        "step": step, "examples_seen": step * b, "G": 1.0, "N": 2.0, "nsr": 2.0,
        "b_star": b_star, "b_star_ci95": [lo, None], "G_ci95": [0.5, 1.5], "N_ci95": [1, 3],
        "nsr_ci95": [1.0, None], "batch_size": b, "seconds": 0.1,
    })  # fmt: skip


def test_series_lines_are_points(tmp_path):
    f = tmp_path / "series.jsonl"
    f.write_text(series_line(10, 80.0, 40.0) + "\n\n" + series_line(100, 900.0, 300.0) + "\n")
    pts = read_series(f)
    assert [(p.step, p.examples_seen, p.top) for p in pts] == [(10, 160, 40.0), (100, 1600, 300.0)]
    s = make_schedule(pts)
    assert [(g.start_step, g.batch_size) for g in s.stages] == [(0, 16), (10, 32), (100, 256)]


def test_a_series_line_reads_its_measurement_beside_it(tmp_path):
    src = json.loads((ASSETS / "sgd_b128.json").read_text())
    (tmp_path / "step-0003000.json").write_text(json.dumps(src))
    f = tmp_path / "series.jsonl"
    f.write_text(series_line(3000, 1.0, 1.0, b=128) + "\n")
    (pt,) = read_series(f)
    p = predict([("m", load_measurement(ASSETS / "sgd_b128.json"))])
    assert pt.b_star == p.base.b_star and pt.step == 3000 and pt.optimizer is not None


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", r"series.jsonl:1: not valid JSON"),
        ('{"step": -1}', r"series.jsonl:1: key 'step'"),
        ('{"step": 5}', r"series.jsonl:1: missing key\(s\) b_star, b_star_ci95, batch_size"),
        ('[1, 2]', r"series.jsonl:1: expected a JSON object"),
    ],
)  # fmt: skip
def test_bad_series_lines_name_the_file_and_line(tmp_path, line, match):
    f = tmp_path / "series.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(ArtifactError, match=match):
        read_series(f)


def test_a_series_mixed_with_measurements_is_refused(tmp_path):
    with pytest.raises(UsageError, match="one series.jsonl alone"):
        load_points([tmp_path / "series.jsonl", ASSETS / "sgd_b128.json"])


def test_stage_at_before_and_after():
    st = [Stage(0, 0, None, 8, None, None), Stage(10, 100, None, 16, 0, None)]
    assert stage_at(st, 0).batch_size == 8 and stage_at(st, 99).batch_size == 8
    assert stage_at(st, 100).batch_size == 16
