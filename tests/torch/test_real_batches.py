"""Dict examples, the model's own loss (``loss: model``) and micro-batches (gradient accumulation):
each against the plain path it must reproduce (same batches, same seed → the same numbers up to
float rounding)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset, default_collate

from bscrit.engine.data import BatchSource
from bscrit.engine.loop import measure_model
from bscrit.engine.objective import ModelLoss, batch_gradient, item_count, shifts_labels
from bscrit.errors import DataError, SpecError, UsageError
from bscrit.stats.summary import param_set_stats

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _asset(name: str):
    spec = importlib.util.spec_from_file_location(f"bscrit_test_{name}", ASSETS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lm = _asset("lm")

#: Float rounding: a float32 batch gradient summed in another order (chunks) differs by ~1e-7
#: relative (observed 1.4e-7 for GPT-2, 1.9e-7 for the tagger); allow 10x per gradient, and for
#: the estimators, whose differences (‖S/k‖² − N̂/k, Q/k − ‖S/k‖²) amplify an absolute error of
#: δ (G + N) in either term, 8 δ (|G| + N) with δ = 1e-6.
GRAD_RTOL = 2e-6
DELTA = 1e-6


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _batch(ds, n: int):
    return default_collate([ds[i] for i in range(n)])


def _stats(raw):
    s = param_set_stats(raw.tensors)
    return s.G, s.N


def _assert_same_g_n(a, b) -> None:
    (g0, n0), (g1, n1) = a, b
    tol = 8 * DELTA * (abs(g0) + n0)
    assert abs(g1 - g0) <= tol and abs(n1 - n0) <= tol, (g0, g1, n0, n1, tol)


class _Pairs(nn.Module):
    """The tagger of lm.py called on pairs: ``model(x)`` → logits (for a loss function)."""

    def __init__(self, tagger: nn.Module) -> None:
        super().__init__()
        self.tagger = tagger

    def forward(self, x):
        return self.tagger(x)["logits"].reshape(-1, lm.VOCAB)


def _token_ce(logits, y):
    return F.cross_entropy(logits, y.reshape(-1))


# ----------------------------------------------------------------------------------------------
# Dict examples and loss: model
# ----------------------------------------------------------------------------------------------


def test_dict_examples_with_the_models_own_loss_measure_as_the_same_pairs_with_a_loss() -> None:
    """model(**batch).loss on dict examples = loss_fn(model(x), y) on the same (x, y) pairs."""
    torch.manual_seed(0)
    tagger = lm.make_tagger()
    kw = dict(batch_size=8, num_batches=12, groups=3, seed=5)
    ours = measure_model(tagger, lm.make_tokens(48), ModelLoss(), **kw)
    ref = measure_model(_Pairs(tagger), lm.make_pairs(48), _token_ce, **kw)
    assert ours.mean_loss == pytest.approx(ref.mean_loss, rel=1e-6)
    _assert_same_g_n(_stats(ref), _stats(ours))


def test_pairs_with_loss_model_call_model_x_labels_y() -> None:
    """Pair examples with 'loss: model' are called as model(x, labels=y) (HF's convention)."""
    torch.manual_seed(0)
    tagger = lm.make_tagger()
    kw = dict(batch_size=8, num_batches=12, groups=3, seed=5)
    ours = measure_model(tagger, lm.make_pairs(48), ModelLoss(), **kw)
    ref = measure_model(tagger, lm.make_tokens(48), ModelLoss(), **kw)
    assert ours.mean_loss == pytest.approx(ref.mean_loss, rel=1e-6)
    _assert_same_g_n(_stats(ref), _stats(ours))


def test_a_real_gpt2_measures_from_dict_examples_and_from_pairs() -> None:
    pytest.importorskip("transformers")
    model = lm.make_gpt2()
    kw = dict(batch_size=8, num_batches=8, groups=2, seed=1)
    dicts = measure_model(model, lm.make_tokens(32), ModelLoss(), **kw)
    pairs = measure_model(model, lm.make_pairs(32), ModelLoss(), **kw)
    # input_ids without the attention mask: padding is attended to, but its labels are -100,
    # and GPT-2 is causal, so the loss of the real tokens is the same
    assert pairs.mean_loss == pytest.approx(dicts.mean_loss, rel=1e-5)
    _assert_same_g_n(_stats(dicts), _stats(pairs))


@pytest.mark.parametrize(
    ("output", "found"),
    [
        (lambda logits: logits, "a tensor of shape"),
        (lambda logits: {"logits": logits}, "keys ['logits']"),
        (lambda logits: {"loss": logits.mean(-1)}, "output.loss is a tensor of shape (8,)"),
        (lambda logits: (logits.mean(), logits), "a tuple"),
    ],
)
def test_an_output_without_a_scalar_loss_is_a_spec_error_naming_loss(output, found) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x, labels=None):
            return output(self.lin(x))

    ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    with pytest.raises(SpecError) as e:
        measure_model(Net(), ds, ModelLoss("s.yaml"), batch_size=8, num_batches=4, groups=2)
    text = str(e.value)
    assert "s.yaml" in text and "loss:" in text and found in text, text


