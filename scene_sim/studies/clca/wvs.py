"""World Values Survey (wave 7) evaluation of seed 004, section 5: data, prompts, answers, metrics.

The pieces, in data-flow order:

* :func:`load_questions` / :func:`load_codebook`: the 44 questions (Q1-Q41,
  Q43-Q45) with their scales and the demographic code book, shipped as data
  in ``worlds/clca/wvs/``.
* :func:`load_survey`: the user's WVS-7 CSV export (numeric codes), checked:
  a file that is not an export, missing columns or a missing country raise
  one clear :class:`~scene_sim.errors.SceneSimError` line.
* :func:`sample_respondents`: N respondents of a country without replacement, seeded.
* :func:`persona_prompt` / :func:`cultural_prompt` / :func:`question_prompt`:
  Table 20, the Tao et al. style cultural prompt and Table 21.
* :func:`parse_answer`: generate-and-parse mode (a non-integer answer is a safeguard).
* :func:`compute_metrics`: KL with the safeguard bin and smoothing, JS, accuracy,
  exactly as DESIGN.md's "WVS evaluation" defines them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from scene_sim._resources import content_dir
from scene_sim.errors import SceneSimError, suggest
from scene_sim.prompts import load_template

__all__ = [
    "ANSWER_MODES",
    "DEMOGRAPHIC_COLUMNS",
    "PROMPTINGS",
    "SCRIPTED_POLICIES",
    "Answer",
    "Question",
    "Respondent",
    "Survey",
    "WVSConfig",
    "WVSMetrics",
    "compute_metrics",
    "cultural_prompt",
    "load_codebook",
    "load_questions",
    "load_survey",
    "parse_answer",
    "persona_prompt",
    "question_prompt",
    "run_wvs",
    "sample_respondents",
    "scripted_answer",
    "write_synthetic_survey",
]

#: Demographic columns of the WVS-7 export that the persona prompt reads.
DEMOGRAPHIC_COLUMNS = (
    "N_REGION_ISO",
    "H_SETTLEMENT",
    "H_URBRURAL",
    "Q260",
    "Q262",
    "Q263",
    "Q270",
    "Q273",
    "Q275",
    "Q279",
    "Q281",
    "Q287",
)
#: How the subject answers: generate free text and parse it, or score the K options.
ANSWER_MODES = ("generate", "choices")
#: The system prompt: the respondent's persona (Table 20) or one prompt per culture.
PROMPTINGS = ("persona", "cultural")
#: Offline respondents.
SCRIPTED_POLICIES = ("oracle", "first-option", "uniform")

_NOT_STATED = "not stated"
_LEADING_INT = re.compile(r"^\s*[\(\[]?\s*(-?\d+)(?![\d.,]*\d)")


@dataclass(frozen=True)
class Question:
    """One WVS question: ``id`` (``Q1``), ``text`` and its ``options`` (code k is ``options[k-1]``)."""

    id: str
    text: str
    options: tuple[str, ...]
    topic: str = ""

    @property
    def k(self) -> int:
        """Number of valid options."""
        return len(self.options)


@dataclass(frozen=True)
class Respondent:
    """One survey respondent: id, country, demographic codes and answers (None = no valid answer)."""

    id: str
    country: str
    demographics: Mapping[str, int | None]
    answers: Mapping[str, int | None]


@dataclass(frozen=True)
class Survey:
    """The respondents of one country from a WVS-7 export."""

    path: str
    country: str
    respondents: tuple[Respondent, ...]
    countries: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    """One answer of the subject: ``value`` (None = safeguard) and the ``raw`` output."""

    respondent: str
    question: str
    value: int | None
    raw: str


@dataclass
class WVSMetrics:
    """The evaluation's numbers (the body of ``wvs_metrics.json`` without the run settings)."""

    kl: float | None
    js: float | None
    accuracy: float | None
    safeguard_rate: float
    per_question: dict[str, dict[str, Any]] = field(default_factory=dict)
    personas_scored: int = 0
    questions_without_survey_answers: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def _wvs_dir() -> Path:
    return content_dir("worlds") / "clca" / "wvs"


