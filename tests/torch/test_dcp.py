"""``torch.distributed.checkpoint`` folders (OLMo-core, torchtitan, plain ``dcp.save``) and
sharded Hugging Face folders measure as the equivalent ``torch.save`` checkpoint does; the
by-name optimizer state gives the preconditioned reading; bad folders are clear errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bscrit.cli import app
from bscrit.errors import CheckpointError
from bscrit.load import dcp as bdcp
from bscrit.load.checkpoints import load_checkpoint
from bscrit.load.selection import select
from bscrit.optim.state import indexed

dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.state_dict import (  # noqa: E402
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

#: A tiny transformer-like LM with tied embeddings (the model factory of the specs).
TIED_LM = """
import torch
import torch.nn.functional as F
from torch import nn


class TiedLM(nn.Module):
    def __init__(self, vocab=256, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.emb(input_ids)
        h = h + torch.tanh(self.mlp(self.norm(h)))
        logits = self.head(h)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def make_model():
    return TiedLM()
"""

SPEC = """
model: {factory: tiedlm.py:make_model}
checkpoint: CKPT
data: {factory: lm.py:make_tokens, kwargs: {n: 48}}
loss: model
batch_size: 8
measure: {batches: 12, groups: 3, seed: 0, device: cpu}
"""


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A model trained 3 AdamW steps (decay and no-decay groups), the optimizer, the folder."""
    shutil.copy(ASSETS / "lm.py", tmp_path / "lm.py")
    (tmp_path / "tiedlm.py").write_text(TIED_LM)
    monkeypatch.syspath_prepend(str(tmp_path))
    import lm
    import tiedlm

    torch.manual_seed(0)
    model = tiedlm.make_model()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    rest = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}], lr=1e-2)  # fmt: skip
    ds = lm.make_tokens(24)
    for i in range(3):
        batch = [ds[j] for j in range(i * 8, i * 8 + 8)]
        b = {k: torch.stack([e[k] for e in batch]) for k in batch[0]}
        opt.zero_grad()
        model(**b)["loss"].backward()
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3},
               tmp_path / "ref.pt")  # fmt: skip
    return model, opt, tmp_path


def _measure(folder: Path, ckpt: Path, *extra: str) -> tuple[int, dict | None, str]:
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.replace("CKPT", str(ckpt)))
    out = folder / f"m-{ckpt.name}.json"
    r = CliRunner().invoke(app, ["measure", str(spec), "-q", "--out", str(out), *extra])
    data = json.loads(out.read_text()) if r.exit_code == 0 and out.exists() else None
    return r.exit_code, data, r.output


def _save(model, opt, path: Path, layout: str, step: int = 3) -> None:
    """``dcp.save`` in one process, in each trainer's layout."""
    msd = get_model_state_dict(model)
    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    if layout == "olmo-core":  # stepN/model_and_optim/, optimizer flattened
        osd = get_optimizer_state_dict(model, opt, options=flat)
        sd, path = {"model": msd, "optim": osd}, path / "model_and_optim"
    elif layout == "torchtitan":  # model keys at the top, optimizer flattened beside them
        osd = get_optimizer_state_dict(model, opt, options=flat)
        sd = {**msd, "optimizer": osd, "train_state": {"step": torch.tensor(step)},
              "lr_scheduler": {"last_epoch": 3}, "dataloader": {"world_size": 1}}  # fmt: skip
    else:  # plain, optimizer nested and keyed by name
        sd = {"model": msd, "optimizer": get_optimizer_state_dict(model, opt), "step": 3}
    dcp.save(sd, checkpoint_id=str(path))


def _stats(d: dict) -> dict:
    return d["stats"]


