"""A checkpoint's keys matched to the model's: prefixes stripped (given, or found when exactly
one fits), Hugging Face's renaming rules, tied weights (saved once) filled in, and every key or
shape that still does not fit reported at once."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from bscrit.errors import CheckpointError

# Prefixes added by DataParallel/DDP (``module.``), Lightning (``model.``), torch.compile.
AUTO_PREFIXES = ("module.", "model.", "_orig_mod.")


def _strip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The keys under ``prefix``, without it (the others belong to other submodules: a
    LightningModule's loss, an EMA copy); ``sd`` itself when no key has the prefix."""
    if not any(k.startswith(prefix) for k in sd):
        return sd
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _identities(expected: Mapping[str, Any]) -> dict[str, tuple]:
    """Each model tensor's memory: (storage, offset, shape, stride); equal for tied weights."""
    out = {}
    for k, v in expected.items():
        if isinstance(v, Tensor) and v.numel() > 0 and v.device.type != "meta":
            storage = v.untyped_storage().data_ptr()
            out[k] = (storage, v.storage_offset(), tuple(v.shape), v.stride())
    return out


def _tied_to(keys: set[str] | dict, model_keys: Mapping[str, Any], ids: dict[str, tuple]) -> dict:
    """``{missing model key: present key}`` for the missing keys tied to a present one."""
    present = {}
    for k in model_keys:
        if k in keys and k in ids:
            present.setdefault(ids[k], k)
    return {k: present[ids[k]] for k in model_keys if k not in keys and ids.get(k) in present}


def _fits(keys: set[str], expected: Mapping[str, Any], ids: dict[str, tuple]) -> bool:
    """The keys are the model's, every one missing tied to a present one."""
    if not keys or not keys <= set(expected):
        return False
    return len(keys) + len(_tied_to(keys, expected, ids)) == len(expected)


def _auto_strip(
    sd: dict[str, Tensor], expected: Mapping[str, Any], ids: dict[str, tuple], path: Path
) -> dict[str, Tensor]:
    """Strip ``module.``/``model.``/``_orig_mod.`` when every key has it and no key matches the
    model as is; else the one prefix (``net.`` of a LightningModule's ``self.net``) under which
    the keys fit the model. Several fitting prefixes: a CheckpointError naming strip_prefix."""
    model_keys = set(expected)
    for _ in range(len(AUTO_PREFIXES) * 2):  # e.g. "_orig_mod.module." takes two rounds
        if not sd or set(sd) & model_keys:
            return sd
        known = [p for p in AUTO_PREFIXES if all(k.startswith(p) for k in sd)]
        if known:
            sd = _strip(sd, known[0])
            continue
        heads = sorted({k.split(".", 1)[0] + "." for k in sd if "." in k})
        fitting = [
            p for p in heads if _fits({k[len(p) :] for k in sd if k.startswith(p)}, expected, ids)
        ]
        if len(fitting) > 1:
            raise CheckpointError(
                f"checkpoint {path}: its keys fit the model under {len(fitting)} prefixes "
                f"({', '.join(map(repr, fitting))}), and which one to measure is not guessed: "
                "set checkpoint.strip_prefix in the spec to one of them"
            )
        if not fitting:
            return sd
        sd = _strip(sd, fitting[0])
    return sd


def _hf_rules(
    sd: dict[str, Tensor], model: nn.Module, expected: Mapping[str, Any], ids: dict[str, tuple]
) -> dict[str, Tensor]:
    """transformers' own loading rules, read from the model's class when it declares them:
    keys that older versions saved and the model no longer has (``attn.bias`` buffers of GPT-2:
    ``_keys_to_ignore_on_load_unexpected``, regexes) are dropped, and a base model's keys saved
    without its prefix (``h.0.…`` for ``transformer.h.0.…``: ``base_model_prefix``) get it when
    they then fit the model."""
    ignore = [p for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()
              if isinstance(p, str)]  # fmt: skip

    def dropped(d: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            k: v for k, v in d.items() if k in expected or not any(re.search(p, k) for p in ignore)
        }

    prefix = getattr(model, "base_model_prefix", None)
    if isinstance(prefix, str) and prefix and sd and not set(sd) & set(expected):
        with_prefix = dropped({f"{prefix}.{k}": v for k, v in sd.items()})
        if _fits(set(with_prefix), expected, ids):
            return with_prefix
    return dropped(sd) if ignore else sd


def match_keys(
    sd: dict[str, Tensor], model: nn.Module, strip_prefix: Sequence[str] | None, path: Any
) -> dict[str, Tensor]:
    """The checkpoint's state_dict ``sd`` with its keys matched to ``model``'s: the spec's
    ``strip_prefix`` (else a prefix found automatically), Hugging Face's renaming rules, the keys
    of tied weights filled in.

    Raises:
        CheckpointError: keys or shapes that still do not fit (counts, the first missing and
            unexpected keys, shape mismatches), or keys that fit under more than one prefix.
    """
    ckpt_path = path
    expected = model.state_dict()
    ids = _identities(expected)
    if strip_prefix:
        for p in strip_prefix:
            sd = _strip(sd, p)
    else:
        sd = _auto_strip(sd, expected, ids, ckpt_path)
    sd = _hf_rules(sd, model, expected, ids)
    # tied weights (GPT-2's lm_head.weight is transformer.wte.weight) are saved once
    sd = {**sd, **{k: sd[t] for k, t in _tied_to(set(sd), expected, ids).items()}}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        (k, tuple(sd[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in sd and isinstance(v, Tensor) and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {ckpt_path} does not fit the model:"]
        if missing:
            more = ", ..." if len(missing) > 5 else ""
            lines.append(f"  {len(missing)} missing key(s): {', '.join(missing[:5])}{more}")
        if unexpected:
            more = ", ..." if len(unexpected) > 5 else ""
            lines.append(
                f"  {len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}{more}"
            )
        for k, got, want in shapes[:5]:
            lines.append(f"  shape mismatch {k}: checkpoint {list(got)}, model {list(want)}")
        if len(shapes) > 5:
            lines.append(f"  ... {len(shapes) - 5} more shape mismatch(es)")
        if missing and unexpected:
            lines.append("  (a key prefix? set checkpoint.strip_prefix in the spec)")
        raise CheckpointError("\n".join(lines))
    return sd