@cache
def load_questions() -> tuple[Question, ...]:
    """The 44 questions of "Social Values, Norms, Stereotypes" (``worlds/clca/wvs/questions.json``)."""
    doc = json.loads((_wvs_dir() / "questions.json").read_text(encoding="utf-8"))
    return tuple(
        Question(id=q["id"], text=q["text"], options=tuple(q["options"]), topic=q.get("topic", ""))
        for q in doc["questions"]
    )


@cache
def load_codebook() -> dict[str, Any]:
    """The demographic code book (``worlds/clca/wvs/codebook.json``)."""
    return json.loads((_wvs_dir() / "codebook.json").read_text(encoding="utf-8"))


def _code(value: str, column: str, path: str, line: int) -> int | None:
    text = value.strip()
    if text == "" or text.upper() in ("NA", "NAN"):
        return None
    try:
        number = float(text)
    except ValueError:
        raise SceneSimError(
            f"{path}: line {line}: column {column} holds {text!r}, not a numeric WVS code "
            "(is this the numeric CSV export?)"
        ) from None
    if not number.is_integer():
        raise SceneSimError(f"{path}: line {line}: column {column} holds {text!r}, not an integer code")
    code = int(number)
    return code if code >= 0 else None  # negative codes: don't know, no answer, not asked, missing


def load_survey(path: str | Path, country: str, questions: Sequence[Question] | None = None) -> Survey:
    """Read one country's respondents from a WVS-7 CSV export.

    Answers outside ``1..K`` of their question (negative codes, other codes) count as no valid answer.

    Args:
        path: the CSV file (comma, semicolon or tab separated, header row first).
        country: ISO alpha-3 code as in ``B_COUNTRY_ALPHA`` (case-insensitive).
        questions: the questions whose answer columns are required (default: the 44).

    Raises:
        SceneSimError: unreadable file, not a WVS export, missing columns, bad codes, or no such country.

    """
    questions = tuple(questions or load_questions())
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SceneSimError(f"{where}: survey file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneSimError(f"{where}: cannot read the survey file ({exc.__class__.__name__})") from None
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip().strip('"') for h in next(reader, [])]
    if "D_INTERVIEW" not in header or "B_COUNTRY_ALPHA" not in header:
        raise SceneSimError(
            f"{where}: not a WVS wave 7 export (no D_INTERVIEW / B_COUNTRY_ALPHA columns in the header row)"
        )
    needed = [*DEMOGRAPHIC_COLUMNS, *(q.id for q in questions)]
    missing = [c for c in needed if c not in header]
    if missing:
        raise SceneSimError(f"{where}: WVS-7 export lacks column(s) {', '.join(missing)}")
    index = {name: i for i, name in enumerate(header)}
    want = country.strip().upper()
    seen: set[str] = set()
    rows: list[Respondent] = []
    ids: set[str] = set()
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise SceneSimError(f"{where}: line {line} has {len(row)} fields, the header has {len(header)}")
        alpha = row[index["B_COUNTRY_ALPHA"]].strip().strip('"').upper()
        seen.add(alpha)
        if alpha != want:
            continue
        rid = row[index["D_INTERVIEW"]].strip()
        if not rid or rid in ids:
            raise SceneSimError(f"{where}: line {line}: D_INTERVIEW {rid!r} is empty or repeated")
        ids.add(rid)
        demo = {c: _code(row[index[c]], c, where, line) for c in DEMOGRAPHIC_COLUMNS}
        answers: dict[str, int | None] = {}
        for q in questions:
            code = _code(row[index[q.id]], q.id, where, line)
            answers[q.id] = code if code is not None and 1 <= code <= q.k else None
        rows.append(Respondent(rid, alpha, demo, answers))
    if not rows:
        known = ", ".join(sorted(seen)) or "none"
        raise SceneSimError(f"{where}: no respondents with B_COUNTRY_ALPHA={want} (countries in the file: {known})")
    return Survey(where, want, tuple(rows), tuple(sorted(seen)))


def sample_respondents(survey: Survey, n: int, seed: int) -> list[Respondent]:
    """``n`` respondents sampled without replacement with ``seed`` (file order is the population order).

    Raises:
        SceneSimError: ``n`` < 1 or more than the country has.

    """
    pool = survey.respondents
    if n < 1:
        raise SceneSimError(f"--personas must be at least 1, got {n}")
    if n > len(pool):
        raise SceneSimError(f"--personas {n} is more than the {len(pool)} respondents of {survey.country}")
    return random.Random(seed).sample(list(pool), n)


