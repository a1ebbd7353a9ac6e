"""WVS evaluation: survey loading, prompts, answer modes, metrics against scipy, the command's files and errors."""

from __future__ import annotations

import asyncio
import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from scene_sim.backends.base import GenerateRequest, GenerateResponse
from scene_sim.cli import main
from scene_sim.studies.clca import wvs
from scene_sim.studies.clca.wvs import (
    DEMOGRAPHIC_COLUMNS,
    WVSConfig,
    load_questions,
    load_survey,
    parse_answer,
    write_synthetic_survey,
)

QUESTIONS = load_questions()
HEADER = ["D_INTERVIEW", "B_COUNTRY_ALPHA", *DEMOGRAPHIC_COLUMNS, *(q.id for q in QUESTIONS)]


def _write(path: Path, rows: list[dict[str, Any]], header: list[str] = HEADER, delimiter: str = ",") -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(col, 1) for col in header])
    return path


def _survey_rows() -> list[dict[str, Any]]:
    """Six German and two Japanese respondents with varied, partly missing answers."""
    rows = []
    for i in range(6):
        row: dict[str, Any] = {"D_INTERVIEW": 276000 + i, "B_COUNTRY_ALPHA": "DEU", "Q262": 20 + 7 * i}
        for j, q in enumerate(QUESTIONS):
            row[q.id] = (i + j) % q.k + 1
        rows.append(row)
    rows[0]["Q1"] = -1  # don't know
    rows[1]["Q2"] = -2  # no answer
    rows[2]["Q3"] = 9  # not an option of a 4-option question: no valid answer
    for i in range(2):
        rows.append({"D_INTERVIEW": 392000 + i, "B_COUNTRY_ALPHA": "JPN", **{q.id: 1 for q in QUESTIONS}})
    return rows


@pytest.fixture
def survey(tmp_path: Path) -> Path:
    return _write(tmp_path / "wvs7.csv", _survey_rows())


def _run(
    tmp_path: Path, survey: Path, subject: str, personas: int = 4, *extra: str, out: str = "out", plots: bool = False
) -> dict:
    code = main(
        [
            "clca",
            "wvs",
            "--survey",
            str(survey),
            "--country",
            "DEU",
            "--subject",
            subject,
            "--personas",
            str(personas),
            "--seed",
            "3",
            "--quiet",
            "--out",
            str(tmp_path / out),
            *extra,
            *([] if plots else ["--no-plots"]),
        ]
    )
    assert code == 0
    return json.loads((tmp_path / out / "wvs_metrics.json").read_text())


def _scipy_metrics(survey: Path, answers_csv: Path, eps: float) -> tuple[float, float, float]:
    """KL, JS and accuracy straight from the two files, with scipy."""
    with survey.open() as fh:
        people = [r for r in csv.DictReader(fh) if r["B_COUNTRY_ALPHA"] == "DEU"]
    with answers_csv.open() as fh:
        answers = list(csv.DictReader(fh))
    kls, jss = [], []
    for q in QUESTIONS:
        truth = [int(r[q.id]) for r in people if 1 <= int(r[q.id]) <= q.k]
        qd = [truth.count(k) / len(truth) for k in range(1, q.k + 1)] + [0.0]
        got = [a["answer"] for a in answers if a["question"] == q.id]
        pd = [sum(1 for g in got if g == str(k)) / len(got) for k in range(1, q.k + 1)]
        pd.append(sum(1 for g in got if g == "") / len(got))
        ps = [(p + eps) / (1 + (q.k + 1) * eps) for p in pd]
        qs = [(p + eps) / (1 + (q.k + 1) * eps) for p in qd]
        kls.append(entropy(ps, qs))
        jss.append(jensenshannon(pd, qd))
    by_person: dict[str, list[bool]] = {}
    own = {r["D_INTERVIEW"]: r for r in people}
    for a in answers:
        q = next(q for q in QUESTIONS if q.id == a["question"])
        truth = int(own[a["respondent"]][q.id])
        if 1 <= truth <= q.k:
            by_person.setdefault(a["respondent"], []).append(a["answer"] == str(truth))
    acc = sum(sum(v) / len(v) for v in by_person.values()) / len(by_person)
    return sum(kls) / len(kls), sum(jss) / len(jss), acc


@pytest.mark.parametrize("subject", ["scripted/first-option", "scripted/uniform", "scripted/oracle"])
def test_metrics_equal_scipy(tmp_path: Path, survey: Path, subject: str) -> None:
    got = _run(tmp_path, survey, subject, 5, "--epsilon", "1e-4")
    kl, js, acc = _scipy_metrics(survey, tmp_path / "out" / "answers.csv", 1e-4)
    assert got["kl"] == pytest.approx(kl, rel=1e-9)
    assert got["js"] == pytest.approx(js, rel=1e-9)
    assert got["accuracy"] == pytest.approx(acc, rel=1e-9)
    for q in QUESTIONS:
        pq = got["per_question"][q.id]
        assert len(pq["model_dist"]) == len(pq["survey_dist"]) == q.k + 1
        assert pq["survey_dist"][-1] == 0.0
        assert math.isclose(sum(pq["model_dist"]), 1.0)


