from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scene_sim.cli import main
from scene_sim.errors import SceneSimError
from scene_sim.studies.normgenesis.analyze import analyze_records, is_multi_step, repair_sequence
from scene_sim.studies.normgenesis.ratings import agreement, pearson_r, read_ratings


def t(speaker: str, reaction: str, adherence: str = "adheres") -> dict[str, Any]:
    return {"speaker": speaker, "text": "...", "adherence": adherence, "reaction": reaction, "justification": ""}


def rq(r: int, na: int, lq: int, sf: int) -> dict[str, int]:
    return {"round": r, "norm_alignment": na, "linguistic_quality": lq, "semantic_fidelity": sf}


def rec(i: int, lang: str, kind: str, turns: list[dict[str, Any]], scores: list[dict[str, int]]) -> dict[str, Any]:
    return {
        "id": f"r{i}", "lang": lang, "category": "apology", "norm": "n", "norm_id": "x", "type": kind,
        "scenario": "s", "situation": "s", "exemplar_ids": [], "turns": turns,
        "refinement": {"rounds": len(scores) - 1, "scores": scores},
        "dq": dict.fromkeys(("consistency", "naturalness", "relevance", "coherence", "emotion_appropriateness",
                             "norm_appropriateness"), 3 + i % 3),
    }  # fmt: skip


# The hand-made data set: the expected numbers below are worked out by hand from the contract.
HAND = [
    # ko v2r 1: violator B uses APO and JUS -> multi-step; NR dropped, repeats collapsed: CRT>APO>JUS>ACK
    rec(
        1,
        "ko",
        "v2r",
        [
            t("A", "NR", "not_relevant"),
            t("B", "DIS", "violates"),
            t("A", "CRT"),
            t("A", "CRT"),
            t("B", "APO"),
            t("A", "NR"),
            t("B", "APO"),
            t("B", "JUS"),
            t("A", "ACK"),
        ],
        [rq(0, 4, 3, 5), rq(1, 5, 5, 5)],
    ),
    # ko v2r 2: only APO from the violator (EMP is the other speaker's) -> single step; CRT>APO>EMP
    rec(
        2,
        "ko",
        "v2r",
        [t("A", "ACK"), t("B", "DIS", "violates"), t("A", "CRT"), t("B", "APO"), t("A", "EMP")],
        [rq(0, 4, 4, 4)],
    ),
    # ko v2r 3: a second violation later does not restart the sequence: CRT>DIS>APO>SUG; APO+SUG multi-step
    rec(
        3,
        "ko",
        "v2r",
        [
            t("A", "NR", "not_relevant"),
            t("B", "DIS", "violates"),
            t("A", "CRT"),
            t("B", "DIS", "violates"),
            t("B", "APO"),
            t("B", "SUG"),
        ],
        [rq(0, 3, 2, 5), rq(1, 4, 3, 5), rq(2, 5, 4, 4)],
    ),
    # ko v2r 4: identical sequence to 1 (count 2), EMP+SUG by the violator -> multi-step
    rec(
        4,
        "ko",
        "v2r",
        [t("B", "DIS", "violates"), t("A", "CRT"), t("B", "EMP"), t("B", "SUG"), t("A", "ACK")],
        [rq(0, 5, 5, 5)],
    ),
    # ko adherence: counted in n only
    rec(5, "ko", "adherence", [t("A", "ACK"), t("B", "AGR")], [rq(0, 4, 4, 4)]),
    # zh v2r with no violating turn: no sequence, counts as not multi-step
    rec(6, "zh", "v2r", [t("A", "ACK"), t("B", "APO"), t("B", "JUS")], [rq(0, 4, 3, 5), rq(1, 4, 5, 5)]),
    # zh violation
    rec(7, "zh", "violation", [t("A", "NR", "not_relevant"), t("B", "DIS", "violates")], [rq(0, 4, 4, 4)]),
]


def test_sequence_and_multi_step_definitions() -> None:
    assert repair_sequence(HAND[0]["turns"]) == "CRT>APO>JUS>ACK"
    assert repair_sequence(HAND[2]["turns"]) == "CRT>DIS>APO>SUG"
    assert repair_sequence(HAND[5]["turns"]) is None
    assert [is_multi_step(r["turns"]) for r in HAND[:4]] == [True, False, True, True]