@pytest.mark.parametrize("layout", ["olmo-core", "torchtitan", "plain"])
def test_dcp_layouts_measure_as_the_torch_save_checkpoint(run, layout: str) -> None:
    model, opt, tmp = run
    folder = tmp / "step-3"
    _save(model, opt, folder, layout)
    ckpt = load_checkpoint(folder)
    assert ckpt.step == 3 and ckpt.optimizer is not None and ckpt.optimizer.name == "adamw"
    assert [g.values["weight_decay"] for g in ckpt.optimizer.groups] == [0.1, 0.0]
    ref_sd = model.state_dict()
    assert all(torch.equal(ckpt.state_dict[k], ref_sd[k]) for k in ckpt.state_dict)
    code, a, out = _measure(tmp, tmp / "ref.pt")
    assert code == 0, out
    code, b, out = _measure(tmp, folder)
    assert code == 0, out
    assert b["checkpoints"][0]["step"] == 3
    assert b["extra"]["parameters"]["selected_by"].endswith("matching the optimizer state by name")
    # the same tensors, the same batches: bitwise the same numbers, preconditioned ones too
    assert "preconditioned" in _stats(a), list(_stats(a))
    for reading in ("all", "preconditioned"):
        for key in ("G", "N"):
            assert _stats(b)[reading][key] == _stats(a)[reading][key], (reading, key)


def test_step_folders_are_a_selection_for_last_k(run) -> None:
    model, opt, tmp = run
    runs = tmp / "checkpoint"
    for name, step in (("step-10", 500), ("step-200", 200), ("step-30", 30)):
        _save(model, opt, runs / name, "torchtitan", step=step)
    sel = select([runs], last=2)
    assert [p.name for p in sel.paths] == ["step-200", "step-10"]  # the saved step wins
    assert sel.steps == (200, 500)
    (runs / "step-5").mkdir()
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(runs / "step-5"))
    assert bdcp.saved_step(runs / "step-5") == 5  # no step saved: the name's


def test_keys_that_do_not_fit_the_model_exit_2_naming_folder_and_key(run) -> None:
    model, _, tmp = run
    folder = tmp / "bad"
    sd = get_model_state_dict(model)
    sd["extra.weight"] = torch.zeros(3)
    dcp.save({"model": sd}, checkpoint_id=str(folder))
    code, _, out = _measure(tmp, folder)
    assert code == 2
    assert "bad" in out and "extra.weight" in out


def test_no_model_key_is_a_clear_error(run) -> None:
    _, _, tmp = run
    dcp.save({"optimizer": {"x": torch.zeros(2)}, "lr_scheduler": {"a": 1}},
             checkpoint_id=str(tmp / "noopt"))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"noopt: no model tensors .*top-level keys"):
        load_checkpoint(tmp / "noopt")


class _Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_metadata_and_values_are_read_without_running_pickles(run, capsys) -> None:
    model, _, tmp = run
    folder = tmp / "evil"
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(folder))
    (folder / ".metadata").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(CheckpointError, match=r"not torch.distributed.checkpoint metadata"):
        load_checkpoint(folder)
    assert "pwned" not in capsys.readouterr().out
    # a non-tensor value that only a full unpickle reads: refused by weights-only loading
    folder = tmp / "evil2"
    dcp.save({"model": get_model_state_dict(model), "step": _Boom()}, checkpoint_id=str(folder))
    with pytest.raises(CheckpointError, match=r"key 'step' .*weights-only"):
        load_checkpoint(folder)
    assert "pwned" not in capsys.readouterr().out


def test_by_name_optimizer_state_in_a_torch_save_file(run) -> None:
    model, opt, tmp = run
    by_name = get_optimizer_state_dict(model, opt)
    assert isinstance(by_name["param_groups"][0]["params"][0], str)
    state = indexed(by_name)
    ref = opt.state_dict()
    assert [g["params"] for g in state["param_groups"]] == [
        g["params"] for g in ref["param_groups"]
    ]
    for i, st in ref["state"].items():
        assert torch.equal(state["state"][i]["exp_avg_sq"], st["exp_avg_sq"])
    torch.save({"model": model.state_dict(), "optimizer": by_name}, tmp / "named.pt")
    code, a, out = _measure(tmp, tmp / "ref.pt")
    assert code == 0, out
    code, b, out = _measure(tmp, tmp / "named.pt")
    assert code == 0, out
    assert _stats(b)["preconditioned"]["N"] == pytest.approx(_stats(a)["preconditioned"]["N"])
    assert b["extra"]["parameters"]["selected_by"].endswith("by name")