def test_an_hf_model_called_without_labels_is_told_to_give_labels() -> None:
    pytest.importorskip("transformers")

    class NoLabels(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 16

        def __getitem__(self, i):
            return {"input_ids": torch.arange(6) + i}

    with pytest.raises(SpecError, match="'labels' key"):
        measure_model(lm.make_gpt2(), NoLabels(), ModelLoss(), batch_size=4, num_batches=4,
                      groups=2)  # fmt: skip


def test_three_tensors_are_refused_not_read_as_a_pair() -> None:
    """A TensorDataset of (ids, mask, labels) was indexed as (ids, mask): now a clear error."""
    ds = TensorDataset(torch.randn(32, 4), torch.randn(32, 4), torch.randint(0, 3, (32,)))
    with pytest.raises(DataError, match="pair or a dict of tensors.*3 elements"):
        measure_model(nn.Linear(4, 3), ds, F.cross_entropy, batch_size=8, num_batches=4, groups=2)


def test_dict_batches_reach_the_device_through_the_dataloader_path() -> None:
    ds = torch.utils.data.Subset(lm.make_tokens(20), range(10))
    src = BatchSource(ds, torch.device("cpu"))
    assert not src.in_memory
    (x, y), = list(src.batches(torch.tensor([[3, 1, 4]]), seed=0))  # fmt: skip
    assert y is None and set(x) == {"input_ids", "attention_mask", "labels"}
    assert torch.equal(x["input_ids"], lm.make_tokens(20).ids[[3, 1, 4]])


# ----------------------------------------------------------------------------------------------
# Micro-batches
# ----------------------------------------------------------------------------------------------


def test_micro_batches_give_the_same_g_and_n_as_whole_batches() -> None:
    from reference import mse, tiny_problem

    model, ds = tiny_problem(n=48)
    model = model.float()
    ds = TensorDataset(*(t.float() for t in ds.tensors))
    kw = dict(batch_size=12, num_batches=40, groups=4, seed=3)
    whole = measure_model(model, ds, mse, **kw)
    for micro in (1, 4, 6):
        chunks = measure_model(model, ds, mse, micro_batch_size=micro, **kw)
        assert chunks.mean_loss == pytest.approx(whole.mean_loss, rel=1e-6)
        _assert_same_g_n(_stats(whole), _stats(chunks))
        assert [t.abs_dot for t in chunks.tensors] == pytest.approx(
            [t.abs_dot for t in whole.tensors], rel=1e-5
        )  # the scale-invariance sums are those of the batch gradient


@pytest.mark.parametrize("model_name", ["gpt2", "tagger"])
def test_padded_micro_batches_are_weighted_by_their_tokens(model_name: str) -> None:
    """The micro-batched gradient of a token-mean loss equals the whole batch's; the mean of
    micro-batch means (equal weights) does not, by far."""
    if model_name == "gpt2":
        pytest.importorskip("transformers")
        model = lm.make_gpt2()
    else:
        torch.manual_seed(0)
        model = lm.make_tagger()
    params = [p for p in model.parameters() if p.requires_grad]
    batch = _batch(lm.make_tokens(16, min_len=2), 16)
    loss, whole = batch_gradient(model, ModelLoss(), params, batch, None)
    loss4, chunks = batch_gradient(model, ModelLoss(), params, batch, None, micro=4)
    assert float(loss4) == pytest.approx(float(loss), rel=1e-6)
    a, b = _flat(whole), _flat(chunks)
    assert float((a - b).norm() / a.norm()) < GRAD_RTOL
    naive = torch.zeros_like(a)
    for i in range(0, 16, 4):
        part = {k: v[i : i + 4] for k, v in batch.items()}
        naive += _flat(batch_gradient(model, ModelLoss(), params, part, None)[1]) / 4
    assert float((a - naive).norm() / a.norm()) > 1000 * GRAD_RTOL


def test_the_item_count_rule() -> None:
    labels = torch.tensor([[5, 6, -100, -100], [-100, 7, 8, 9]])
    batch = {"input_ids": labels.clamp_min(0), "labels": labels}
    tagger = lm.make_tagger()
    assert not shifts_labels(tagger)
    assert int(item_count(tagger, ModelLoss(), batch, None)) == 5
    tagger.loss_type = "ForCausalLM"  # a model of one's own that shifts its labels inside
    assert shifts_labels(tagger)
    assert int(item_count(tagger, ModelLoss(), batch, None)) == 4  # the first column never is
    shifted = dict(batch, shift_labels=torch.tensor([[1, -100], [2, 3]]))
    assert int(item_count(tagger, ModelLoss(), shifted, None)) == 3
    y = torch.tensor([0, 2, -100, 1, 255, 255])
    assert int(item_count(None, F.cross_entropy, None, y)) == 5
    assert int(item_count(None, nn.CrossEntropyLoss(ignore_index=255), None, y)) == 4
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0]))
    assert float(item_count(None, weighted, None, y[:4])) == 1 + 3 + 2
    assert item_count(None, F.mse_loss, None, y.float()) is None
    assert item_count(None, lambda o, t: o, None, y) is None
    if importlib.util.find_spec("transformers"):
        assert shifts_labels(lm.make_gpt2())  # loss_type None: the causal-LM default
        from transformers import GPT2Config, GPT2ForTokenClassification

        config = GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2, n_positions=8)
        assert not shifts_labels(GPT2ForTokenClassification(config))


