"""A real ``transformers.Trainer`` run, as users write it, through the CLI (issue 27): a
tiny GPT-2, AdamW with the Trainer's no-decay group (biases, LayerNorm), a cosine schedule with
warm-up and gradient accumulation 2, saved as its own ``checkpoint-N/`` folders (step 6: LR 87% of
the peak; step 12: 22%). ``measure``, ``predict``, ``check``, ``schedule`` and a small ``confirm``
show and use what the run did: the peak LR as the base LR, the LR the Trainer held at the
checkpoint, each param group's weight decay, the remaining cosine; and the LR-decayed point is
flagged and left out."""

from __future__ import annotations

import importlib.util
import json
import math
import textwrap
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("safetensors")

import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from bscrit.cli import app  # noqa: E402
from bscrit.optim import lr_schedule  # noqa: E402

pytestmark = pytest.mark.slow
runner = CliRunner()

PEAK, WD, WARMUP, TOTAL, SAVE = 1e-3, 0.01, 3, 16, 6
PER_DEVICE, ACCUMULATION = 4, 2
B = PER_DEVICE * ACCUMULATION
MID, LATE = 6, 12  # checkpoint-6: cosine at 87% of the peak; checkpoint-12: 22%
CONFIG = dict(
    vocab_size=64, n_positions=8, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
)

#: The data factory the spec names; the Trainer trains on the same examples (padded sequences,
#: labels −100 on padding, as tests/torch/test_hf_callback.py's ``examples()``).
DATA = textwrap.dedent("""
    import torch


    def make_examples(n: int = 64, vocab: int = 64) -> list[dict]:
        g = torch.Generator().manual_seed(1)
        out = []
        for i in range(n):
            ids = torch.randint(0, vocab, (8,), generator=g)
            mask = (torch.arange(8) < 4 + i % 5).long()
            out.append({"input_ids": ids, "attention_mask": mask,
                        "labels": ids.masked_fill(mask == 0, -100)})
        return out
    """)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """The Trainer run (folder, the LR it logged per step, the lag of that log) and its spec."""
    folder = tmp_path_factory.mktemp("hf-trainer")
    (folder / "data.py").write_text(DATA)
    mod_spec = importlib.util.spec_from_file_location("hfe2e_data", folder / "data.py")
    data = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(data)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG))
    args = transformers.TrainingArguments(
        output_dir=str(folder / "run"), per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=ACCUMULATION, learning_rate=PEAK, weight_decay=WD,
        lr_scheduler_type="cosine", warmup_steps=WARMUP, max_steps=TOTAL, save_steps=SAVE,
        logging_steps=1, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data.make_examples())
    trainer.train()
    history = json.loads(
        (folder / "run" / f"checkpoint-{TOTAL}" / "trainer_state.json").read_text()
    )
    logged = {e["step"]: e["learning_rate"] for e in history["log_history"] if "learning_rate" in e}
    # the Trainer logs at step t the LR that step used: λ(t − 1) (older versions: λ(t)); the LR it
    # holds at checkpoint-N (the next step's) is the one logged at N + lag
    held = trainer.lr_scheduler.lr_lambdas[0]
    lag = 1 if math.isclose(logged[MID + 1], PEAK * held(MID)) else 0
    (folder / "spec.yaml").write_text(textwrap.dedent(f"""
        model: {{hf: run/checkpoint-{TOTAL}}}   # the Trainer's folder: config.json
        checkpoint: {{path: run/checkpoint-{MID}}}
        data: {{factory: data.py:make_examples}}
        loss: model
        batch_size: {B}           # per-device {PER_DEVICE} × accumulation {ACCUMULATION}
        micro_batch_size: {PER_DEVICE}
        measure: {{seed: 0, device: cpu}}
        """))  # fmt: skip
    decay = set(trainer.get_decay_parameter_names(model))  # the Trainer's own no-decay rule
    names = [n for n, _ in model.named_parameters()]
    return {"folder": folder, "spec": folder / "spec.yaml", "logged": logged, "lag": lag,
            "tensors": len(names), "no_decay": sum(n not in decay for n in names)}  # fmt: skip


def held_at(run: dict, step: int) -> float:
    return run["logged"][step + run["lag"]]


def invoke(*args: str, codes: tuple[int, ...] = (0,)) -> tuple[int, str]:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code in codes, (args, r.exit_code, r.output)
    return r.exit_code, r.stdout


@pytest.fixture(scope="module")
def measured(run) -> dict[int, Path]:
    out = {}
    for step in (MID, LATE):
        path = run["folder"] / f"m{step}.json"
        invoke("measure", run["spec"], "-c", run["folder"] / "run" / f"checkpoint-{step}",
               "--batches", "8", "--groups", "4", "--device", "cpu", "--quiet", "--json",
               "--out", path)  # fmt: skip
        out[step] = path
    return out


def test_the_lrs_the_trainer_held_are_where_the_test_expects(run):
    assert held_at(run, MID) > 0.5 * PEAK > held_at(run, LATE) > 0


