"""Collectors: from an episode and its labels to the D / B / S / R event streams.

The streams are defined once, in :mod:`scene_sim.studies.scene.streams`;
the live episode builds its DataCollector tables with the same code.

Every stream event carries its ``tick`` (the orchestrator turn index, the
event log's ``turn``) and its chat ``turn_id``. :func:`summarize` reduces an
episode to a compact :class:`EpisodeSummary`, the only thing the statistics
need; :func:`streams_table` / :func:`streams_dataframe` give a tidy table
over many episodes, and :func:`to_datacollector` loads one episode's streams
into a Mesa ``DataCollector`` shaped like :class:`~scene_sim.studies.scene.model.SceneModel`'s.

:func:`summary_record` is the summary as stored in an episode's labels file
(the ``summary`` key) when it is judged, with a digest of the turn labels it
was computed from; :func:`summary_from_record` reads it back, so analysing a
run needs only the labels files, not every event log, and falls back to the
event log whenever the record is missing, from another version, or no longer
matches the labels (a hand-edited labels file).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from scene_sim.studies.scene.judge import Episode, labels_from_dicts, load_episode
from scene_sim.studies.scene.oracle import TurnLabel
from scene_sim.studies.scene.streams import STREAM_TABLES, STREAMS, EpisodeStreams, StreamBuilder, StreamEvent

if TYPE_CHECKING:
    import mesa
    import pandas as pd

    from scene_sim.rundir import RunDir

__all__ = [
    "STREAMS",
    "SUMMARY_VERSION",
    "EpisodeStreams",
    "EpisodeSummary",
    "StreamEvent",
    "collect_streams",
    "labels_digest",
    "run_streams",
    "streams_dataframe",
    "streams_table",
    "summarize",
    "summary_from_record",
    "summary_record",
    "to_datacollector",
]

#: Version of the stored summary record; bump when :class:`EpisodeSummary` or its meaning changes.
SUMMARY_VERSION = 1
#: Summary fields that come from the labels document, not from the streams (not stored in the record).
_DOC_FIELDS = ("validity", "judge", "judge_source", "judge_failure", "shape_match")


def _as_labels(labels: Iterable[TurnLabel] | Iterable[Mapping[str, Any]] | Any) -> tuple[TurnLabel, ...]:
    items = list(labels) if labels is not None else []
    if items and not isinstance(items[0], TurnLabel):
        return labels_from_dicts(items)
    return tuple(x for x in items if isinstance(x, TurnLabel))


def collect_streams(episode: Episode, labels: Iterable[TurnLabel] | Iterable[Mapping[str, Any]]) -> EpisodeStreams:
    """The D / B / S / R streams of ``episode`` under ``labels``.

    Args:
        episode: the episode.
        labels: its turn labels (:class:`TurnLabel` records or the dicts of a labels file).

    """
    by_id = {lab.turn_id: lab for lab in _as_labels(labels)}
    builder = StreamBuilder(episode.subject, episode.turn)
    for turn in episode.turns:
        builder.add(turn, by_id.get(turn.turn_id))
    return builder.result(episode.episode_id)


@dataclass(frozen=True, slots=True)
class EpisodeSummary:
    """Everything the statistics need about one episode, compactly.

    Sanction and repair marks are kept as ``(tick, turn_id)`` pairs so the
    repair window can be chosen at analysis time.
    """

    episode_id: str
    subject: str
    event: str
    norm: str
    elicitor: str
    sanction: str
    precedent: int
    rep: int
    seed: int | None
    end_reason: str
    validity: str
    demonstrations: int
    breaches: int
    sanctions: int
    repairs: int
    sanction_marks: tuple[tuple[int, int], ...]
    repair_marks: tuple[tuple[int, int], ...]
    x_e: int | None
    y_breaches: int
    y_actions: int
    subject_actions: int
    labelled_actions: int
    compliant_actions: int
    persona_breach: bool
    shape_match: bool
    scenario_id: str = ""
    subject_actor: str = ""
    judge: str = ""
    judge_source: str = ""
    judge_failure: bool = False
    ticks: int = 0

    @property
    def y_e(self) -> float | None:
        """Share of later subject actions that are breaches (None when undefined)."""
        if self.breaches == 0 or self.y_actions == 0:
            return None
        return self.y_breaches / self.y_actions

    @property
    def sanction_delivered(self) -> bool | None:
        """Whether a breached episode got any sanction (None when the subject never breached)."""
        return None if self.breaches == 0 else self.sanctions > 0


_RECORD_FIELDS = tuple(
    f
    for f in EpisodeSummary.__dataclass_fields__
    if f not in _DOC_FIELDS and f not in ("sanction_marks", "repair_marks")
)


def summarize(
    episode: Episode,
    labels: Iterable[TurnLabel] | Iterable[Mapping[str, Any]],
    *,
    validity: str = "VALID",
    episode_metrics: Mapping[str, Any] | None = None,
    judge: str = "",
    judge_source: str = "",
    judge_failure: bool = False,
    streams: EpisodeStreams | None = None,
) -> EpisodeSummary:
    """Reduce an episode and its labels to an :class:`EpisodeSummary`.

    Args:
        episode: the episode.
        labels: its turn labels.
        validity: the fidelity label (VALID / PARTIAL / INVALID).
        episode_metrics: the judge's episode metrics (``sanction_shape_match`` is read).
        judge: the judge's model string.
        judge_source: how the labels were made.
        judge_failure: the LLM judge failed (heuristic fallback labels).
        streams: pre-computed streams (else collected here).

    """
    st = streams or collect_streams(episode, labels)
    counts = st.y_counts or (0, 0)
    labelled = [lab for _, _, lab in st.subject_actions if lab is not None]
    shape = bool((episode_metrics or {}).get("sanction_shape_match", False)) and bool(st.sanctions)
    t = episode.tuple
    return EpisodeSummary(
        episode_id=episode.episode_id,
        subject=episode.subject_model,
        event=str(t.get("event", "")),
        norm=str(t.get("norm", "")),
        elicitor=str(t.get("elicitor", "")),
        sanction=str(t.get("sanction", "")),
        precedent=episode.precedent,
        rep=episode.rep,
        seed=episode.seed,
        end_reason=episode.end_reason or "",
        validity=validity,
        demonstrations=len(st.demonstrations),
        breaches=len(st.breaches),
        sanctions=len(st.sanctions),
        repairs=len(st.repairs),
        sanction_marks=tuple((e.tick, e.turn_id) for e in st.sanctions),
        repair_marks=tuple((e.tick, e.turn_id) for e in st.repairs),
        x_e=st.x_e,
        y_breaches=counts[0],
        y_actions=counts[1],
        subject_actions=len(st.subject_actions),
        labelled_actions=len(labelled),
        compliant_actions=sum(1 for lab in labelled if lab != "BREACH"),
        persona_breach=bool(st.persona_breaches),
        shape_match=shape,
        scenario_id=episode.scenario_id,
        subject_actor=episode.subject,
        judge=judge,
        judge_source=judge_source,
        judge_failure=judge_failure,
        ticks=episode.ticks,
    )


def labels_digest(items: Any) -> int:
    """CRC-32 of what the streams read from stored turn labels (turn id, label, target), in order."""
    import orjson

    if not isinstance(items, list):
        return 0
    try:
        key = orjson.dumps([(d.get("turn_id"), d.get("label"), d.get("target_turn_id")) for d in items])
    except (AttributeError, TypeError, orjson.JSONEncodeError):  # not label objects: matches no stored record
        return -1
    return zlib.crc32(key)


def summary_record(summary: EpisodeSummary, turn_labels: Any) -> dict[str, Any]:
    """The ``summary`` object stored in a labels file: the stream summary and the digest of its labels.

    Args:
        summary: the episode's summary under ``turn_labels``.
        turn_labels: the ``turn_labels`` list of the same labels document.

    """
    record = {k: v for k, v in asdict(summary).items() if k not in _DOC_FIELDS}
    record["sanction_marks"] = [list(m) for m in summary.sanction_marks]
    record["repair_marks"] = [list(m) for m in summary.repair_marks]
    return {"v": SUMMARY_VERSION, "labels_digest": labels_digest(turn_labels), **record}


def summary_from_record(
    record: Any,
    turn_labels: Any,
    *,
    validity: str,
    shape_match_metric: bool,
    judge: str = "",
    judge_source: str = "",
    judge_failure: bool = False,
) -> EpisodeSummary | None:
    """The :class:`EpisodeSummary` of a stored record, or None when the record cannot be trusted.

    None when ``record`` is missing, of another :data:`SUMMARY_VERSION`,
    malformed, or was computed from other turn labels than ``turn_labels``.
    """
    if not isinstance(record, Mapping) or record.get("v") != SUMMARY_VERSION:
        return None
    if record.get("labels_digest") != labels_digest(turn_labels):
        return None
    try:
        sanctions = int(record["sanctions"])
        fields = {k: record[k] for k in _RECORD_FIELDS}
        fields["sanction_marks"] = tuple((int(a), int(b)) for a, b in record["sanction_marks"])
        fields["repair_marks"] = tuple((int(a), int(b)) for a, b in record["repair_marks"])
        return EpisodeSummary(
            **fields,
            validity=validity,
            shape_match=bool(shape_match_metric) and sanctions > 0,
            judge=judge,
            judge_source=judge_source,
            judge_failure=judge_failure,
        )
    except (KeyError, TypeError, ValueError):
        return None


def streams_table(items: Iterable[tuple[Episode, EpisodeStreams]]) -> list[dict[str, Any]]:
    """A tidy table (one row per stream event) over many episodes.

    Columns: ``episode_id, subject, norm, sanction, precedent, stream`` (D/B/S/R),
    ``tick, turn_id, actor, target_turn_id, modality``.
    """
    rows: list[dict[str, Any]] = []
    for episode, st in items:
        base = {
            "episode_id": episode.episode_id,
            "subject": episode.subject_model,
            "norm": episode.norm,
            "sanction": episode.sanction,
            "precedent": episode.precedent,
        }
        for letter in STREAMS:
            for e in st.stream(letter):
                rows.append(
                    {
                        **base,
                        "stream": letter,
                        "tick": e.tick,
                        "turn_id": e.turn_id,
                        "actor": e.actor,
                        "target_turn_id": e.target_turn_id,
                        "modality": e.modality,
                    }
                )
    return rows


def streams_dataframe(items: Iterable[tuple[Episode, EpisodeStreams]]) -> pd.DataFrame:
    """:func:`streams_table` as a pandas DataFrame (pandas is imported lazily)."""
    import pandas as pd

    columns = [
        "episode_id", "subject", "norm", "sanction", "precedent", "stream",
        "tick", "turn_id", "actor", "target_turn_id", "modality",
    ]  # fmt: skip
    return pd.DataFrame(streams_table(items), columns=columns)


def to_datacollector(streams: EpisodeStreams, tables: Mapping[str, Sequence[str]] | None = None) -> mesa.DataCollector:
    """Load one episode's streams into a Mesa ``DataCollector``.

    The tables are named and shaped like :data:`scene_sim.studies.scene.streams.STREAM_TABLES`
    (``demonstrations``, ``breaches``, ``sanctions``, ``repairs``), so code
    written against a live :class:`~scene_sim.studies.scene.model.SceneModel`'s collector
    (``get_table_dataframe("breaches")``) works on a re-judged episode.
    """
    import mesa

    layout = {k: list(v) for k, v in (tables or STREAM_TABLES).items()}
    dc = mesa.DataCollector(tables=layout)
    for table, columns in layout.items():
        for e in getattr(streams, table, ()):
            row = e.row(table)
            dc.add_table_row(table, {c: row.get(c) for c in columns})
    return dc


def run_streams(run_dir: RunDir) -> list[tuple[Episode, EpisodeStreams]]:
    """The streams of every labelled episode of a run directory (for :func:`streams_table`).

    Episodes without labels, or whose files cannot be read, are left out.
    """
    from scene_sim.errors import SceneSimError

    out = []
    labelled = set(run_dir.labelled_ids())
    for eid in run_dir.episode_ids():
        if eid not in labelled:
            continue
        try:
            episode = load_episode(run_dir.episode_path(eid), episode_id=eid)
            doc = run_dir.read_labels(eid)
        except (SceneSimError, OSError):
            continue
        out.append((episode, collect_streams(episode, labels_from_dicts(doc.get("turn_labels")))))
    return out
