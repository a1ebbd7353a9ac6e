"""Benchmark ``clca train`` against plain peft + transformers' Trainer on the same data.

Both train the same LoRA (Table 14: r 4, alpha 0.1, dropout 0.5, q_proj/v_proj)
on the same examples with the same batch size, steps and seed, and report
tokens/s: the real (non-padding) tokens of the batches served, over the wall
time of ``Trainer.train``. "Plain" tokenises each conversation in one
``apply_chat_template`` call, pads with ``DataCollatorForSeq2Seq`` and trains
on every token; ours tokenises piece by piece and masks all but the assistant
tokens. The target: ours within 10% of plain.

Usage::

    .venv/bin/python benchmarks/lora_train.py                      # local (SmolLM2-135M), CPU
    .venv/bin/python benchmarks/lora_train.py --model hf/Qwen/Qwen2.5-0.5B-Instruct --steps 20 --dialogues 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _plain(model_dir: str, records: list[dict], args: argparse.Namespace, out: Path) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rows = []
    for r in records:
        ids = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"][: args.max_length]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    lora = LoraConfig(r=4, lora_alpha=0.1, lora_dropout=0.5, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    inner = DataCollatorForSeq2Seq(tok, padding=True)
    served = {"tokens": 0}

    def collate(batch: list[dict]) -> dict:
        served["tokens"] += sum(len(b["input_ids"]) for b in batch)
        return inner(batch)

    targs = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4,
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )
    trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate)
    trainer.remove_callback(PrinterCallback)  # as ours: no log dicts on stdout
    t0 = time.perf_counter()
    trainer.train()
    return served["tokens"] / (time.perf_counter() - t0)


def _ours(data: Path, args: argparse.Namespace, out: Path) -> float:
    from scene_sim.studies.clca.train import TrainConfig, train_adapters

    card = train_adapters(
        TrainConfig(
            data=str(data),
            model=args.model,
            out=str(out),
            max_steps=args.steps,
            batch_size=args.batch_size,
            lr=1e-4,
            max_length=args.max_length,
            save_steps=10_000,
            quiet=True,
        )
    )[0]
    return float(card["tokens_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="local")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dialogues", type=int, default=8, help="synthetic dialogues (5 examples each)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two this many times; report the best")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from scene_sim.studies.clca.evaluate import synthetic_train_records
    from scene_sim.studies.clca.train import model_dir_for

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp())
    records = synthetic_train_records(args.dialogues)
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    model_dir = model_dir_for(args.model)
    plain, ours = [], []
    for i in range(args.repeats):  # alternate the order: on a shared machine the load drifts
        if i % 2:
            ours.append(_ours(data, args, tmp / f"ours{i}"))
        plain.append(_plain(model_dir, records, args, tmp / f"plain{i}"))
        if not i % 2:
            ours.append(_ours(data, args, tmp / f"ours{i}"))
    result = {
        "model": args.model,
        "examples": len(records),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "plain_tokens_per_s": max(plain),
        "ours_tokens_per_s": max(ours),
        "ours_vs_plain": max(ours) / max(plain),
        "runs": {"plain": plain, "ours": ours},
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            print(f"{key:22s} {value}")


if __name__ == "__main__":
    main()