@pytest.mark.parametrize("step", [MID, LATE])
def test_measure_shows_the_peak_the_lr_held_and_each_group(run, measured, step):
    m = json.loads(measured[step].read_text())
    assert (m["batch_size"], m["micro_batch_size"]) == (B, PER_DEVICE)
    assert m["checkpoints"][0]["step"] == step
    opt = m["optimizer"]
    assert opt["name"] == "adamw" and opt["source"] == "checkpoint"
    assert opt["lr"] == pytest.approx(PEAK)  # the schedule's peak, not the LR at the checkpoint
    assert opt["lr_current"] == pytest.approx(held_at(run, step))
    assert opt["betas"] == pytest.approx([0.9, 0.999])
    groups = sorted(opt["groups"], key=lambda g: g["values"]["weight_decay"])
    assert [g["values"]["weight_decay"] for g in groups] == [0.0, WD]
    assert groups[0]["tensors"] == run["no_decay"]
    assert groups[0]["tensors"] > 0 and sum(g["tensors"] for g in groups) == run["tensors"]
    for g in groups:
        assert g["values"]["lr"] == pytest.approx(PEAK)
        assert g["lr_current"] == pytest.approx(held_at(run, step))
    decayed = [w for w in m["warnings"] if "schedule's base LR" in w]
    if step == LATE:
        assert len(decayed) == 1 and f"{held_at(run, step):.3g}" in decayed[0], m["warnings"]
    else:
        assert not decayed, m["warnings"]


def test_predict_scales_the_peak_and_keeps_the_no_decay_group(measured):
    for rule, wd_factor in (("full", None), ("lr-only", 1.0)):
        _, out = invoke("predict", measured[MID], "--adam-rule", rule, "--json")
        s = json.loads(out)["scaled"]
        kappa = s["kappa"]
        assert kappa > 1 and s["old_hyperparameters"]["lr"] == pytest.approx(PEAK)
        assert s["hyperparameters"]["lr"] == pytest.approx(math.sqrt(kappa) * PEAK)
        f = math.sqrt(kappa) if wd_factor is None else wd_factor  # full: λ√κ; lr-only: λ kept
        wds = sorted(g["hyperparameters"]["weight_decay"] for g in s["groups"])
        assert wds == pytest.approx([0.0, f * WD])
        assert all(g["old_hyperparameters"]["lr"] == pytest.approx(PEAK) for g in s["groups"])


def test_check_exit_codes(measured):
    invoke("check", measured[MID], "-b", B)  # B' = B: in range, exit 0
    invoke("check", measured[MID], "-b", 2 * B, codes=(0, 5, 6))
    invoke("check", measured[MID], "-b", 100_000, codes=(1,))  # above the dataset size


def test_schedule_leaves_the_decayed_point_out(measured):
    _, out = invoke("schedule", measured[MID], measured[LATE], "--json")
    s = json.loads(out)
    late = [p for p in s["points"] if p["step"] == LATE]
    assert len(late) == 1 and late[0].get("lr_decaying") is True
    assert not any(p.get("lr_decaying") for p in s["points"] if p["step"] == MID)
    late_index = s["points"].index(late[0])
    assert all(st["point"] != late_index for st in s["stages"])
    assert all(st["start_step"] < LATE for st in s["stages"])
    assert any("left out" in w and measured[LATE].name in w for w in s["warnings"]), s["warnings"]
    assert s["stages"][0]["hyperparameters"]["lr"] == pytest.approx(PEAK)


def test_confirm_continues_the_cosine_with_each_group(run):
    code, out = invoke(
        "confirm", run["spec"], "--target-batch-size", 2 * B, "--seeds", "1", "--examples", "64",
        "--points", "2", "--eval-batches", "2", "--device", "cpu", "--yes", "--json", "--quiet",
        codes=(0, 1, 5),
    )  # fmt: skip
    c = json.loads(out)
    assert c["start_step"] == MID and c["kappa"] == 2
    base = c["schedule"]["base"]
    assert (base["decay"], base["warmup_steps"], base["total_steps"]) == ("cosine", WARMUP, TOTAL)
    for step, lr in run["logged"].items():  # the schedule confirm follows is the run's
        assert PEAK * lr_schedule.factor_at(base, step - run["lag"]) == pytest.approx(
            lr, rel=1e-6, abs=1e-12
        )
    notes = " ".join(c["notes"])
    assert "read from the checkpoint: cosine" in notes, notes
    assert "each of the base run's 2 param groups with its own values" in notes, notes
    hp = c["hyperparameters"]
    assert hp["base"]["lr"] == pytest.approx(PEAK)
    assert hp["base"]["lr_current"] == pytest.approx(held_at(run, MID))
    assert hp["target"]["lr"] == pytest.approx(math.sqrt(2) * PEAK)
    assert hp["target"]["lr_current"] == pytest.approx(math.sqrt(2) * held_at(run, MID))
    wds = sorted(g["values"]["weight_decay"] for g in hp["target"]["groups"])
    assert wds == pytest.approx([0.0, math.sqrt(2) * WD])  # full rule: λ√κ; no-decay stays 0
    assert all(math.isfinite(v) for b in c["branches"] for v in b["values"]["train_loss"])
