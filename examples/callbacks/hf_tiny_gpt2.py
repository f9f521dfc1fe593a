"""bscrit inside a Hugging Face Trainer run: a tiny random GPT-2 on byte-level text (CPU, ~30 s).

A 2-layer GPT-2 (vocabulary 256: bytes, nothing downloaded) trains on lines of Python's own
standard library (``examples/hf-gpt2/data.py``), B = 16 as 2 accumulated micro-batches of 8;
``BscritCallback`` measures every 20 steps with the model's own loss (``model(**batch).loss``,
micro-batches weighted by their label counts), writes ``OUT/step-XXXXXXX.json`` and
``OUT/series.jsonl``, and puts ``bscrit/nsr_raw``, ``bscrit/b_star_raw`` and (AdamW)
``bscrit/*_preconditioned`` into the Trainer's logs (``log_history``, and the ``report_to``
integrations: set ``report_to=["tensorboard"]`` to see them in TensorBoard). The Trainer needs
accelerate (``pip install 'bscrit[hf]'``).

    python examples/callbacks/hf_tiny_gpt2.py [OUT]          # default OUT: bscrit-hf
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers

from bscrit.integrations.transformers import BscritCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf-gpt2"))
from data import make_dataset  # noqa: E402  (the hf-gpt2 example's byte-level text)


def main(out: str = "bscrit-hf", steps: int = 60, every: int = 20) -> list[dict]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(
        output_dir=str(Path(out) / "trainer"),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        max_steps=steps,
        learning_rate=1e-3,
        weight_decay=0.01,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=every,
        disable_tqdm=True,
        seed=0,
    )
    callback = BscritCallback(out, every_n_steps=every, num_batches=40, groups=8)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=make_dataset(seq_len=64), callbacks=[callback]
    )
    trainer.train()
    for h in trainer.state.log_history:
        if "bscrit/b_star_raw" in h:
            pre = h.get("bscrit/b_star_preconditioned", float("nan"))
            print(f"step {h['step']}: B* = {pre:.0f} (Adam-preconditioned gradient), "
                  f"{h['bscrit/b_star_raw']:.0f} (raw gradient)")  # fmt: skip
    return callback.recorder.rows


if __name__ == "__main__":
    main(*sys.argv[1:2])
