"""LoRA fine-tuning on CLCA's multi-task data (seed 004 section 4.2, Appendix B, Table 14).

``clca train`` reads ``train.jsonl`` (the contract's conversational format:
``messages``, ``task``, ``dialogue_id``, ``perspective``), renders each
example with the model's own chat template and trains a peft LoRA adapter
with transformers' :class:`~transformers.Trainer`, the loss on assistant
tokens only: every example is tokenised piece by piece (the template
rendered prefix by prefix), and only the pieces an assistant message adds
carry labels; system and user pieces are ``-100``.

Defaults are Table 14's: batch 8, LoRA r 4, alpha 0.1 (as printed), dropout
0.5, targets q_proj and v_proj; lr and epochs per model family (Llama 1e-4 /
3, Qwen 1e-4 / 1, Mistral 5e-5 / 3; ``local`` is SmolLM2, a llama-architecture
model, so it takes Llama's). peft scales the LoRA update by ``alpha / r``, so
alpha 0.1 with r 4 is a scale of 0.025: a small update, kept because it is
what the paper prints.

Output, per adapter folder: the peft adapter (``adapter_config.json``,
``adapter_model.safetensors``), ``loss_log.jsonl`` (one line per step),
``checkpoints/`` (the Trainer's, so a killed run continues where it
stopped), ``train_run.json`` (the settings; a re-run with other settings
is refused) and ``training_card.json`` (what was trained on what). A
finished adapter is skipped on re-run.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scene_sim.errors import SceneSimError

__all__ = [
    "TASKS",
    "TrainConfig",
    "family_defaults",
    "load_examples",
    "model_dir_for",
    "tokenize_example",
    "train_adapters",
]

#: The two tasks of the multi-task data.
TASKS = ("conversation", "intent")
#: Table 14: (learning rate, epochs) per model family.
_FAMILY = {"llama": (1e-4, 3.0), "qwen": (1e-4, 1.0), "mistral": (5e-5, 3.0)}
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class TrainConfig:
    """One ``clca train`` run (None: the model family's Table 14 value)."""

    data: str
    model: str
    out: str
    max_steps: int | None = None
    epochs: float | None = None
    lr: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    r: int = 4
    alpha: float = 0.1
    dropout: float = 0.5
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    max_length: int = 2048
    adapter: str = "joint"
    cultures: tuple[str, ...] = ()
    tasks: tuple[str, ...] = TASKS
    seed: int = 0
    save_steps: int = 50
    resume: bool = True
    quiet: bool = False
    dtype: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Example:
    """One training example as read from ``train.jsonl``."""

    messages: tuple[dict[str, str], ...]
    task: str
    dialogue_id: str
    perspective: str | None
    culture: str | None


def family_defaults(model: str) -> tuple[str, float, float]:
    """``(family, lr, epochs)`` of Table 14 for a model string (unknown families take Llama's)."""
    name = model.lower()
    for family, (lr, epochs) in _FAMILY.items():
        if family in name:
            return family, lr, epochs
    lr, epochs = _FAMILY["llama"]
    if name.split("?", 1)[0] == "local":
        return "llama (SmolLM2, llama architecture)", lr, epochs
    return "other (Llama defaults)", lr, epochs


def _cultures_of(data: Path) -> dict[str, str]:
    """``dialogue_id -> culture`` from ``dialogues.jsonl`` next to the data file (empty when absent)."""
    path = data.parent / "dialogues.jsonl"
    if not path.exists():
        return {}
    from scene_sim.records import RecordFile

    return {str(r["id"]): str(r["culture"]) for r in RecordFile(path) if "id" in r and "culture" in r}


def load_examples(path: str | Path) -> list[Example]:
    """Read and check ``train.jsonl``.

    Raises:
        SceneSimError: a missing file, a line that is not a record of the contract's format, or no examples.

    """
    data = Path(path)
    if not data.is_file():
        raise SceneSimError(f"{data}: training data not found")
    cultures = _cultures_of(data)
    out: list[Example] = []
    for line_no, line in enumerate(data.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise SceneSimError(f"{data}:{line_no}: not a JSON object") from None
        messages = rec.get("messages") if isinstance(rec, dict) else None
        if not isinstance(messages, list) or not messages:
            raise SceneSimError(f"{data}:{line_no}: a record needs a non-empty 'messages' list")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
                raise SceneSimError(f"{data}:{line_no}: each message needs a role (system|user|assistant) and content")
        if not any(m["role"] == "assistant" for m in messages):
            raise SceneSimError(f"{data}:{line_no}: no assistant message to learn from")
        task = rec.get("task")
        if task not in TASKS:
            raise SceneSimError(f"{data}:{line_no}: task must be conversation or intent, got {task!r}")
        dialogue = str(rec.get("dialogue_id", ""))
        culture = rec.get("culture") or cultures.get(dialogue)
        out.append(
            Example(
                tuple({"role": m["role"], "content": m["content"]} for m in messages),
                task,
                dialogue,
                rec.get("perspective"),
                str(culture) if culture else None,
            )
        )
    if not out:
        raise SceneSimError(f"{data}: no training examples")
    return out


def model_dir_for(model: str) -> str:
    """The transformers folder of ``local`` or ``hf/ID_OR_PATH`` (never downloads).

    Raises:
        SceneSimError: another provider, or a model that is not on this machine.

    """
    from scene_sim.modelspec import ModelSpec

    spec = ModelSpec.parse(model)
    if spec.provider == "local":
        from scene_sim.backends.local import converted_model_dir

        return str(converted_model_dir())
    if spec.provider == "hf":
        from scene_sim.backends.hf import _resolve_model_dir

        return _resolve_model_dir(spec.name)
    raise SceneSimError(f"clca train needs a local model (hf/ID_OR_PATH or local), got '{model}'")


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation: bool) -> str:
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation))


