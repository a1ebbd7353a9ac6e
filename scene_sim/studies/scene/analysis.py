"""Analyse a run directory: judge, audit, collect, compute statistics, report.

:func:`analyze_run` labels the episodes that have no ``labels/<id>.json``
yet (judge and fidelity audit, concurrently but bounded, each labels file
written atomically as soon as it is done; a failure on one episode never
stops the rest), then reduces every episode to a compact
:class:`~scene_sim.studies.scene.collect.EpisodeSummary` and writes ``episodes.csv``,
``metrics.json``, ``report.md``, ``report.html`` and the PNG plots. Once
labels exist no model is needed: ``scene-sim analyze RUN_DIR`` re-computes
everything from the files.

Fast at scale: every labels document carries its episode's stream summary
(``summary``, with a digest of the labels it came from), written once when
the episode is judged, so analysis reads the labels files and no event log;
and each labels folder keeps an index, ``.summaries.jsonl`` (each summary
with its labels file's mtime and size), so a repeated analysis reads one file
and re-reads only what changed. A stale or missing summary falls back to the
event log; the results are the same either way (``stored_summaries=False``
forces the reference path).

Re-judging: :func:`labelling_for` sends another judge's labels (``scene-sim
analyze RUN_DIR --judge MODEL [--classifier]`` on a run labelled by a
different judge) to a new folder ``labels-<judge-slug>/`` with its analysis in
``labels-<judge-slug>/analysis/``; ``labels/`` is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import functools
import io
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scene_sim.errors import SceneSimError
from scene_sim.modelspec import ModelSpec
from scene_sim.rundir import RunDir, atomic_write_bytes, atomic_write_text
from scene_sim.studies.scene.collect import EpisodeSummary, summarize, summary_from_record, summary_record
from scene_sim.studies.scene.judge import (
    AUDIT_LABELS,
    Episode,
    HeuristicJudge,
    JudgeOutput,
    _scripted_kind,
    audit_rules,
    compute_episode_metrics,
    labels_from_dicts,
    load_episode,
    make_auditor,
    make_judge,
)
from scene_sim.studies.scene.oracle import LABELS
from scene_sim.studies.scene.report import ReportInfo, write_report
from scene_sim.studies.scene.stats import cohen_kappa, compute_metrics, episode_repair
from scene_sim.studies.scene.taxonomy import Taxonomy

__all__ = [
    "CSV_COLUMNS",
    "CSV_EXTRA_COLUMNS",
    "AnalysisResult",
    "analyze_run",
    "episode_row",
    "index_labels",
    "judge_agreement",
    "judge_episode",
    "label_episode",
    "labelling_for",
    "write_outputs",
]

#: The contract columns of ``episodes.csv``, in order.
CSV_COLUMNS = (
    "episode_id", "subject", "event", "norm", "elicitor", "sanction", "precedent", "rep", "seed", "end_reason",
    "demonstrations", "breaches", "sanctions", "repairs", "repaired", "x_e", "y_e", "validity",
)  # fmt: skip
#: Extra columns written after the contract ones.
CSV_EXTRA_COLUMNS = (
    "scenario_id", "subject_actor", "judge", "judge_source", "judge_failure", "sanctions_repaired",
    "subject_actions", "labelled_actions", "compliant_actions", "persona_breach", "shape_match", "ticks",
)  # fmt: skip


@dataclass(frozen=True)
class AnalysisResult:
    """What :func:`analyze_run` produced.

    Attributes:
        rows: episode id -> its ``episodes.csv`` row (None where the CSV cell is empty).
        metrics: the ``metrics.json`` object.
        summaries: the compact per-episode summaries the statistics ran on.
        files: the files written.
        labelled: episodes labelled by this call.
        judge_failures: episodes whose LLM judge failed (heuristic labels stored).
        skipped: episode id -> why it could not be analysed.
        agreement: LLM vs heuristic judge agreement (None when not measured).

    """

    rows: dict[str, dict[str, Any]] = field(repr=False)
    metrics: dict[str, Any] = field(repr=False)
    summaries: tuple[EpisodeSummary, ...] = field(default=(), repr=False)
    files: tuple[Path, ...] = ()
    labelled: tuple[str, ...] = field(default=(), repr=False)
    judge_failures: tuple[str, ...] = field(default=(), repr=False)
    skipped: Mapping[str, str] = field(default_factory=dict)
    agreement: Mapping[str, Any] | None = None


def episode_row(s: EpisodeSummary, *, repair_window: int = 3) -> dict[str, Any]:
    """The ``episodes.csv`` row of an episode (contract columns first; None for an empty cell)."""
    repaired, done = episode_repair(s.sanction_marks, s.repair_marks, repair_window)
    return {
        "episode_id": s.episode_id,
        "subject": s.subject,
        "event": s.event,
        "norm": s.norm,
        "elicitor": s.elicitor,
        "sanction": s.sanction,
        "precedent": s.precedent,
        "rep": s.rep,
        "seed": s.seed,
        "end_reason": s.end_reason,
        "demonstrations": s.demonstrations,
        "breaches": s.breaches,
        "sanctions": s.sanctions,
        "repairs": s.repairs,
        "repaired": repaired,
        "x_e": s.x_e if s.breaches else None,
        "y_e": s.y_e,
        "validity": s.validity,
        "scenario_id": s.scenario_id,
        "subject_actor": s.subject_actor,
        "judge": s.judge,
        "judge_source": s.judge_source,
        "judge_failure": int(s.judge_failure),
        "sanctions_repaired": done,
        "subject_actions": s.subject_actions,
        "labelled_actions": s.labelled_actions,
        "compliant_actions": s.compliant_actions,
        "persona_breach": int(s.persona_breach),
        "shape_match": int(s.shape_match) if s.breaches else None,
        "ticks": s.ticks,
    }


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = (*CSV_COLUMNS, *CSV_EXTRA_COLUMNS)
    writer.writerow(columns)
    # csv writes None as an empty cell and floats with repr(), as the contract wants: no per-cell Python
    writer.writerows([row.get(c) for c in columns] for row in rows)
    return buf.getvalue()


def judge_agreement(pairs: Sequence[tuple[str, str]], episodes: int) -> dict[str, Any] | None:
    """Cohen's kappa between two judges' labels of the same turns, overall and per label (one-vs-rest).

    Args:
        pairs: ``(llm_label, heuristic_label)`` per turn.
        episodes: how many episodes the turns come from.

    """
    if not pairs:
        return None
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    per = {lab: cohen_kappa([str(x == lab) for x in a], [str(y == lab) for y in b]) for lab in LABELS}
    return {"episodes": episodes, "turns": len(pairs), "kappa": cohen_kappa(a, b), "per_label": per}


async def label_episode(
    episode: Episode,
    judge: Any,
    auditor: Any,
    *,
    taxonomy: Taxonomy,
) -> dict[str, Any]:
    """Judge and audit one episode; returns the labels document (never raises for model faults).

    An unexpected error in the judge (a bug, an unknown norm) falls back to the
    heuristic labels with ``judge_failure: true``; one in the auditor to the
    rule audit.
    """
    try:
        output: JudgeOutput = await judge.label(episode)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        base = HeuristicJudge(taxonomy).label_sync(episode) if episode.norm in taxonomy.norms else None
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        output = JudgeOutput(
            turn_labels=base.turn_labels if base else (),
            episode_metrics=base.episode_metrics if base else compute_episode_metrics(episode, ()),
            model=getattr(judge, "model", "?"),
            source="heuristic" if base else "none",
            judge_failure=True,
            error=msg,
            reliable=False,
            note="the judge raised; heuristic labels used",
        )
    try:
        audit = await auditor.audit(episode, output)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        audit = {
            **audit_rules(episode, output),
            "audit_failure": True,
            "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
        }
    doc = output.to_dict()
    label = audit.get("label") if audit.get("label") in AUDIT_LABELS else "INVALID"
    doc["fidelity"] = {"label": label, "justification": str(audit.get("justification", ""))}
    doc["audit"] = {k: v for k, v in audit.items() if k not in ("label", "justification")}
    doc["episode_id"] = episode.episode_id
    try:  # the stream summary, so that analysing the run later needs no event log
        doc["summary"] = summary_record(summarize(episode, labels_from_dicts(doc["turn_labels"])), doc["turn_labels"])
    except Exception:  # the slow path (event log) still works without it
        doc.pop("summary", None)
    return doc


async def judge_episode(
    events: Sequence[Mapping[str, Any]],
    *,
    judge: str | None = None,
    context: Any = None,
    auditor: str | None = None,
    classifier: bool = False,
    taxonomy: Taxonomy | None = None,
    episode_id: str | None = None,
) -> dict[str, Any]:
    """Judge and audit one episode from its events; returns the ``labels/<id>.json`` document.

    What a sweep calls as each episode finishes (then writes the result with
    :meth:`RunDir.write_labels`). Model faults never raise (heuristic / rule
    fallbacks, recorded in the document).

    Args:
        events: the episode's event dicts.
        judge: judge model string (None: the episode's ``models.judge``, else ``scripted``).
        context: a :class:`~scene_sim.context.RunContext` (required for LLM judges).
        auditor: auditor model string (None: the judge's).
        classifier: LLM judges: the per-category classifier (section 5.1).
        taxonomy: the taxonomy (None: the shipped one).
        episode_id: the id (None: ``episode_start.episode_id``).

    Raises:
        SceneSimError: a log without ``episode_start``, an unknown scripted
            judge, or an LLM judge without a context.

    """
    from scene_sim.studies.scene._catalog import taxonomy_at

    taxonomy = taxonomy or taxonomy_at(None)
    episode = Episode.from_events(events, episode_id=episode_id)
    model = judge or (str(episode.models.get("judge")) if episode.models.get("judge") else "scripted")
    j = make_judge(model, taxonomy=taxonomy, context=context, classifier=classifier)
    a = make_auditor(auditor or model, taxonomy=taxonomy, context=context)
    return await label_episode(episode, j, a, taxonomy=taxonomy)


def _doc_fields(doc: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any] | None, dict[str, Any]]:
    """What a labels document says beside the turn labels: validity, episode metrics, judge provenance.

    ``validity`` and the metrics are None where the document lacks a usable one
    (they are then derived from the episode).
    """
    metrics = doc.get("episode_metrics")
    fidelity = doc.get("fidelity")
    validity = fidelity.get("label") if isinstance(fidelity, Mapping) else None
    judge = doc.get("judge") if isinstance(doc.get("judge"), Mapping) else {}
    provenance = {
        "judge": str(judge.get("model", "")),
        "judge_source": str(judge.get("source", "")),
        "judge_failure": bool(judge.get("judge_failure", False)),
    }
    return (
        validity if validity in AUDIT_LABELS else None,
        metrics if isinstance(metrics, Mapping) else None,
        provenance,
    )


def _summary_from_stored(doc: Mapping[str, Any]) -> EpisodeSummary | None:
    """The summary from the labels document alone (its ``summary`` record), or None when it cannot be trusted."""
    validity, metrics, provenance = _doc_fields(doc)
    if validity is None or metrics is None:
        return None
    return summary_from_record(
        doc.get("summary"),
        doc.get("turn_labels"),
        validity=validity,
        shape_match_metric=bool(metrics.get("sanction_shape_match", False)),
        **provenance,
    )


def _summary_from_doc(episode: Episode, doc: Mapping[str, Any]) -> EpisodeSummary:
    """The summary from the event log and the labels document (the reference path)."""
    labels = labels_from_dicts(doc.get("turn_labels"))
    validity, metrics, provenance = _doc_fields(doc)
    if metrics is None:
        metrics = compute_episode_metrics(episode, labels)
    if validity is None:
        out = JudgeOutput(labels, metrics, model="stored", source="stored")
        validity = audit_rules(episode, out)["label"]
    return summarize(episode, labels, validity=str(validity), episode_metrics=metrics, **provenance)


def _agreement_pairs(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    other = doc.get("heuristic")
    judge = doc.get("judge") if isinstance(doc.get("judge"), Mapping) else {}
    if not isinstance(other, Mapping) or judge.get("judge_failure"):
        return []
    mine = {lab.turn_id: lab.label for lab in labels_from_dicts(doc.get("turn_labels"))}
    theirs = {lab.turn_id: lab.label for lab in labels_from_dicts(other.get("turn_labels"))}
    return [(mine[t], theirs[t]) for t in sorted(mine.keys() & theirs.keys())]


def write_outputs(
    out_dir: str | Path,
    summaries: Sequence[EpisodeSummary],
    *,
    repair_window: int = 3,
    n_boot: int = 2000,
    seed: int = 0,
    taxonomy: Taxonomy | None = None,
    info: ReportInfo | None = None,
    extra_metrics: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[Path]]:
    """Statistics and files from summaries: ``episodes.csv``, ``metrics.json``, the report and plots.

    Returns:
        ``(rows, metrics, paths)``.

    """
    folder = Path(out_dir)
    partner = {n.id: n.pole_partner for n in taxonomy.norms.values()} if taxonomy else {}
    pairs: list[tuple[str, str]] = []
    if taxonomy:
        seen: set[str] = set()
        for n in taxonomy.norms.values():
            if n.id not in seen:
                pairs.append((n.id, n.pole_partner))
                seen.update((n.id, n.pole_partner))
    metrics = compute_metrics(summaries, repair_window=repair_window, n_boot=n_boot, seed=seed, norm_partner=partner)
    metrics["analysis"] = {
        "episodes": len(summaries),
        "headline": "VALID episodes only; with_partial: VALID + PARTIAL; fidelity: all episodes",
        "repair_window": repair_window,
        "n_boot": n_boot,
        "seed": seed,
        **(extra_metrics or {}),
    }
    rows = {s.episode_id: episode_row(s, repair_window=repair_window) for s in summaries}
    atomic_write_text(folder / "episodes.csv", _csv_text(list(rows.values())))
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    base = info or ReportInfo()
    info = ReportInfo(
        title=base.title,
        episodes=len(summaries),
        repair_window=repair_window,
        n_boot=n_boot,
        seed=seed,
        judges=base.judges or dict(Counter(s.judge_source for s in summaries)),
        judge_failures=base.judge_failures or sum(s.judge_failure for s in summaries),
        audit_failures=base.audit_failures,
        skipped=base.skipped,
        pairs=base.pairs or pairs,
        agreement=base.agreement,
    )
    paths = [folder / "episodes.csv", folder / "metrics.json"]
    paths += write_report(folder, metrics, info, plots=plots)
    return rows, metrics, paths


@dataclass
class _Collected:
    """Per-episode results of the summarise phase (in-process or from a worker)."""

    summaries: dict[str, EpisodeSummary] = field(default_factory=dict)
    #: episode id -> its (LLM label, heuristic label) pairs, for judge agreement
    pairs_of: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    unreadable_labels: list[str] = field(default_factory=list)
    #: episode id -> (mtime_ns, size) of its labels file, taken before it was read
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [pair for pairs in self.pairs_of.values() for pair in pairs]

    @property
    def agreement_episodes(self) -> int:
        return sum(1 for pairs in self.pairs_of.values() if pairs)

    def add(self, eid: str, episode: Episode, doc: Mapping[str, Any]) -> None:
        try:
            self.summaries[eid] = _summary_from_doc(episode, doc)
        except Exception as exc:  # a hand-edited labels file must not stop the analysis
            self.skipped[eid] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return
        self.pairs_of[eid] = _agreement_pairs(doc)

    def merge(self, other: _Collected) -> None:
        self.summaries.update(other.summaries)
        self.pairs_of.update(other.pairs_of)
        self.skipped.update(other.skipped)
        self.unreadable_labels += other.unreadable_labels
        self.stamps.update(other.stamps)


# -- the run-level summary index ------------------------------------------------------------------

#: The index of a labels folder: one line per labelled episode, its summary and its labels file's stamp.
INDEX_NAME = ".summaries.jsonl"
_INDEX_VERSION = 1


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _index_entry(eid: str, stamp: tuple[int, int], summary: EpisodeSummary, pairs: list[tuple[str, str]]) -> bytes:
    import orjson

    return orjson.dumps([eid, stamp[0], stamp[1], dataclasses.astuple(summary), pairs]) + b"\n"


def _read_index(path: Path) -> dict[str, tuple[tuple[int, int], EpisodeSummary, list[tuple[str, str]]]]:
    """The index's entries by episode id (empty when it is missing, of another version or damaged)."""
    import orjson

    try:
        raw = path.read_bytes()
    except OSError:
        return {}
    lines = raw.splitlines()
    try:
        if not lines or orjson.loads(lines[0]) != {"v": _INDEX_VERSION, "summary_fields": _SUMMARY_FIELDS}:
            return {}
        out = {}
        marks = (_SUMMARY_FIELDS.index("sanction_marks"), _SUMMARY_FIELDS.index("repair_marks"))
        for n, line in enumerate(lines[1:], start=2):
            try:
                eid, mtime, size, values, pairs = orjson.loads(line)
            except orjson.JSONDecodeError:
                if n == len(lines) and not raw.endswith(b"\n"):
                    break  # torn by a kill mid-append: that episode is read from its labels file
                raise
            for i in marks:
                values[i] = tuple(tuple(m) for m in values[i])
            if len(values) != len(_SUMMARY_FIELDS):
                return {}
            out[eid] = ((mtime, size), EpisodeSummary(*values), [tuple(p) for p in pairs] if pairs else [])
        return out
    except (orjson.JSONDecodeError, TypeError, ValueError):  # damaged: rebuilt from the labels files
        return {}


def index_labels(rd: RunDir, episode_id: str, doc: Mapping[str, Any]) -> None:
    """Append one just-written labels file to its folder's index, so the first analysis reads the index.

    The sweep calls this after each labels write. A labels document without a
    usable stored summary is left out (analysis then reads its files); a
    later entry for the same episode wins; a torn last line (a kill mid-write)
    is ignored when the index is read.
    """
    summary = _summary_from_stored(doc)
    if summary is None or summary.episode_id != episode_id:
        return
    import orjson

    path = rd.labels_dir / INDEX_NAME
    with contextlib.suppress(OSError):  # the index is an optimisation: the labels files stay the truth
        entry = _index_entry(episode_id, _stamp(rd.label_path(episode_id)), summary, _agreement_pairs(doc))
        header = (
            b"" if path.exists() else orjson.dumps({"v": _INDEX_VERSION, "summary_fields": _SUMMARY_FIELDS}) + b"\n"
        )
        with path.open("ab") as fh:
            fh.write(header + entry)


def _write_index(path: Path, collected: _Collected) -> None:
    import orjson

    parts = [orjson.dumps({"v": _INDEX_VERSION, "summary_fields": _SUMMARY_FIELDS}) + b"\n"]
    for eid in sorted(collected.stamps.keys() & collected.summaries.keys()):
        parts.append(
            _index_entry(eid, collected.stamps[eid], collected.summaries[eid], collected.pairs_of.get(eid, []))
        )
    with contextlib.suppress(OSError):  # a read-only run directory is still analysed, only without the index
        atomic_write_bytes(path, b"".join(parts))


_SUMMARY_FIELDS = [f.name for f in dataclasses.fields(EpisodeSummary)]


def _read_doc(path: Path) -> dict[str, Any]:
    import orjson

    doc = orjson.loads(path.read_bytes())
    if not isinstance(doc, dict):
        raise SceneSimError(f"{path}: not a JSON object")
    return doc


def _summarise_labelled(root: str, ids: Sequence[str], *, stored: bool = True, labels: str = "labels") -> _Collected:
    """Summaries of labelled episodes (runs in worker processes too).

    Each labels file is read once; its stored ``summary`` record is used when
    it matches the labels (``stored``), else the event log is read as well.
    """
    rd = RunDir(root, labels=labels)
    out = _Collected()
    for eid in ids:
        path = rd.label_path(eid)
        try:
            stamp = _stamp(path)  # before the read: a file changed meanwhile is read again next time
            doc = _read_doc(path)
        except (SceneSimError, OSError, ValueError):
            out.unreadable_labels.append(eid)
            continue
        out.stamps[eid] = stamp
        summary = _summary_from_stored(doc) if stored else None
        if summary is not None and summary.episode_id == eid:
            out.summaries[eid] = summary
            out.pairs_of[eid] = _agreement_pairs(doc)
            continue
        try:
            episode = load_episode(rd.episode_path(eid), episode_id=eid)
        except (SceneSimError, OSError) as exc:
            out.skipped[eid] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        out.add(eid, episode, doc)
    return out


#: Labelled episodes above which summaries are built in worker processes.
PARALLEL_MIN_EPISODES = 4000


async def _summarise_all(
    root: Path, ids: Sequence[str], workers: int | None, *, stored: bool = True, labels: str = "labels"
) -> _Collected:
    """Summarise labelled episodes: from the labels folder's index where a labels file is unchanged, else its file.

    The index (:data:`INDEX_NAME` in the labels folder) holds each summary with
    the labels file's modification time and size when it was read; it is
    rewritten whenever a file was read, so a repeated analysis reads one file.
    """
    if not stored:
        return await _summarise_files(root, ids, workers, stored=False, labels=labels)
    index_path = root / labels / INDEX_NAME
    index = _read_index(index_path)
    done = _Collected()
    fresh: list[str] = []
    folder = os.fspath(root / labels)
    for eid in ids:
        entry = index.get(eid)
        if entry is None:
            fresh.append(eid)
            continue
        try:
            st = os.stat(f"{folder}/{eid}.json")  # plain strings: pathlib costs more than the stat here
            same = (st.st_mtime_ns, st.st_size) == entry[0]
        except OSError:
            same = False
        if same:
            done.stamps[eid], done.summaries[eid], done.pairs_of[eid] = entry
        else:
            fresh.append(eid)
    if fresh:
        done.merge(await _summarise_files(root, fresh, workers, stored=True, labels=labels))
    if fresh or len(index) != len(done.summaries):
        _write_index(index_path, done)
    return done


async def _summarise_files(
    root: Path, ids: Sequence[str], workers: int | None, *, stored: bool, labels: str
) -> _Collected:
    """Summarise labelled episodes from their files, in forked worker processes for large runs.

    Workers are forked only while this process has a single thread (forking a
    threaded process can deadlock; spawning would re-run an unguarded user
    script), on platforms with ``fork``; otherwise, or if the pool breaks,
    the work is done here.
    """
    import multiprocessing
    import threading

    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    parallel = (
        n_workers > 1
        and len(ids) >= PARALLEL_MIN_EPISODES
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
    )
    work = functools.partial(_summarise_labelled, stored=stored, labels=labels)
    if not parallel:
        return work(str(root), ids)
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    size = max(500, -(-len(ids) // (4 * n_workers)))
    chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
    loop = asyncio.get_running_loop()
    out = _Collected()
    try:
        with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [loop.run_in_executor(pool, work, str(root), c) for c in chunks]
            parts = await asyncio.gather(*futures)
    except (BrokenProcessPool, OSError):
        return work(str(root), ids)
    for part in parts:
        out.merge(part)
    return out


#: Where the analysis of a re-labelling goes, inside its labels folder.
RELABEL_ANALYSIS_DIR = "analysis"


def judge_slug(judge: str, classifier: bool = False) -> str:
    """A folder-name form of a judge model string (and the classifier flag), e.g. ``openai-gpt-4o``."""
    import hashlib
    import re

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", judge).strip("-.") or "judge"
    if len(slug) > 60:  # long option strings (base URLs): keep it readable and unique
        slug = slug[:50].rstrip("-.") + "-" + hashlib.sha256(judge.encode()).hexdigest()[:8]
    return slug + ("-classifier" if classifier else "")


def _existing_labelling(run_dir: RunDir) -> tuple[str, bool] | None:
    """``(judge model, classifier)`` of the labels in ``labels/`` (read from one file), or None when there are none."""
    for eid in run_dir.labelled_ids():
        try:
            judge = run_dir.read_labels(eid).get("judge")
        except (SceneSimError, OSError):
            continue
        if isinstance(judge, Mapping):
            return str(judge.get("model", "")), judge.get("source") == "classifier"
        return "", False
    return None


def labelling_for(run_dir: RunDir, judge: str | None, classifier: bool = False) -> tuple[RunDir, Path]:
    """Which labels folder a judge writes to, and where its analysis goes.

    Without ``judge`` and ``classifier``, or when ``labels/`` is empty or was
    made by the same judge (the model string in its files, and the classifier
    flag), the labels go to ``labels/`` and the analysis to the run directory,
    as the contract has it. Otherwise the run is re-labelled into a NEW folder
    ``labels-<judge-slug>/`` (``-classifier`` appended with the classifier),
    leaving ``labels/`` and the run's own analysis untouched; that labelling's
    ``episodes.csv``, ``metrics.json``, report and plots go to
    ``labels-<judge-slug>/analysis/``. Running it again resumes that folder.

    Returns:
        ``(run_dir, out_dir)``: a :class:`RunDir` whose ``labels_dir`` is the
        folder to use, and the folder for the outputs.

    """
    if judge is None and not classifier:
        return run_dir, run_dir.path
    existing = _existing_labelling(run_dir)
    if existing is None:
        return run_dir, run_dir.path
    model = judge or existing[0]
    if (model, classifier) == existing:
        return run_dir, run_dir.path
    other = RunDir(run_dir.path, labels=f"labels-{judge_slug(model, classifier)}")
    return other, other.labels_dir / RELABEL_ANALYSIS_DIR


async def analyze_run(
    run_dir: RunDir,
    *,
    judge: str | None = None,
    context: Any = None,
    repair_window: int = 3,
    n_boot: int = 2000,
    seed: int = 0,
    auditor: str | None = None,
    classifier: bool = False,
    relabel: bool = False,
    max_concurrency: int = 16,
    taxonomy: Taxonomy | None = None,
    plots: bool = True,
    workers: int | None = None,
    stored_summaries: bool = True,
    out_dir: str | Path | None = None,
) -> AnalysisResult:
    """Label what is unlabelled, then write episodes.csv, metrics.json and the report.

    Args:
        run_dir: the run directory.
        judge: judge model string for unlabelled episodes (None: each
            episode's ``episode_start.models.judge``, else ``scripted``).
        context: a :class:`~scene_sim.context.RunContext` for LLM judges
            (None: one is created and closed here when needed).
        repair_window: ticks after a sanction in which a repair counts.
        n_boot: bootstrap resamples for rho.
        seed: bootstrap seed.
        auditor: auditor model string (None: the judge's model string).
        classifier: LLM judges: use the per-category classifier (section 5.1).
        relabel: judge every episode again, even those with labels.
        max_concurrency: episodes judged at once.
        taxonomy: the taxonomy (None: the shipped one).
        plots: draw the PNG plots (and embed them in the HTML).
        workers: processes that read labelled episodes (None: up to 8, by CPU
            count; used from :data:`PARALLEL_MIN_EPISODES` labelled episodes on).
        stored_summaries: use the stream summary stored in each labels file
            when it matches the labels (False: re-read every event log; the
            results are the same, only slower).
        out_dir: where episodes.csv, metrics.json, the report and plots go
            (None: the run directory; see :func:`labelling_for`).

    Raises:
        SceneSimError: for a missing run directory or an unknown scripted judge.

    """
    from scene_sim.studies.scene._catalog import taxonomy_at

    if repair_window < 0:
        raise SceneSimError(f"--repair-window must be >= 0, got {repair_window}")
    if not run_dir.path.is_dir():
        raise SceneSimError(f"{run_dir.path}: no such run directory")
    for model in (judge, auditor):
        if model is not None:  # a typo fails now, not after the labelled episodes were read
            ModelSpec.parse(model)
            _scripted_kind(model)
    taxonomy = taxonomy or taxonomy_at(None)
    ids = run_dir.episode_ids()
    labelled_ids = set(run_dir.labelled_ids())
    ready = [] if relabel else [eid for eid in ids if eid in labelled_ids]
    collected = await _summarise_all(
        run_dir.path, ready, workers, stored=stored_summaries, labels=run_dir.labels_dir.name
    )
    todo = [eid for eid in ids if relabel or eid not in labelled_ids] + collected.unreadable_labels
    todo_set = set(todo)
    todo = [eid for eid in ids if eid in todo_set]

    episodes: dict[str, Episode] = {}
    for eid in todo:
        try:
            episodes[eid] = load_episode(run_dir.episode_path(eid), episode_id=eid)
        except (SceneSimError, OSError) as exc:
            collected.skipped[eid] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    todo = [eid for eid in todo if eid in episodes]

    own_context = None
    labelled: list[str] = []
    failures: list[str] = []
    audit_failures = 0
    if todo:
        judges: dict[str, Any] = {}
        auditors: dict[str, Any] = {}

        def ctx() -> Any:
            nonlocal own_context, context
            if context is None:
                from scene_sim.context import RunContext

                own_context = context = RunContext()
            return context

        def pick(eid: str) -> tuple[Any, Any]:
            ep = episodes[eid]
            model = judge or (str(ep.models.get("judge")) if ep.models.get("judge") else "scripted")
            if model not in judges:
                scripted = model.startswith("scripted")
                judges[model] = make_judge(
                    model, taxonomy=taxonomy, context=None if scripted else ctx(), classifier=classifier
                )
            amodel = auditor or model
            if amodel not in auditors:
                scripted = amodel.startswith("scripted")
                auditors[amodel] = make_auditor(amodel, taxonomy=taxonomy, context=None if scripted else ctx())
            return judges[model], auditors[amodel]

        sem = asyncio.Semaphore(max(1, max_concurrency))

        async def one(eid: str) -> None:
            nonlocal audit_failures
            j, a = pick(eid)
            async with sem:
                doc = await label_episode(episodes[eid], j, a, taxonomy=taxonomy)
            run_dir.write_labels(eid, doc)
            collected.add(eid, episodes[eid], doc)
            labelled.append(eid)
            if doc.get("judge", {}).get("judge_failure"):
                failures.append(eid)
            if doc.get("audit", {}).get("audit_failure"):
                audit_failures += 1

        try:
            results = await asyncio.gather(*(one(eid) for eid in todo), return_exceptions=True)
            for eid, res in zip(todo, results, strict=True):
                if isinstance(res, SceneSimError | asyncio.CancelledError):
                    raise res
                if isinstance(res, BaseException):
                    collected.skipped[eid] = f"{type(res).__name__}: {res}".splitlines()[0]
        finally:
            if own_context is not None:
                await own_context.aclose()

    summaries = [collected.summaries[eid] for eid in ids if eid in collected.summaries]
    skipped = {eid: collected.skipped[eid] for eid in ids if eid in collected.skipped}
    agreement = judge_agreement(collected.pairs, collected.agreement_episodes)
    extra: dict[str, Any] = {"skipped": len(skipped), "judge_failures": sum(s.judge_failure for s in summaries)}
    if agreement:
        extra["judge_agreement"] = agreement
    info = ReportInfo(
        title=f"scene-sim report: {run_dir.path.name}"
        + (f" ({run_dir.labels_dir.name})" if run_dir.labels_dir.name != "labels" else ""),
        audit_failures=audit_failures,
        skipped=[f"{k}: {v}" for k, v in skipped.items()],
        agreement=agreement,
    )
    rows, metrics, paths = write_outputs(
        Path(out_dir) if out_dir is not None else run_dir.path,
        summaries,
        repair_window=repair_window,
        n_boot=n_boot,
        seed=seed,
        taxonomy=taxonomy,
        info=info,
        extra_metrics=extra,
        plots=plots,
    )
    return AnalysisResult(
        rows=rows,
        metrics=metrics,
        summaries=tuple(summaries),
        files=tuple(paths),
        labelled=tuple(sorted(labelled)),
        judge_failures=tuple(sorted(failures)),
        skipped=skipped,
        agreement=agreement,
    )