def test_cross_entropy_with_ignored_targets_is_weighted_too() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(16, 4)
    y = torch.tensor([0, 1, 2, 0] + [-100] * 3 + [1] * 9)
    params = list(model.parameters())
    for loss_fn in (F.cross_entropy, nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))):
        _, whole = batch_gradient(model, loss_fn, params, x, y)
        _, chunks = batch_gradient(model, loss_fn, params, x, y, micro=4)
        a, b = _flat(whole), _flat(chunks)
        assert float((a - b).norm() / a.norm()) < GRAD_RTOL


def test_micro_batches_with_per_example_norms_and_dict_examples() -> None:
    """The per-example hooks read the pieces of the batch-B gradient under micro-batching."""
    from bscrit.engine.per_example import measure_per_example

    torch.manual_seed(0)
    model = lm.MLPTagger()
    kw = dict(batch_size=8, num_batches=8, groups=2, seed=2)
    raw0, pe0 = measure_per_example(model, lm.make_tokens(32), ModelLoss(), **kw)
    raw1, pe1 = measure_per_example(
        model, lm.make_tokens(32), ModelLoss(), micro_batch_size=2, **kw
    )
    _assert_same_g_n(_stats(raw0), _stats(raw1))
    for r0, r1 in zip(pe0.c, pe1.c):
        assert r1 == pytest.approx(r0, rel=1e-5)