# --------------------------------------------------------------------------- prompts


def country_name(iso3: str) -> str:
    """The country's name for prompts (the code itself when the code book does not list it)."""
    return load_codebook()["countries"].get(iso3.upper(), iso3.upper())


def _word(column: str, code: int | None) -> str:
    if code is None:
        return _NOT_STATED
    return load_codebook().get(column, {}).get(str(code), str(code))


def persona_values(respondent: Respondent) -> dict[str, str]:
    """The Table 20 fields of a respondent, codes rendered as the code book's words."""
    d = respondent.demographics
    region = d.get("N_REGION_ISO")
    regions = load_codebook().get("regions", {})
    settlement = _word("H_SETTLEMENT", d.get("H_SETTLEMENT"))
    urban = d.get("H_URBRURAL")
    if urban is not None:
        settlement = f"{settlement} ({_word('H_URBRURAL', urban).lower()})"
    return {
        "country": country_name(respondent.country),
        "settlement": settlement,
        "region": _NOT_STATED if region is None else regions.get(str(region), f"region {region}"),
        "gender": _word("Q260", d.get("Q260")),
        "age": _NOT_STATED if d.get("Q262") is None else str(d["Q262"]),
        "born": _word("Q263", d.get("Q263")),
        "marital_status": _word("Q273", d.get("Q273")),
        "household": _NOT_STATED if d.get("Q270") is None else str(d["Q270"]),
        "education": _word("Q275", d.get("Q275")),
        "profession": _word("Q281", d.get("Q281")),
        "employment": _word("Q279", d.get("Q279")),
        "social_class": _word("Q287", d.get("Q287")),
    }


def persona_prompt(respondent: Respondent) -> str:
    """The persona system prompt of Table 20 (``agents/clca/wvs_persona.md``)."""
    return load_template("clca/wvs_persona").render(**persona_values(respondent))[0]


def cultural_prompt(country: str) -> str:
    """The cultural-prompting system prompt (``agents/clca/wvs_cultural.md``): one per culture, no demographics."""
    return load_template("clca/wvs_cultural").render(country=country_name(country))[0]


def question_text(question: Question) -> str:
    """The question with its numbered options."""
    options = "\n".join(f"{k}. {option}" for k, option in enumerate(question.options, start=1))
    return f"{question.text}\n{options}"


def question_prompt(question: Question) -> str:
    """The user prompt of Table 21 (``agents/clca/wvs_question.md``)."""
    return load_template("clca/wvs_question").render(question=question_text(question))[1]


# --------------------------------------------------------------------------- answers


def parse_answer(raw: str, k: int) -> int | None:
    """Generate-and-parse mode: the integer the output starts with, if it is an option; else None (safeguard).

    ``"2"``, ``" 2."``, ``"(2) Rather important"`` parse as 2; ``"Rather important"``,
    ``"2.5"``, ``"7"`` (for K = 4) and an empty output are safeguards.
    """
    match = _LEADING_INT.match(raw or "")
    if match is None:
        return None
    value = int(match.group(1))
    return value if 1 <= value <= k else None


def scripted_answer(policy: str, respondent: Respondent, question: Question, seed: int) -> Answer:
    """An offline respondent's answer: ``oracle``, ``first-option`` or ``uniform``.

    Raises:
        SceneSimError: an unknown policy.

    """
    if policy == "oracle":
        value = respondent.answers.get(question.id)
    elif policy == "first-option":
        value = 1
    elif policy == "uniform":
        value = random.Random(f"{seed}:{respondent.id}:{question.id}").randint(1, question.k)
    else:
        raise SceneSimError(
            f"unknown scripted respondent 'scripted/{policy}'; use one of "
            + ", ".join(f"scripted/{p}" for p in SCRIPTED_POLICIES)
            + suggest(policy, SCRIPTED_POLICIES)
        )
    return Answer(respondent.id, question.id, value, "" if value is None else str(value))


# --------------------------------------------------------------------------- metrics


def _smooth(dist: Sequence[float], eps: float) -> list[float]:
    return [(p + eps) / (1 + len(dist) * eps) for p in dist]


def _kl(p: Sequence[float], q: Sequence[float]) -> float:
    return float(sum(pk * math.log(pk / qk) for pk, qk in zip(p, q, strict=True) if pk > 0))