def test_sharded_hf_folder_measures_as_the_single_file(tmp_path: Path, monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    shutil.copy(ASSETS / "lm.py", tmp_path / "lm.py")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=256, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(tmp_path / "whole")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    spec = tmp_path / "hf.yaml"
    out = {}
    for name in ("whole", "sharded"):
        spec.write_text(SPEC.replace("factory: tiedlm.py:make_model", f"hf: {tmp_path / 'whole'}")
                        .replace("CKPT", str(tmp_path / name)))  # fmt: skip
        r = CliRunner().invoke(app, ["measure", str(spec), "-q", "--json"])
        assert r.exit_code == 0, r.output
        out[name] = json.loads(r.stdout)["stats"]["all"]
    assert out["sharded"]["G"] == out["whole"]["G"] and out["sharded"]["N"] == out["whole"]["N"]


FSDP_SAVE = """
import sys, torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
import tiedlm
dist.init_process_group("gloo")
torch.manual_seed(0)
model = tiedlm.make_model()
fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
ids = torch.randint(0, 256, (4, 6), generator=torch.Generator().manual_seed(dist.get_rank()))
model(ids, labels=ids)["loss"].backward()
opt.step()
msd, osd = get_state_dict(model, opt)  # sharded: DTensors
assert type(msd["mlp.weight"]).__name__ == "DTensor"
dcp.save({"model": msd, "optim": osd}, checkpoint_id="step-1")
full = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
if dist.get_rank() == 0:
    torch.save({"model": full[0], "optimizer": full[1]}, "full.pt")
dist.destroy_process_group()
"""


def test_a_checkpoint_saved_by_fsdp2_on_two_ranks_loads_in_one_process(tmp_path: Path) -> None:
    """``fully_shard`` on 2 gloo CPU ranks saves DTensor shards (``__0_0.distcp``,
    ``__1_0.distcp``); one process reads them whole, equal to the gathered full state."""
    pytest.importorskip("torch.distributed.fsdp", reason="fully_shard: torch >= 2.6")
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("fully_shard is public from torch 2.6")
    (tmp_path / "tiedlm.py").write_text(TIED_LM)
    (tmp_path / "save.py").write_text(FSDP_SAVE)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "save.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p.name for p in (tmp_path / "step-1").glob("*.distcp")} == {
        "__0_0.distcp",
        "__1_0.distcp",
    }
    ckpt = load_checkpoint(tmp_path / "step-1")
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    assert ckpt.step == 1 and ckpt.state_dict.keys() == full["model"].keys()
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in full["model"].items())
    groups = ckpt.optimizer_state["param_groups"]
    names = [n for g in groups for n in g["param_names"]]
    for i, name in enumerate(names):
        want = full["optimizer"]["state"][name]["exp_avg_sq"]
        assert torch.equal(ckpt.optimizer_state["state"][i]["exp_avg_sq"], want), name
    (tmp_path / "step-1" / "__1_0.distcp").unlink()  # an incomplete copy
    with pytest.raises(CheckpointError, match=r"step-1: a damaged or incomplete"):
        load_checkpoint(tmp_path / "step-1")


def test_torch_too_old_for_dcp_is_refused_naming_the_version(run, monkeypatch) -> None:
    model, opt, tmp = run
    _save(model, opt, tmp / "step-3", "plain")
    monkeypatch.setattr(bdcp.torch, "__version__", "2.3.1")
    with pytest.raises(CheckpointError, match=r"step-3 is a torch.distributed.checkpoint .*"
                       r"torch >= 2.4 \(installed: 2.3.1\)"):  # fmt: skip
        load_checkpoint(tmp / "step-3")


def test_by_name_matching_drops_a_wrapper_prefix_and_falls_back_to_shapes(run) -> None:
    from bscrit.engine.params import select_parameters

    model, opt, _ = run
    by_name = get_optimizer_state_dict(model, opt)
    wrapped = {
        "state": {f"module.{k}": v for k, v in by_name["state"].items()},
        "param_groups": [
            {**g, "params": [f"module.{n}" for n in g["params"]]} for g in by_name["param_groups"]
        ],
    }
    sel = select_parameters(model, indexed(wrapped))
    assert sel.by.endswith("by name") and sel.state_indices is not None
    names = [n for g in by_name["param_groups"] for n in g["params"]]
    assert [names[i] for i in sel.state_indices] == list(sel.names)
    other = {**wrapped, "param_groups": [{**g, "params": [f"x.{n}" for n in g["params"]]}
                                         for g in wrapped["param_groups"]]}  # fmt: skip
    other["state"] = {f"x.{k}": v for k, v in wrapped["state"].items()}
    assert not select_parameters(model, indexed(other)).by.endswith("by name")