def test_patterns_on_the_hand_made_set_equal_the_contract_definitions() -> None:
    p = analyze_records(HAND)
    ko, zh = p["languages"]["ko"], p["languages"]["zh"]
    assert ko["v2r"]["n"] == 4 and ko["adherence"]["n"] == 1 and ko["violation"]["n"] == 0
    assert ko["v2r"]["multi_step_repair"] == 0.75  # 3 of 4
    assert ko["v2r"]["sequences"] == {
        "CRT>APO>JUS>ACK": 1,
        "CRT>APO>EMP": 1,
        "CRT>DIS>APO>SUG": 1,
        "CRT>EMP>SUG>ACK": 1,
    }
    assert zh["v2r"]["multi_step_repair"] == 0.0 and zh["v2r"]["sequences"] == {}
    assert zh["violation"]["n"] == 1
    # ko: rounds 1,0,2,0,0 -> 0.6; before (round 0): na (4+4+3+5+4)/5, lq (3+4+2+5+4)/5, sf (5+4+5+5+4)/5;
    # after (last round): na (5+4+5+5+4)/5, lq (5+4+4+5+4)/5, sf (5+4+4+5+4)/5
    ref = ko["refinement"]
    assert ref["n"] == 5 and ref["mean_rounds"] == 0.6
    assert ref["rq_before"] == {"norm_alignment": 4.0, "linguistic_quality": 3.6, "semantic_fidelity": 4.6}
    assert ref["rq_after"] == {"norm_alignment": 4.6, "linguistic_quality": 4.4, "semantic_fidelity": 4.4}
    # overall: rounds 1,0,2,0,0,1,0 -> 4/7
    assert p["refinement"]["mean_rounds"] == round(4 / 7, 4) and p["dialogues"] == 7


def test_repeated_sequences_are_counted() -> None:
    twice = [HAND[0], {**HAND[0], "id": "again"}]
    assert analyze_records(twice)["languages"]["ko"]["v2r"]["sequences"] == {"CRT>APO>JUS>ACK": 2}


def test_pearson_matches_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    x = [4.0, 3.5, 5.0, 2.0, 4.5, 3.0]
    y = [3.8, 3.9, 4.9, 2.2, 4.0, 3.3]
    assert pearson_r(x, y) == pytest.approx(scipy_stats.pearsonr(x, y).statistic, abs=1e-12)
    assert pearson_r([1.0, 1.0], [2.0, 3.0]) is None and pearson_r([1.0], [2.0]) is None


def test_ratings_import_averages_raters_and_reports_r_per_language(tmp_path: Path) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    csv = tmp_path / "human.csv"
    csv.write_text("id,score,rater\nr1,4,a\nr1,5,b\nr2,2,a\nr3,3,a\nr4,5,a\nr6,4,a\nr7,2,a\nzz,3,a\n", encoding="utf-8")
    human, criteria = read_ratings(csv)
    assert human["r1"] == 4.5 and len(criteria) == 6
    doc = agreement(HAND, human, criteria)
    model = {r["id"]: 3 + int(r["id"][1:]) % 3 for r in HAND}
    ko_ids = ["r1", "r2", "r3", "r4"]
    expected = scipy_stats.pearsonr([human[i] for i in ko_ids], [model[i] for i in ko_ids]).statistic
    assert doc["by_language"]["ko"] == {"r": round(expected, 4), "n": 4}
    assert doc["by_language"]["zh"]["n"] == 2 and doc["unmatched_ids"] == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("id,score\nr1,good\n", encoding="utf-8")
    with pytest.raises(SceneSimError, match=r"bad\.csv:2: scores must be numbers"):
        read_ratings(bad)


def test_analyze_and_import_ratings_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "dialogues.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HAND), encoding="utf-8")
    csv = tmp_path / "human.csv"
    csv.write_text("id,consistency,naturalness\nr1,4,5\nr2,2,2\nr3,3,3\nr4,5,4\n", encoding="utf-8")
    assert main(["normgenesis", "import-ratings", str(run), str(csv)]) == 0
    assert main(["normgenesis", "analyze", str(run)]) == 0
    patterns = json.loads((run / "patterns.json").read_text(encoding="utf-8"))
    assert patterns["languages"]["ko"]["v2r"]["multi_step_repair"] == 0.75
    assert patterns["human_agreement"]["criteria"] == ["consistency", "naturalness"]
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "3.589 -> 4.910" in report and "1.2 refinement rounds" in report and "0.600" in report
    assert (run / "plots" / "sequences.png").stat().st_size > 1000
    assert main(["normgenesis", "analyze", str(tmp_path / "nope")]) == 2
    assert "not a normgenesis run directory" in capsys.readouterr().err