def _js(p: Sequence[float], q: Sequence[float]) -> float:
    # scipy.spatial.distance.jensenshannon with the natural base, without importing scipy at command start
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    value = (_kl(p, m) + _kl(q, m)) / 2
    return math.sqrt(max(value, 0.0))


def compute_metrics(
    questions: Sequence[Question],
    survey: Survey,
    sampled: Sequence[Respondent],
    answers: Mapping[tuple[str, str], int | None],
    epsilon: float = 1e-6,
) -> WVSMetrics:
    """KL (safeguard bin, smoothed), JS (unsmoothed, natural base) and accuracy, as DESIGN.md defines them.

    Args:
        questions: the questions evaluated.
        survey: all respondents of the country (Q_i is their valid-answer distribution).
        sampled: the personas (P_i is the subject's answers over them).
        answers: ``(respondent id, question id) -> answer`` (None = safeguard).
        epsilon: the smoothing of both distributions for KL.

    Returns:
        The metrics. A question no respondent of the country answered validly has no Q_i:
        it is listed in ``questions_without_survey_answers`` and left out of the means. A persona
        with no valid survey answer is left out of the accuracy mean.

    """
    per_question: dict[str, dict[str, Any]] = {}
    kls: list[float] = []
    jss: list[float] = []
    skipped: list[str] = []
    safeguards = 0
    for q in questions:
        survey_counts = [0] * (q.k + 1)
        for r in survey.respondents:
            code = r.answers.get(q.id)
            if code is not None:
                survey_counts[code - 1] += 1
        model_counts = [0] * (q.k + 1)
        for r in sampled:
            value = answers.get((r.id, q.id))
            if value is None or not 1 <= value <= q.k:
                model_counts[q.k] += 1
                safeguards += 1
            else:
                model_counts[value - 1] += 1
        n_survey = sum(survey_counts)
        model_dist = [c / len(sampled) for c in model_counts]
        if n_survey == 0:
            skipped.append(q.id)
            per_question[q.id] = {"kl": None, "js": None, "model_dist": model_dist, "survey_dist": None}
            continue
        survey_dist = [c / n_survey for c in survey_counts]
        kl = _kl(_smooth(model_dist, epsilon), _smooth(survey_dist, epsilon))
        js = _js(model_dist, survey_dist)
        kls.append(kl)
        jss.append(js)
        per_question[q.id] = {"kl": kl, "js": js, "model_dist": model_dist, "survey_dist": survey_dist}
    scores: list[float] = []
    for r in sampled:
        valid = [q for q in questions if r.answers.get(q.id) is not None]
        if valid:
            right = sum(1 for q in valid if answers.get((r.id, q.id)) == r.answers[q.id])
            scores.append(right / len(valid))
    total = len(sampled) * len(questions)
    return WVSMetrics(
        kl=sum(kls) / len(kls) if kls else None,
        js=sum(jss) / len(jss) if jss else None,
        accuracy=sum(scores) / len(scores) if scores else None,
        safeguard_rate=safeguards / total if total else 0.0,
        per_question=per_question,
        personas_scored=len(scores),
        questions_without_survey_answers=skipped,
    )


# --------------------------------------------------------------------------- the evaluation


@dataclass(frozen=True)
class WVSConfig:
    """One evaluation: what ``clca wvs`` was asked to do."""

    survey: str
    country: str
    subject: str
    personas: int
    out: str
    seed: int = 0
    prompting: str = "persona"
    answer_mode: str = "generate"
    epsilon: float = 1e-6
    max_tokens: int = 8
    concurrency: int = 32
    cache: str = "read-write"
    quiet: bool = False
    plots: bool = True
    #: A subset of the 44 question ids (smoke runs); empty = all 44, the contract's evaluation.
    questions: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        return {
            "survey": str(Path(self.survey).resolve()),
            "country": self.country.upper(),
            "subject": self.subject,
            "personas": self.personas,
            "seed": self.seed,
            "prompting": self.prompting,
            "answer_mode": self.answer_mode,
            "max_tokens": self.max_tokens,
            "questions": list(self.questions),
        }


def _system_prompt(config: WVSConfig, respondent: Respondent) -> str:
    return cultural_prompt(config.country) if config.prompting == "cultural" else persona_prompt(respondent)


