"""Collectors: from an episode and its labels to the D / B / S / R event streams.

* **D** persona DEMONSTRATION turns (the scaffold's opening and elicitor
  lines and the precedent sub-script are excluded: they are scripted set-up,
  not the group's behaviour);
* **B** subject BREACH turns;
* **S** persona SANCTION turns answering a subject breach (after the
  subject's first breach, not part of the precedent sub-script, and, when
  the judge named the breach it answers, aimed at a subject turn);
* **R** subject FACE_SAVE_REPAIR turns after a sanction.

Every stream event carries its ``tick`` (the orchestrator turn index, the
event log's ``turn``) and its chat ``turn_id``. :func:`summarize` reduces an
episode to a compact :class:`EpisodeSummary`, the only thing the statistics
need; :func:`streams_table` / :func:`streams_dataframe` give a tidy table
over many episodes, and :func:`to_datacollector` loads one episode's streams
into a Mesa ``DataCollector`` shaped like :class:`~scene_sim.studies.scene.model.SceneModel`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scene_sim.studies.scene.judge import Episode, labels_from_dicts, load_episode
from scene_sim.studies.scene.oracle import TurnLabel

if TYPE_CHECKING:
    import mesa
    import pandas as pd

    from scene_sim.rundir import RunDir

__all__ = [
    "STREAMS",
    "EpisodeStreams",
    "EpisodeSummary",
    "StreamEvent",
    "collect_streams",
    "run_streams",
    "streams_dataframe",
    "streams_table",
    "summarize",
    "to_datacollector",
]

#: Stream letter -> DataCollector table name (see ``scene_sim.studies.scene.model.STREAM_TABLES``).
STREAMS = {"D": "demonstrations", "B": "breaches", "S": "sanctions", "R": "repairs"}


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a stream.

    Attributes:
        tick: orchestrator tick of the turn.
        turn_id: chat turn id.
        actor: who posted it.
        target_turn_id: for a sanction the breach it answers, for a repair the sanction (when known).
        modality: for a sanction, the modality it used (when known).

    """

    tick: int
    turn_id: int
    actor: str
    target_turn_id: int | None = None
    modality: str | None = None

    def row(self, table: str) -> dict[str, Any]:
        """The row for ``table`` in the DataCollector layout."""
        row: dict[str, Any] = {"tick": self.tick, "turn_id": self.turn_id, "actor": self.actor}
        if table == "sanctions":
            row["target_turn_id"] = self.target_turn_id
            row["modality"] = self.modality
        elif table == "repairs":
            row["target_turn_id"] = self.target_turn_id
        return row


@dataclass(frozen=True, slots=True)
class EpisodeStreams:
    """The four streams of one episode plus the subject's labelled actions.

    Attributes:
        episode_id: the episode.
        demonstrations: D.
        breaches: B.
        sanctions: S.
        repairs: R.
        subject_actions: the subject's messages and reactions as
            ``(tick, turn_id, label)`` in chat order (``label`` None when the
            judge left the turn unlabelled); no-ops are not actions here.
        persona_breaches: persona BREACH turns outside the scaffold and the
            precedent sub-script (a fidelity signal).

    """

    episode_id: str
    demonstrations: tuple[StreamEvent, ...]
    breaches: tuple[StreamEvent, ...]
    sanctions: tuple[StreamEvent, ...]
    repairs: tuple[StreamEvent, ...]
    subject_actions: tuple[tuple[int, int, str | None], ...]
    persona_breaches: tuple[StreamEvent, ...] = ()

    def stream(self, name: str) -> tuple[StreamEvent, ...]:
        """A stream by letter (``D``/``B``/``S``/``R``) or table name."""
        table = STREAMS.get(name, name)
        return getattr(self, table)  # type: ignore[no-any-return]

    @property
    def x_e(self) -> int | None:
        """Persona demonstrations before the subject's first breach (None without a breach)."""
        if not self.breaches:
            return None
        first = self.breaches[0].turn_id
        return sum(1 for d in self.demonstrations if d.turn_id < first)

    @property
    def y_counts(self) -> tuple[int, int] | None:
        """``(breaches, actions)`` among the subject's actions after its first breach (None without a breach)."""
        if not self.breaches:
            return None
        first = self.breaches[0].turn_id
        later = [lab for _, tid, lab in self.subject_actions if tid > first]
        return sum(1 for lab in later if lab == "BREACH"), len(later)

    @property
    def y_e(self) -> float | None:
        """Share of the subject's later actions that are breaches (None when undefined)."""
        counts = self.y_counts
        if counts is None or counts[1] == 0:
            return None
        return counts[0] / counts[1]


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
    subject = episode.subject
    d: list[StreamEvent] = []
    b: list[StreamEvent] = []
    s: list[StreamEvent] = []
    r: list[StreamEvent] = []
    pb: list[StreamEvent] = []
    actions: list[tuple[int, int, str | None]] = []
    for turn in episode.turns:
        lab = by_id.get(turn.turn_id)
        label = lab.label if lab is not None else None
        if turn.actor == subject:
            actions.append((turn.tick, turn.turn_id, label))
            if label == "BREACH":
                b.append(StreamEvent(turn.tick, turn.turn_id, turn.actor))
            elif label == "FACE_SAVE_REPAIR" and s:
                target = lab.target_turn_id if lab is not None and lab.target_turn_id is not None else s[-1].turn_id
                r.append(StreamEvent(turn.tick, turn.turn_id, turn.actor, target_turn_id=target))
            continue
        if label is None or episode.is_scripted_line(turn):
            continue
        if label == "DEMONSTRATION":
            d.append(StreamEvent(turn.tick, turn.turn_id, turn.actor))
        elif label == "BREACH":
            pb.append(StreamEvent(turn.tick, turn.turn_id, turn.actor))
        elif label == "SANCTION" and b:
            assert lab is not None
            target = lab.target_turn_id
            if target is not None:
                aimed = episode.turn(target)
                if aimed is not None and aimed.actor != subject:
                    continue
            s.append(
                StreamEvent(
                    turn.tick,
                    turn.turn_id,
                    turn.actor,
                    target_turn_id=target if target is not None else b[-1].turn_id,
                    modality=lab.modality,
                )
            )
    return EpisodeStreams(episode.episode_id, tuple(d), tuple(b), tuple(s), tuple(r), tuple(actions), tuple(pb))


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

    The tables are named and shaped like :data:`scene_sim.studies.scene.model.STREAM_TABLES`
    (``demonstrations``, ``breaches``, ``sanctions``, ``repairs``), so code
    written against a live :class:`~scene_sim.studies.scene.model.SceneModel`'s collector
    (``get_table_dataframe("breaches")``) works on a re-judged episode.
    """
    import mesa

    from scene_sim.studies.scene.model import STREAM_TABLES

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
