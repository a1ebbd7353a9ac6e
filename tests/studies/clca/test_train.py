"""clca train without a model: data checks, assistant-only labels, family defaults, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scene_sim.cli import main
from scene_sim.errors import SceneSimError
from scene_sim.studies.clca.train import TrainConfig, _groups, family_defaults, load_examples, tokenize_example


def _record(task: str = "conversation", **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "Setting: a tea house. You are Li Wei; goal: be polite."},
            {"role": "user", "content": "Hello."},
            {"role": "assistant", "content": "Good morning."},
            {"role": "user", "content": "Tea?"},
            {"role": "assistant", "content": "Yes, please."},
        ],
        "task": task,
        "dialogue_id": "d1",
        "perspective": "Li Wei",
        **extra,
    }


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


class _CharTokenizer:
    """A ChatML-like template and one token per character: enough to check which tokens carry labels."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</>\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_only_assistant_tokens_carry_labels() -> None:
    messages = _record()["messages"]
    row = tokenize_example(_CharTokenizer(), messages, max_length=10_000)
    text = "".join(chr(i) for i in row["input_ids"])
    assert text == _CharTokenizer().apply_chat_template(messages)
    trained = "".join(
        chr(i) if label != -100 else "|" for i, label in zip(row["input_ids"], row["labels"], strict=True)
    )
    pieces = [p for p in trained.split("|") if p]
    assert pieces == ["Good morning.</>\n", "Yes, please.</>\n"]
    cut = tokenize_example(_CharTokenizer(), messages, max_length=20)
    assert len(cut["input_ids"]) == len(cut["labels"]) == 20


def test_a_template_that_is_not_prefix_stable_is_refused() -> None:
    class Odd(_CharTokenizer):
        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
            return f"[{len(messages)}]" + super().apply_chat_template(messages, tokenize, add_generation_prompt)

    with pytest.raises(SceneSimError, match="prefix by prefix"):
        tokenize_example(Odd(), _record()["messages"], 1000)


def test_load_examples_checks_the_contract_format(tmp_path: Path) -> None:
    good = load_examples(_jsonl(tmp_path / "train.jsonl", [_record(), _record("intent")]))
    assert [e.task for e in good] == ["conversation", "intent"] and good[0].perspective == "Li Wei"
    bad_cases = {
        "task": _record("summary"),
        "role": {**_record(), "messages": [{"role": "narrator", "content": "x"}]},
        "assistant": {**_record(), "messages": [{"role": "user", "content": "x"}]},
    }
    for what, rec in bad_cases.items():
        with pytest.raises(SceneSimError, match=r"train\.jsonl:1"):
            load_examples(_jsonl(tmp_path / "train.jsonl", [rec]))
        assert what
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(SceneSimError, match="not a JSON object"):
        load_examples(tmp_path / "broken.jsonl")


def test_cultures_come_from_dialogues_jsonl_for_per_culture_adapters(tmp_path: Path) -> None:
    data = _jsonl(
        tmp_path / "train.jsonl",
        [_record(dialogue_id="d1"), _record("intent", dialogue_id="d2"), _record(dialogue_id="d3")],
    )
    _jsonl(tmp_path / "dialogues.jsonl", [{"id": "d1", "culture": "China"}, {"id": "d2", "culture": "Japan"}])
    config = TrainConfig(data=str(data), model="local", out=str(tmp_path / "a"), adapter="per-culture")
    with pytest.raises(SceneSimError, match="1 example"):
        _groups(config, load_examples(data))
    _jsonl(
        tmp_path / "dialogues.jsonl",
        [{"id": f"d{i}", "culture": c} for i, c in ((1, "China"), (2, "Japan"), (3, "China"))],
    )
    groups = _groups(config, load_examples(data))
    assert [(c, len(x)) for c, x in groups] == [("China", 2), ("Japan", 1)]
    joint = _groups(TrainConfig(data=str(data), model="local", out="a", tasks=("intent",)), load_examples(data))
    assert [(c, len(x)) for c, x in joint] == [(None, 1)]


def test_table_14_defaults_per_family() -> None:
    assert family_defaults("hf/meta-llama/Llama-3.1-8B-Instruct")[1:] == (1e-4, 3.0)
    assert family_defaults("hf/Qwen/Qwen2.5-0.5B-Instruct")[1:] == (1e-4, 1.0)
    assert family_defaults("hf/mistralai/Mistral-7B-Instruct-v0.3")[1:] == (5e-5, 3.0)
    assert family_defaults("local")[0].startswith("llama")
    config = TrainConfig(data="x", model="local", out="y")
    assert (config.r, config.alpha, config.dropout, config.batch_size) == (4, 0.1, 0.5, 8)
    assert config.target_modules == ("q_proj", "v_proj")


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    data = _jsonl(tmp_path / "train.jsonl", [_record()])
    cases = [
        (["--data", str(tmp_path / "none.jsonl"), "--model", "local"], "not found"),
        (["--data", str(data), "--model", "openai/gpt-4o"], "needs a local model"),
        (["--data", str(data), "--model", "local", "--adapter", "per-culture"], "no culture"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["clca", "train", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