async def _model_answers(
    backend: Any, config: WVSConfig, respondent: Respondent, questions: Sequence[Question]
) -> list[Answer]:
    from scene_sim.backends.base import GenerateRequest

    system = _system_prompt(config, respondent)
    out: list[Answer] = []
    # one persona's questions in order: its system prompt stays in the backend's prefix cache,
    # and personas run concurrently, so each question is batched across personas
    for q in questions:
        messages = ({"role": "user", "content": question_prompt(q)},)
        if config.answer_mode == "choices":
            options = tuple(str(k) for k in range(1, q.k + 1))
            request = GenerateRequest(messages, system=system, choices=options, temperature=0.0, seed=config.seed)
        else:
            request = GenerateRequest(
                messages, system=system, temperature=0.0, max_tokens=config.max_tokens, seed=config.seed
            )
        raw = (await backend.generate(request)).text
        value = parse_answer(raw, q.k)  # a chosen option parses to itself
        out.append(Answer(respondent.id, q.id, value, raw))
    return out


def run_wvs(config: WVSConfig) -> dict[str, Any]:
    """Run the evaluation into ``config.out``; resumable (personas already answered are skipped).

    Writes ``answers.jsonl`` (one record per persona, the resume log), ``answers.csv``,
    ``wvs_metrics.json``, ``report.md`` and the plots.

    Returns:
        The ``wvs_metrics.json`` object.

    Raises:
        SceneSimError: bad input, or ``out`` holding a different evaluation.

    """
    import asyncio

    from scene_sim.modelspec import ModelSpec
    from scene_sim.records import RecordFile
    from scene_sim.rundir import atomic_write_text

    if config.prompting not in PROMPTINGS:
        raise SceneSimError(f"--prompting must be one of {', '.join(PROMPTINGS)}, got {config.prompting!r}")
    if config.answer_mode not in ANSWER_MODES:
        raise SceneSimError(f"--answer must be one of {', '.join(ANSWER_MODES)}, got {config.answer_mode!r}")
    if config.epsilon <= 0:
        raise SceneSimError(f"--epsilon must be positive, got {config.epsilon}")
    spec = ModelSpec.parse(config.subject)
    scripted = spec.provider == "scripted"
    if scripted and spec.name not in SCRIPTED_POLICIES:
        scripted_answer(spec.name, Respondent("", "", {}, {}), load_questions()[0], 0)  # raises with the list
    questions = load_questions()
    if config.questions:
        known = {q.id: q for q in questions}
        unknown = [qid for qid in config.questions if qid not in known]
        if unknown:
            raise SceneSimError(f"unknown WVS question id(s) {', '.join(unknown)}; the 44 are Q1-Q41, Q43-Q45")
        questions = tuple(known[qid] for qid in config.questions)
    survey = load_survey(config.survey, config.country, questions)
    sampled = sample_respondents(survey, config.personas, config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ident_path = out / "wvs_run.json"
    ident = config.identity()
    if ident_path.exists():
        try:
            before = json.loads(ident_path.read_text(encoding="utf-8"))
        except ValueError:
            before = None
        if before != ident:
            raise SceneSimError(f"{out} holds a different WVS evaluation ({ident_path.name} differs); use a new --out")
    else:
        atomic_write_text(ident_path, json.dumps(ident, indent=1) + "\n")
    log = RecordFile(out / "answers.jsonl")
    done = log.ids("respondent")
    todo = [r for r in sampled if r.id not in done]

    def record(respondent: Respondent, answers: Sequence[Answer]) -> None:
        log.append({"respondent": respondent.id, "answers": {a.question: [a.value, a.raw] for a in answers}})

    if scripted:
        for r in todo:
            record(r, [scripted_answer(spec.name, r, q, config.seed) for q in questions])
        accounting: dict[str, Any] = {}
    else:
        accounting = asyncio.run(_run_model(config, todo, questions, record, len(done)))
    got: dict[tuple[str, str], int | None] = {}
    raws: dict[tuple[str, str], str] = {}
    for rec in log:
        for qid, (value, raw) in rec["answers"].items():
            got[(str(rec["respondent"]), qid)] = value
            raws[(str(rec["respondent"]), qid)] = raw
    missing = [r.id for r in sampled if (r.id, questions[0].id) not in got]
    if missing:
        raise SceneSimError(
            f"{len(missing)} persona(s) failed (e.g. respondent {missing[0]}); re-run the same command to retry them"
        )
    metrics = compute_metrics(questions, survey, sampled, got, config.epsilon)
    result = {
        "country": survey.country,
        "subject": config.subject,
        "prompting": config.prompting,
        "answer_mode": config.answer_mode,
        "personas": len(sampled),
        "respondents": [r.id for r in sampled],
        "questions": [q.id for q in questions],
        "epsilon": config.epsilon,
        "kl": metrics.kl,
        "js": metrics.js,
        "accuracy": metrics.accuracy,
        "safeguard_rate": metrics.safeguard_rate,
        "per_question": metrics.per_question,
        "seed": config.seed,
        "survey_respondents": len(survey.respondents),
        "personas_scored": metrics.personas_scored,
        "questions_without_survey_answers": metrics.questions_without_survey_answers,
        "smoothing": "p~ = (p + eps) / (1 + (K+1) eps) on K+1 bins (last: safeguard), both P and Q, for KL only",
        "accounting": accounting,
    }
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["respondent", "question", "answer", "raw"])
    for r in sampled:
        for q in questions:
            value = got[(r.id, q.id)]
            writer.writerow([r.id, q.id, "" if value is None else value, raws[(r.id, q.id)]])
    atomic_write_text(out / "answers.csv", buf.getvalue())
    atomic_write_text(out / "wvs_metrics.json", json.dumps(result, indent=1) + "\n")
    from scene_sim.studies.clca.wvs_report import write_report

    write_report(out, result, questions, plots=config.plots)
    return result