def test_oracle_scores_accuracy_one_and_safeguards_where_no_answer(tmp_path: Path, survey: Path) -> None:
    got = _run(tmp_path, survey, "scripted/oracle", 6)
    assert got["accuracy"] == 1.0
    # the three missing / invalid survey answers are the oracle's only safeguards
    assert got["safeguard_rate"] == pytest.approx(3 / (6 * 44))
    first = _run(tmp_path, survey, "scripted/first-option", 6, out="first")
    assert first["accuracy"] < 1.0 and first["safeguard_rate"] == 0.0


@pytest.mark.slow  # draws the plots (a few seconds)
def test_metrics_file_and_answers_csv_follow_the_contract(tmp_path: Path, survey: Path) -> None:
    got = _run(tmp_path, survey, "scripted/uniform", 4, plots=True)
    for key in ("country", "subject", "prompting", "personas", "respondents", "questions", "epsilon", "kl", "js"):
        assert key in got
    assert {"accuracy", "safeguard_rate", "per_question"} <= got.keys()
    assert got["country"] == "DEU" and got["prompting"] == "persona" and got["personas"] == 4
    assert got["questions"] == [f"Q{i}" for i in range(1, 42)] + ["Q43", "Q44", "Q45"]
    assert got["epsilon"] == 1e-6
    assert len(set(got["respondents"])) == 4 and all(r.startswith("276") for r in got["respondents"])
    assert set(got["per_question"]["Q1"]) >= {"kl", "js", "model_dist", "survey_dist"}
    with (tmp_path / "out" / "answers.csv").open() as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["respondent", "question", "answer", "raw"]
        rows = list(reader)
    assert len(rows) == 4 * 44
    assert {r[0] for r in rows} == set(got["respondents"])
    for name in ("report.md", "per_question_divergence.png", "answer_histograms.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_sampling_is_seeded_without_replacement(tmp_path: Path, survey: Path) -> None:
    a = _run(tmp_path, survey, "scripted/first-option", 6, out="a")
    b = _run(tmp_path, survey, "scripted/first-option", 6, out="b")
    assert a["respondents"] == b["respondents"]
    assert sorted(a["respondents"]) == [str(276000 + i) for i in range(6)]


def test_rerun_resumes_and_other_settings_are_refused(tmp_path: Path, survey: Path, capsys) -> None:
    first = _run(tmp_path, survey, "scripted/uniform", 4)
    again = _run(tmp_path, survey, "scripted/uniform", 4)
    assert first["kl"] == again["kl"]
    assert len((tmp_path / "out" / "answers.jsonl").read_text().splitlines()) == 4
    capsys.readouterr()
    code = main(
        [
            "clca",
            "wvs",
            "--survey",
            str(survey),
            "--country",
            "DEU",
            "--subject",
            "scripted/oracle",
            "--personas",
            "4",
            "--seed",
            "3",
            "--no-plots",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "different WVS evaluation" in capsys.readouterr().err


def _bad(
    tmp_path: Path, survey: Path, capsys, country: str = "DEU", personas: str = "2", subject: str = "scripted/oracle"
):
    capsys.readouterr()
    code = main(
        [
            "clca",
            "wvs",
            "--survey",
            str(survey),
            "--country",
            country,
            "--subject",
            subject,
            "--personas",
            personas,
            "--out",
            str(tmp_path / "bad"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_is_one_clear_line(tmp_path: Path, survey: Path, capsys) -> None:
    assert "no respondents with B_COUNTRY_ALPHA=FRA" in _bad(tmp_path, survey, capsys, country="FRA")
    assert "DEU, JPN" in _bad(tmp_path, survey, capsys, country="FRA")
    assert "not found" in _bad(tmp_path, tmp_path / "nope.csv", capsys)
    not_wvs = tmp_path / "other.csv"
    not_wvs.write_text("name,age\nann,3\n")
    assert "not a WVS wave 7 export" in _bad(tmp_path, not_wvs, capsys)
    short = _write(tmp_path / "short.csv", _survey_rows(), [c for c in HEADER if c not in ("Q275", "Q44")])
    assert "lacks column(s) Q275, Q44" in _bad(tmp_path, short, capsys)
    text = _write(tmp_path / "labels.csv", [{**_survey_rows()[0], "Q5": "Very important"}])
    assert "not a numeric WVS code" in _bad(tmp_path, text, capsys)
    assert "more than the 6 respondents" in _bad(tmp_path, survey, capsys, personas="7")
    assert "scripted/uniform" in _bad(tmp_path, survey, capsys, subject="scripted/nobody")


def test_loader_reads_semicolons_and_treats_negative_codes_as_missing(tmp_path: Path) -> None:
    path = _write(tmp_path / "semi.csv", _survey_rows(), delimiter=";")
    survey = load_survey(path, "deu")
    assert len(survey.respondents) == 6 and survey.countries == ("DEU", "JPN")
    first = survey.respondents[0]
    assert first.answers["Q1"] is None and survey.respondents[2].answers["Q3"] is None
    assert first.demographics["Q262"] == 20


def test_synthetic_survey_loads_per_country(tmp_path: Path) -> None:
    path = write_synthetic_survey(tmp_path / "s.csv", ("DEU", "MEX"), n=12, seed=1)
    assert len(load_survey(path, "MEX").respondents) == 12


def test_prompts_follow_tables_20_and_21() -> None:
    person = wvs.Respondent(
        "1",
        "DEU",
        {**dict.fromkeys(DEMOGRAPHIC_COLUMNS), "Q260": 2, "Q262": 44, "Q273": 6, "Q287": 3, "H_SETTLEMENT": 1},
        {},
    )
    system = wvs.persona_prompt(person)
    assert system.startswith("You are currently living in Germany and here is your basic demographic information:")
    assert "Gender: Female" in system and "Age: 44" in system and "Marital status: Single" in system
    assert "Class: Lower middle class" in system and "Settlement: Capital city, not stated" in system
    cultural = wvs.cultural_prompt("DEU")
    assert "Germany" in cultural and "Female" not in cultural and "Age" not in cultural
    user = wvs.question_prompt(QUESTIONS[0])
    assert user.startswith("Please answer the following question, output the integer option when instructed")
    assert "QUESTION: For each of the following" in user and "\n4. Not at all important" in user
    assert user.endswith("ANSWER:")


def test_questions_have_the_wvs7_scales() -> None:
    k = {q.id: q.k for q in QUESTIONS}
    assert len(QUESTIONS) == 44 and "Q42" not in k
    expected = {**dict.fromkeys(range(1, 7), 4), **dict.fromkeys(range(7, 27), 2), **dict.fromkeys(range(27, 33), 4)}
    expected |= {**dict.fromkeys(range(33, 42), 5), **dict.fromkeys(range(43, 46), 3)}
    assert k == {f"Q{i}": v for i, v in expected.items()}


@pytest.mark.parametrize(
    ("raw", "k", "value"),
    [
        ("2", 4, 2),
        (" 3.", 4, 3),
        ("(1) Very important", 4, 1),
        ("4\n", 4, 4),
        ("Rather important", 4, None),
        ("2.5", 4, None),
        ("7", 4, None),
        ("0", 4, None),
        ("-1", 4, None),
        ("", 2, None),
    ],
)
def test_generate_mode_parses_integers_and_safeguards_the_rest(raw: str, k: int, value: int | None) -> None:
    assert parse_answer(raw, k) == value


class _Stub:
    """A backend stand-in: free text from a list, choices answered with the last option."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.requests: list[GenerateRequest] = []

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        self.requests.append(request)
        if request.choices is not None:
            return GenerateResponse(text=request.choices[-1])
        return GenerateResponse(text=self.texts[len(self.requests) - 1])


def test_answer_modes_build_the_right_requests(tmp_path: Path) -> None:
    person = wvs.Respondent("7", "DEU", dict.fromkeys(DEMOGRAPHIC_COLUMNS), {})
    qs = QUESTIONS[:3]
    base = {"survey": "x", "country": "DEU", "subject": "local", "personas": 1, "out": str(tmp_path)}
    gen = _Stub(["2", "I would say rather important", "9"])
    got = asyncio.run(wvs._model_answers(gen, WVSConfig(**base), person, qs))
    assert [a.value for a in got] == [2, None, None]
    assert got[1].raw == "I would say rather important"
    assert all(r.choices is None and r.temperature == 0.0 for r in gen.requests)
    assert gen.requests[0].system.startswith("You are currently living in Germany")
    chooser = _Stub([])
    got = asyncio.run(wvs._model_answers(chooser, WVSConfig(**base, answer_mode="choices"), person, qs))
    assert [a.value for a in got] == [4, 4, 4]
    assert chooser.requests[0].choices == ("1", "2", "3", "4")
    cultural = _Stub(["1", "1", "1"])
    asyncio.run(wvs._model_answers(cultural, WVSConfig(**base, prompting="cultural"), person, qs))
    assert cultural.requests[0].system == wvs.cultural_prompt("DEU")