def tokenize_example(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int) -> dict[str, list[int]]:
    """Token ids and labels of one conversation; labels are ``-100`` except on assistant messages.

    Raises:
        SceneSimError: when the chat template does not render the conversation prefix by prefix.

    """
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            head = _render(tokenizer, messages[:i], True) if i else ""
            full = _render(tokenizer, messages[: i + 1], False)
            if not head.startswith(done) or not full.startswith(head):
                raise SceneSimError("the model's chat template does not render conversations prefix by prefix")
            pieces += [(head[len(done) :], False), (full[len(head) :], True)]
        else:
            full = _render(tokenizer, messages[: i + 1], False)
            if not full.startswith(done):
                raise SceneSimError("the model's chat template does not render conversations prefix by prefix")
            pieces.append((full[len(done) :], False))
        done = full
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in pieces:
        if not text:
            continue
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Collator:
    """Right-pads a batch; counts the real tokens it served (for tokens/s)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.tokens = 0

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
            self.tokens += n
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _groups(config: TrainConfig, examples: list[Example]) -> list[tuple[str | None, list[Example]]]:
    chosen = [e for e in examples if e.task in config.tasks]
    if config.cultures or config.adapter == "per-culture":
        unknown = sum(1 for e in chosen if e.culture is None)
        if unknown:
            raise SceneSimError(
                f"{unknown} example(s) have no culture: add a 'culture' key or put dialogues.jsonl "
                f"next to {config.data}"
            )
    if config.cultures:
        wanted = {c.lower() for c in config.cultures}
        chosen = [e for e in chosen if e.culture is not None and e.culture.lower() in wanted]
    if not chosen:
        raise SceneSimError(
            f"{config.data}: no examples left for tasks {','.join(config.tasks)} and the cultures asked"
        )
    if config.adapter == "per-culture":
        names = sorted({e.culture for e in chosen if e.culture})
        return [(c, [e for e in chosen if e.culture == c]) for c in names]
    if config.adapter != "joint":
        raise SceneSimError(f"--adapter must be joint or per-culture, got {config.adapter!r}")
    return [(None, chosen)]


def train_adapters(config: TrainConfig) -> list[dict[str, Any]]:
    """Train the adapter(s) of ``config``: one joint adapter in ``out``, or one per culture in ``out/<culture>``.

    Returns:
        The training cards.

    """
    examples = load_examples(config.data)
    groups = _groups(config, examples)
    model_dir = model_dir_for(config.model)
    cards = []
    with warnings.catch_warnings():
        # transformers' and peft's own deprecation notices are not the user's business
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for culture, chosen in groups:
            out = Path(config.out) / culture if culture else Path(config.out)
            cards.append(_train_one(config, model_dir, chosen, out, culture))
    return cards


def _identity(config: TrainConfig, family: str, lr: float, epochs: float, data_sha: str) -> dict[str, Any]:
    keep = asdict(config)
    for key in ("out", "quiet", "resume", "save_steps", "extra"):
        keep.pop(key)
    keep.update(family=family, lr=lr, epochs=epochs, data=str(Path(config.data).resolve()), data_sha256=data_sha)
    keep["target_modules"] = list(config.target_modules)
    keep["cultures"] = list(config.cultures)
    keep["tasks"] = list(config.tasks)
    return keep


def _train_one(
    config: TrainConfig, model_dir: str, examples: list[Example], out: Path, culture: str | None
) -> dict[str, Any]:
    from scene_sim.rundir import atomic_write_text, package_versions

    family, family_lr, family_epochs = family_defaults(config.model)
    lr = config.lr if config.lr is not None else family_lr
    epochs = config.epochs if config.epochs is not None else family_epochs
    data_sha = _sha256(Path(config.data))
    ident = _identity(config, family, lr, epochs, data_sha)
    ident["culture"] = culture
    out.mkdir(parents=True, exist_ok=True)
    run_path, card_path = out / "train_run.json", out / "training_card.json"
    if run_path.exists():
        try:
            before = json.loads(run_path.read_text(encoding="utf-8"))
        except ValueError:
            before = None
        if before != ident:
            raise SceneSimError(f"{out} holds a different training run ({run_path.name} differs); use a new --out")
        if card_path.exists():
            _say(config, f"{out}: already trained; skipped")
            return json.loads(card_path.read_text(encoding="utf-8"))
    else:
        atomic_write_text(run_path, json.dumps(ident, indent=1) + "\n")

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [tokenize_example(tokenizer, e.messages, config.max_length) for e in examples]
    rows = [r for r in rows if any(label != -100 for label in r["labels"])]
    if not rows:
        raise SceneSimError(f"no example keeps an assistant token within --max-length {config.max_length}")
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if bf16 else torch.float32, local_files_only=True
    )
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise SceneSimError(f"LoRA on {config.model}: {exc}") from None
    collator = _Collator(int(tokenizer.pad_token_id))
    log_path = out / "loss_log.jsonl"
    losses: list[float] = []
    ckpt_dir = out / "checkpoints"
    resume = config.resume and ckpt_dir.is_dir() and any(ckpt_dir.glob("checkpoint-*"))
    if not resume and log_path.exists():
        log_path.unlink()
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=lr,
        num_train_epochs=epochs,
        max_steps=config.max_steps if config.max_steps else -1,
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to=[],
        disable_tqdm=True,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        bf16=bf16,
        use_cpu=not cuda,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,  # a list is a map-style dataset
        data_collator=collator,
        callbacks=[_LossLog(log_path, losses, config.quiet, culture)],
    )
    trainer.remove_callback(PrinterCallback)  # our own progress lines replace its dict dumps
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    wall = time.perf_counter() - started
    model.save_pretrained(str(out))
    logged = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    loss_values = [e["loss"] for e in logged if e.get("loss") is not None]
    spec_query = "local" if config.model.split("?", 1)[0] == "local" else config.model.split("?", 1)[0]
    card = {
        "adapter_dir": str(out),
        "load_as": f"{spec_query}?adapter={out}",
        "base_model": config.model,
        "base_model_dir": model_dir,
        "family": family,
        "culture": culture,
        "data": str(Path(config.data).resolve()),
        "data_sha256": data_sha,
        "examples": len(rows),
        "examples_by_task": {t: sum(1 for e in examples if e.task == t) for t in TASKS},
        "examples_by_culture": _count(e.culture or "unknown" for e in examples),
        "dialogues": len({e.dialogue_id for e in examples}),
        "lora": {
            "r": config.r,
            "alpha": config.alpha,
            "dropout": config.dropout,
            "target_modules": list(config.target_modules),
            "scale": config.alpha / config.r,
        },
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "lr": lr,
        "epochs": epochs,
        "max_steps": config.max_steps,
        "max_length": config.max_length,
        "steps": int(result.global_step),
        "first_loss": loss_values[0] if loss_values else float("nan"),
        "final_loss": loss_values[-1] if loss_values else float("nan"),
        "train_loss": float(result.training_loss),
        "tokens_seen_this_run": collator.tokens,
        "wall_time_s": wall,
        "tokens_per_s": collator.tokens / wall if wall > 0 else 0.0,
        "resumed": bool(resume),
        "device": "cuda" if cuda else "cpu",
        "dtype": "bfloat16" if bf16 else "float32",
        "seed": config.seed,
        "loss": "assistant tokens only (system and user tokens are -100)",
        "versions": package_versions(),
    }
    atomic_write_text(card_path, json.dumps(card, indent=1) + "\n")
    del trainer, model
    return card


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def _say(config: TrainConfig, line: str) -> None:
    if not config.quiet:
        print(line, file=sys.stderr)


def _loss_log_class() -> type:
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):  # type: ignore[misc, valid-type]
        def __init__(self, path: Path, losses: list[float], quiet: bool, culture: str | None) -> None:
            self.path, self.losses, self.quiet, self.culture = path, losses, quiet, culture
            self.t0 = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not logs or "loss" not in logs:
                return
            entry = {
                "step": state.global_step,
                "epoch": logs.get("epoch"),
                "loss": float(logs["loss"]),
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "elapsed_s": round(time.perf_counter() - self.t0, 3),
            }
            self.losses.append(entry["loss"])
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
            if not self.quiet:
                tag = f"[{self.culture}] " if self.culture else ""
                print(
                    f"{tag}step {state.global_step}/{state.max_steps}  loss {entry['loss']:.4f}  "
                    f"{entry['elapsed_s']:.0f}s",
                    file=sys.stderr,
                )

    return LossLog


def _LossLog(path: Path, losses: list[float], quiet: bool, culture: str | None) -> Any:
    return _loss_log_class()(path, losses, quiet, culture)