async def _run_model(
    config: WVSConfig,
    todo: Sequence[Respondent],
    questions: Sequence[Question],
    record: Any,
    already: int,
) -> dict[str, Any]:
    from scene_sim.context import RunContext
    from scene_sim.jobs import run_jobs

    context = RunContext(cache_mode=config.cache)
    try:
        backend = context.backend(config.subject)

        async def work(respondent: Respondent) -> None:
            record(respondent, await _model_answers(backend, config, respondent, questions))

        summary = await run_jobs(
            todo,
            work,
            concurrency=config.concurrency,
            context=context,
            label="personas",
            already_done=already,
            quiet=config.quiet,
            name=lambda r: f"respondent {r.id}",
        )
        for line in summary.failures[:3]:
            import sys

            print(f"scene-sim: {line}", file=sys.stderr)
        return context.accounting()
    finally:
        await context.aclose()


def write_synthetic_survey(
    path: str | Path,
    countries: Sequence[str] = ("DEU",),
    n: int = 50,
    seed: int = 0,
    *,
    missing_rate: float = 0.05,
) -> Path:
    """Write a made-up survey in the WVS-7 export's column format (NOT real WVS data).

    The real file cannot ship (registration), so tests, benchmarks and the smoke
    spec use these. Each country leans towards different options, answers are
    missing (negative codes) at ``missing_rate``, demographics are random codes.
    """
    rng = random.Random(seed)
    questions = load_questions()
    header = ["D_INTERVIEW", "B_COUNTRY_ALPHA", *DEMOGRAPHIC_COLUMNS, *(q.id for q in questions)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    ranges = {
        "N_REGION_ISO": (1, 9),
        "H_SETTLEMENT": (1, 5),
        "H_URBRURAL": (1, 2),
        "Q260": (1, 2),
        "Q262": (18, 90),
        "Q263": (1, 2),
        "Q270": (1, 8),
        "Q273": (1, 6),
        "Q275": (0, 8),
        "Q279": (1, 8),
        "Q281": (0, 11),
        "Q287": (1, 5),
    }
    for c, country in enumerate(countries):
        lean = {
            q.id: [rng.random() + (2.0 if k == (c + i) % q.k else 0.0) for k in range(q.k)]
            for i, q in enumerate(questions)
        }
        for i in range(n):
            row: list[object] = [f"{c + 1}{i:05d}", country]
            row += [rng.randint(*ranges[col]) for col in DEMOGRAPHIC_COLUMNS]
            for q in questions:
                if rng.random() < missing_rate:
                    row.append(rng.choice((-1, -2)))
                else:
                    row.append(rng.choices(range(1, q.k + 1), weights=lean[q.id])[0])
            writer.writerow(row)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(buf.getvalue(), encoding="utf-8")
    return target