def test_micro_batch_size_must_divide_b_and_batchnorm_is_warned_about() -> None:
    tiny = _asset("tiny")
    make_dataset, make_model = tiny.make_dataset, tiny.make_model
    ds = make_dataset(64)
    with pytest.raises(UsageError, match="micro_batch_size 3 does not divide.*B = 8"):
        measure_model(make_model(), ds, F.cross_entropy, batch_size=8, num_batches=4, groups=2,
                      micro_batch_size=3)  # fmt: skip
    raw = measure_model(make_model(), ds, F.cross_entropy, batch_size=8, num_batches=4, groups=2,
                        micro_batch_size=4)  # fmt: skip
    assert any("BatchNorm" in w and "micro-batch of 4" in w for w in raw.warnings)
    raw = measure_model(make_model(), ds, F.cross_entropy, batch_size=8, num_batches=4, groups=2,
                        micro_batch_size=4, mode="eval")  # fmt: skip
    assert not any("BatchNorm" in w for w in raw.warnings)


# ----------------------------------------------------------------------------------------------
# SVAG: the same batches, losses and gradients
# ----------------------------------------------------------------------------------------------


def test_svag_gradients_and_evaluations_on_dict_examples_in_micro_batches() -> None:
    from bscrit.runs.common.evaluation import ModelEvaluator, loss_gradient

    torch.manual_seed(0)
    model = lm.make_tagger()
    ds = lm.make_tokens(32)
    params = [p for p in model.parameters() if p.requires_grad]
    batch = _batch(ds, 12)
    whole = _flat(loss_gradient(model, ModelLoss(), params, batch, None))
    chunks = _flat(loss_gradient(model, ModelLoss(), params, batch, None, micro=5))  # 5+5+2
    assert float((whole - chunks).norm() / whole.norm()) < GRAD_RTOL
    src = BatchSource(ds, torch.device("cpu"))
    fixed = [list(range(i, i + 8)) for i in range(0, 24, 8)]
    kw = dict(held_out=src, held_out_indices=list(range(32)), eval_batch_size=10)
    out0 = ModelEvaluator(model, ModelLoss(), src, fixed, **kw)()
    out1 = ModelEvaluator(model, ModelLoss(), src, fixed, micro=4, **kw)()
    for key in ("train_loss", "G", "N", "eval_loss"):
        assert out1[key] == pytest.approx(out0[key], rel=1e-5), key
    with torch.no_grad():  # held-out loss: the token mean over all 32 examples
        everything = float(model(**_batch(ds, 32))["loss"])
    assert out0["eval_loss"] == pytest.approx(everything, rel=1e-6)


def test_per_example_on_a_real_gpt2_is_refused_naming_the_option() -> None:
    """GPT-2 (tied embeddings, Conv1D) has no per-example rule: a clear refusal, not a crash."""
    pytest.importorskip("transformers")
    from bscrit.engine.per_example import measure_per_example
    from bscrit.errors import BscritError

    with pytest.raises(BscritError, match="estimator per-example: .*Use estimator batch") as e:
        measure_per_example(lm.make_gpt2(), lm.make_tokens(32), ModelLoss(), batch_size=8,
                            num_batches=4, groups=2)  # fmt: skip
    assert e.value.exit_code == 2


def test_a_dict_key_the_model_does_not_take_is_a_one_line_error() -> None:
    from bscrit.errors import MeasurementError

    class Plain(nn.Module):  # takes input_ids and labels, not attention_mask
        def __init__(self) -> None:
            super().__init__()
            self.tagger = lm.make_tagger()

        def forward(self, input_ids, labels=None):
            return self.tagger(input_ids, labels=labels)

    with pytest.raises(MeasurementError, match="batch 0: TypeError: .*attention_mask"):
        measure_model(Plain(), lm.make_tokens(16), ModelLoss(), batch_size=4, num_batches=4,
                      groups=2)  # fmt: skip
