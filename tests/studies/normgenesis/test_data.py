from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scene_sim.errors import SceneSimError
from scene_sim.studies.normgenesis.checks import check_situation, in_script, parse_lines
from scene_sim.studies.normgenesis.norms import load_bank, worlds_dir
from scene_sim.studies.normgenesis.records import Situation

CATEGORIES = {
    "apology", "compliment", "condolence", "criticism", "empathy", "greeting", "leave", "persuasion", "request",
    "respect", "respond_compliments", "thanks",
}  # fmt: skip


def test_bank_has_twelve_categories_and_every_language_covers_them() -> None:
    bank = load_bank()
    assert set(bank.categories) == CATEGORIES and len(bank.categories) == 12
    assert set(bank.langs) >= {"en", "ko", "zh"}
    for lang in ("en", "ko", "zh"):
        assert {n.category for n in bank.norms[lang]} == CATEGORIES
        assert {e.category for e in bank.exemplars if e.lang == lang} == CATEGORIES
        for norm in bank.norms[lang]:
            assert in_script(norm.norm + norm.setting, lang), norm.id
    assert all(e.id.startswith(f"ex-{e.lang}-") for e in bank.exemplars)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "worlds"
    shutil.copytree(worlds_dir(), root)
    return root


def test_loader_names_the_bad_file_and_field(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    doc = json.loads((root / "norms" / "ko.json").read_text(encoding="utf-8"))
    doc["norms"][3]["category"] = "greet"
    (root / "norms" / "ko.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(SceneSimError, match=r"norms/ko\.json: norms\[3\]\.category: unknown category 'greet'"):
        load_bank(root)


def test_loader_rejects_an_empty_exemplar_dialogue_and_bad_json(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    doc = json.loads((root / "exemplars" / "zh.json").read_text(encoding="utf-8"))
    doc["exemplars"][0]["dialogue"] = []
    (root / "exemplars" / "zh.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(SceneSimError, match=r"exemplars/zh\.json: exemplars\[0\]\.dialogue"):
        load_bank(root)
    (root / "norms" / "en.json").write_text("{", encoding="utf-8")
    with pytest.raises(SceneSimError, match=r"en\.json: not valid JSON"):
        load_bank(root)


def test_loader_checks_the_lang_field_matches_the_file(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    doc = json.loads((root / "norms" / "zh.json").read_text(encoding="utf-8"))
    doc["lang"] = "ko"
    (root / "norms" / "zh.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(SceneSimError, match=r"norms/zh\.json: lang: must be 'zh'"):
        load_bank(root)


def test_situation_checks_catch_leaks_wrong_script_and_shape() -> None:
    norm = "윗사람을 기다리게 했을 때는 변명보다 먼저 정중하게 사과하고 존댓말을 써야 한다."
    ok = Situation(scenario="신입 사원이 부장님과의 약속에 늦었다.", situation="부장님이 식당에서 기다리고 있다.")
    assert check_situation(ok, lang="ko", norm=norm) is None
    leak = Situation(scenario=ok.scenario, situation="그는 윗사람을 기다리게 했을 때는 변명보다 먼저 사과해야 한다.")
    assert "leaks" in (check_situation(leak, lang="ko", norm=norm) or "")
    meta = Situation(scenario=ok.scenario, situation="이것은 사회 규범 위반 상황이다.")
    assert "leaks" in (check_situation(meta, lang="ko", norm=norm) or "")
    english = Situation(scenario="A new hire is late for lunch.", situation="The manager waits at the table.")
    assert "not written in 'ko'" in (check_situation(english, lang="ko", norm=norm) or "")
    assert "characters" in (
        check_situation(Situation(scenario="짧다", situation=ok.situation), lang="ko", norm=norm) or ""
    )


def test_parse_lines_accepts_full_width_colons() -> None:
    assert parse_lines("李明：你好\n王芳: 你好啊\nnoise") == [("李明", "你好"), ("王芳", "你好啊")]
