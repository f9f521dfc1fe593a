"""Hugging Face models and checkpoint forms, with real transformers / safetensors objects (tiny
random-init configs, nothing downloaded): ``model: {hf: folder}``, safetensors files, folders,
sharded indexes, HF Trainer ``checkpoint-N/`` folders, tied weights, the step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from bscrit.errors import CheckpointError, SpecError  # noqa: E402
from bscrit.load import checkpoints  # noqa: E402
from bscrit.load.checkpoints import load_checkpoint, load_model  # noqa: E402
from bscrit.load.factories import build_model  # noqa: E402
from bscrit.specfile.document import parse_spec  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TINY = str(ASSETS / "tiny.py")
CONFIG = dict(vocab_size=256, n_positions=16, n_embd=16, n_layer=2, n_head=2)


def gpt2(seed: int = 0, **over):
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**CONFIG, **over}))


def hf_spec(base: Path, hf: str = "gpt2", **model):
    raw = {
        "model": {"hf": hf, **model},
        "data": {"factory": f"{TINY}:make_dataset"},
        "loss": "cross_entropy",
        "batch_size": 8,
    }
    return parse_spec(raw, "spec.yaml", base)


def assert_same_weights(model: nn.Module, sd: dict) -> None:
    got = model.state_dict()
    assert got.keys() == sd.keys()
    assert all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.fixture
def trained(tmp_path):
    """A tiny GPT-2 (seed 1) saved with save_pretrained into tmp_path/gpt2."""
    model = gpt2(seed=1)
    model.save_pretrained(tmp_path / "gpt2")
    return model


# ---------------------------------------------------------------------------------------------
# model: {hf: folder}
# ---------------------------------------------------------------------------------------------


def test_save_pretrained_folder_is_model_and_checkpoint(tmp_path, trained):
    # the folder holds no lm_head.weight: it is tied to transformer.wte.weight
    saved = safetensors_torch.load_file(str(tmp_path / "gpt2" / "model.safetensors"))
    assert "lm_head.weight" not in saved and "transformer.wte.weight" in saved
    spec = hf_spec(tmp_path)
    assert spec.checkpoint.paths == (tmp_path / "gpt2",)
    model, ckpt = load_model(spec)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert_same_weights(model, trained.state_dict())
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied after loading
    assert ckpt.path == tmp_path / "gpt2" and ckpt.optimizer is None and ckpt.step is None


@pytest.mark.parametrize("cls", ["AutoModelForCausalLM", "GPT2LMHeadModel"])
def test_hf_class_builds_that_class(tmp_path, trained, cls):
    model, _ = load_model(hf_spec(tmp_path, hf_class=cls))
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert_same_weights(model, trained.state_dict())


@pytest.mark.parametrize("cls", [None, "AutoModelForCausalLM"])
def test_built_in_float32_whatever_the_config_says(tmp_path, cls):
    gpt2(dtype="bfloat16").to(torch.bfloat16).save_pretrained(tmp_path / "gpt2")
    assert 'dtype": "bfloat16"' in (tmp_path / "gpt2" / "config.json").read_text()
    model, ckpt = load_model(hf_spec(tmp_path, **({"hf_class": cls} if cls else {})))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(v.dtype == torch.bfloat16 for v in ckpt.state_dict.values())
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v.float()) for k, v in ckpt.state_dict.items())  # exact upcast


def test_kwargs_override_the_config(tmp_path, trained):
    model = build_model(hf_spec(tmp_path, kwargs={"resid_pdrop": 0.0, "embd_pdrop": 0.0}))
    assert model.config.resid_pdrop == 0.0 and model.config.n_embd == CONFIG["n_embd"]


def test_class_problems_name_the_key(tmp_path, trained):
    with pytest.raises(SpecError, match=r"model.hf_class: transformers has no model class "
                       r"'AutoModelForCasualLM'; did you mean 'AutoModelForCausalLM'"):  # fmt: skip
        build_model(hf_spec(tmp_path, hf_class="AutoModelForCasualLM"))
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpecError, match="names no architectures; set model.hf_class"):
        build_model(hf_spec(tmp_path))
    assert type(build_model(hf_spec(tmp_path, hf_class="AutoModel"))).__name__ == "GPT2Model"
    (tmp_path / "gpt2" / "config.json").write_text("{not json")
    with pytest.raises(SpecError, match=r"model.hf: cannot read .*config.json"):
        build_model(hf_spec(tmp_path))


# ---------------------------------------------------------------------------------------------
# Checkpoint forms: all load to the same weights
# ---------------------------------------------------------------------------------------------


def _forms(tmp_path: Path, model: nn.Module) -> dict[str, Path]:
    """The same weights as every form bscrit reads."""
    sd = model.state_dict()
    forms = {"folder": tmp_path / "gpt2", "file": tmp_path / "gpt2" / "model.safetensors"}
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    forms["sharded"] = tmp_path / "sharded"
    assert len(list(forms["sharded"].glob("model-*.safetensors"))) > 1
    forms["index"] = forms["sharded"] / "model.safetensors.index.json"
    # pytorch_model.bin (transformers < 5 wrote it): a torch.save'd state_dict
    (tmp_path / "bin").mkdir()
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    forms["bin"] = tmp_path / "bin"
    # a sharded .bin, as transformers < 5 wrote it
    (tmp_path / "sharded_bin").mkdir()
    keys = list(sd)
    halves = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}  # fmt: skip
    for name, ks in halves.items():
        torch.save({k: sd[k] for k in ks}, tmp_path / "sharded_bin" / name)
    index = {"metadata": {}, "weight_map": {k: n for n, ks in halves.items() for k in ks}}
    (tmp_path / "sharded_bin" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    forms["sharded_bin"] = tmp_path / "sharded_bin"
    torch.save({"model": sd, "step": 7}, tmp_path / "dict.pt")
    forms["dict"] = tmp_path / "dict.pt"
    return forms


def test_every_form_loads_bitwise_equal_weights(tmp_path, trained):
    spec = hf_spec(tmp_path)
    forms = _forms(tmp_path, trained)
    for name, path in forms.items():
        model, ckpt = load_model(spec, path)
        assert_same_weights(model, trained.state_dict())
        assert ckpt.step == (7 if name == "dict" else None), name


def test_folder_problems_are_clear(tmp_path, trained):
    (tmp_path / "out" / "checkpoint-500").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-1000").mkdir()
    (tmp_path / "out" / "runs").mkdir()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "out")
    msg = info.value.message
    assert "no model weights in this folder (expected model.safetensors" in msg
    assert "it holds checkpoint-1000, checkpoint-500, runs" in msg
    assert f"give one checkpoint, e.g. {tmp_path / 'out' / 'checkpoint-1000'}" in msg
    assert "is a folder" not in msg
    # a sharded index whose shard is missing; one that is not an index
    sharded = _forms(tmp_path, trained)["sharded"]
    next(sharded.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"names 1 shard file\(s\) that are not in"):
        load_checkpoint(sharded)
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    with pytest.raises(CheckpointError, match='cannot read the shard index .*"weight_map"'):
        load_checkpoint(sharded)
    # checkpoint.key does not apply to a safetensors file
    with pytest.raises(CheckpointError, match=r"checkpoint.key \('model'\) applies to torch.save"):
        load_checkpoint(tmp_path / "gpt2" / "model.safetensors", key="model")


def test_damaged_safetensors_is_said(tmp_path, trained):
    data = (tmp_path / "gpt2" / "model.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="a damaged safetensors file") as info:
        load_checkpoint(tmp_path / "t.safetensors")
    assert "--unsafe-load" not in info.value.for_cli()


# ---------------------------------------------------------------------------------------------
# HF Trainer checkpoint-N/ folders: weights, optimizer state, step, the optimizer's name
# ---------------------------------------------------------------------------------------------


def trainer_folder(tmp_path: Path, model: nn.Module, step: int = 40) -> tuple[Path, dict]:
    """The layout transformers.Trainer writes (built by hand: Trainer needs accelerate)."""
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    x = torch.randint(0, 256, (2, 8))
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    sched.step()
    folder = tmp_path / "trainer" / f"checkpoint-{step}"
    model.save_pretrained(folder)
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(sched.state_dict(), folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 0.5}))
    return folder, opt.state_dict()


def same_optimizer_state(a, b) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(
        torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i]
    )


def test_trainer_folder_gives_weights_optimizer_state_and_step(tmp_path, trained):
    folder, opt_state = trainer_folder(tmp_path, trained)
    model, ckpt = load_model(hf_spec(tmp_path), folder)
    assert_same_weights(model, trained.state_dict())
    assert ckpt.step == 40
    assert same_optimizer_state(ckpt.optimizer_state, opt_state)
    assert ckpt.optimizer.name == "adamw" and ckpt.optimizer.lr == 3e-4
    assert ckpt.optimizer.source == "checkpoint"


def test_trainer_state_without_global_step_is_an_error(tmp_path, trained):
    folder, _ = trainer_folder(tmp_path, trained)
    (folder / "trainer_state.json").write_text('{"epoch": 1.0}')
    with pytest.raises(CheckpointError, match=r"trainer_state.json: .*integer \"global_step\""):
        load_checkpoint(folder)
    (folder / "trainer_state.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="trainer_state.json: not valid JSON"):
        load_checkpoint(folder)


def test_optimizer_pt_that_is_not_an_optimizer_state(tmp_path, trained):
    folder, _ = trainer_folder(tmp_path, trained)
    torch.save({"step": 3}, folder / "optimizer.pt")
    with pytest.raises(CheckpointError, match=r"optimizer.pt holds no optimizer state_dict"):
        load_checkpoint(folder)


def _training_args(path: Path, optim_name: str) -> None:
    """A pickled TrainingArguments, as Trainer writes it (built without __init__, which needs
    accelerate; unpickling never calls it)."""
    from transformers.training_args import OptimizerNames

    args = transformers.TrainingArguments.__new__(transformers.TrainingArguments)
    args.__dict__.update(output_dir="out", optim=OptimizerNames(optim_name))
    torch.save(args, path)


def test_training_args_are_read_only_with_unsafe_load(tmp_path, trained, monkeypatch):
    folder, _ = trainer_folder(tmp_path, trained)
    _training_args(folder / "training_args.bin", "adamw_torch")
    # Without --unsafe-load the pickle is never opened
    seen = []
    real = checkpoints.trainer_optimizer_name
    monkeypatch.setattr(checkpoints, "trainer_optimizer_name", lambda p: seen.append(p) or real(p))
    assert load_checkpoint(folder).optimizer.name == "adamw" and seen == []
    # With it, its optim reaches the optimizer registry as a context
    contexts = []
    real_read = checkpoints.saved.read_checkpoint

    def spy(obj, *ctx, **kw):
        contexts.append((obj, *ctx))
        return real_read(obj, *ctx, **kw)

    monkeypatch.setattr(checkpoints.saved, "read_checkpoint", spy)
    ckpt = load_checkpoint(folder, unsafe=True)
    assert seen == [folder / "training_args.bin"] and ckpt.optimizer.name == "adamw"
    assert any(c.get("optim") == "adamw_torch" for ctx in contexts for c in ctx)


def test_training_args_without_transformers(tmp_path, trained, monkeypatch):
    folder, _ = trainer_folder(tmp_path, trained)
    _training_args(folder / "training_args.bin", "adamw_torch")
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    with pytest.raises(CheckpointError, match=r"pip install 'bscrit\[hf\]'"):
        load_checkpoint(folder, unsafe=True)


# ---------------------------------------------------------------------------------------------
# Tied weights in general (not by name)
# ---------------------------------------------------------------------------------------------


class TiedNet(nn.Module):
    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.out = nn.Linear(4, 10, bias=False)
        if tie:
            self.out.weight = self.embed.weight


def _spec_for(tmp_path: Path, factory: str):
    return parse_spec(
        {
            "model": {"factory": f"{Path(__file__).resolve()}:{factory}"},
            "data": {"factory": f"{TINY}:make_dataset"},
            "loss": "cross_entropy",
            "batch_size": 8,
        },
        "spec.yaml",
        tmp_path,
    )


def make_tied() -> nn.Module:
    return TiedNet(tie=True)


def make_untied() -> nn.Module:
    return TiedNet(tie=False)


@pytest.mark.parametrize("dropped", ["out.weight", "embed.weight"])
def test_a_missing_key_tied_to_a_present_one_is_filled(tmp_path, dropped):
    torch.manual_seed(3)
    src = TiedNet()
    sd = {k: v for k, v in src.state_dict().items() if k != dropped}
    torch.save(sd, tmp_path / "c.pt")
    model, ckpt = load_model(_spec_for(tmp_path, "make_tied"), tmp_path / "c.pt")
    assert_same_weights(model, src.state_dict())
    assert set(ckpt.state_dict) == {"embed.weight", "body.weight", "body.bias", "out.weight"}
    # an untied model missing the same key is still refused
    with pytest.raises(CheckpointError, match=rf"1 missing key\(s\): {dropped}"):
        load_model(_spec_for(tmp_path, "make_untied"), tmp_path / "c.pt")


def test_a_base_model_checkpoint_with_old_buffers_loads_into_its_head_model(tmp_path):
    """As the hub's gpt2 is saved: a GPT2Model's keys (no ``transformer.`` prefix) plus the
    ``attn.bias`` buffers older transformers saved; transformers' own rules, read from the class."""
    torch.manual_seed(2)
    base = transformers.GPT2Model(transformers.GPT2Config(**CONFIG))
    base.save_pretrained(tmp_path / "gpt2")
    sd = dict(base.state_dict())
    assert not any(k.startswith("transformer.") for k in sd)
    sd.update({f"h.{i}.attn.bias": torch.ones(1, 1, 16, 16) for i in range(CONFIG["n_layer"])})
    safetensors_torch.save_file(sd, str(tmp_path / "old.safetensors"))
    spec = hf_spec(tmp_path, hf_class="GPT2LMHeadModel")
    model, _ = load_model(spec, tmp_path / "old.safetensors")
    got = model.state_dict()
    assert all(torch.equal(got[f"transformer.{k}"], v) for k, v in base.state_dict().items())
    assert torch.equal(got["lm_head.weight"], base.state_dict()["wte.weight"])  # tied
    # a key the model lacks that no rule of its class covers is still refused
    sd["h.0.extra"] = torch.zeros(1)
    safetensors_torch.save_file(sd, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_model(spec, tmp_path / "extra.safetensors")
