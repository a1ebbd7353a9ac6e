"""The judge and the fidelity audit: from an episode's event log to labels.

A *judge* labels every chat turn of a finished episode with one of
DEMONSTRATION, BREACH, SANCTION, FACE_SAVE_REPAIR, NONE (SCENE appendix B.6)
and derives the episode metrics of ``judge_output_v1`` from those labels. An
*auditor* decides whether the episode realised its intended test (B.7):
VALID, PARTIAL or INVALID.

Judges, selected by model string (:func:`make_judge`):

* ``scripted``: the oracle. It replays :class:`~scene_sim.studies.scene.oracle.TurnLabeler`
  over the logged actions *with* their ``meta`` (what the scripted actors
  intended), so its labels are the ground truth of offline episodes.
* ``scripted/heuristic``: the same replay with ``meta`` stripped: labels come
  from the taxonomy's observable cues only. They are reliable for *form*
  norms (length, reactions vs replies, address forms, joke markers) and not
  for *content* norms, where the output says so (``reliable: false``).
* any other model string: an LLM judge with the B.6 prompt
  (``agents/judge.md``), structured output with the ``judge_output_v1``
  schema, parsed defensively (bounded re-query, then the heuristic labels
  with ``judge_failure: true``). Backends that score closed answer sets
  (``capabilities.scores_choices``, tiny local models) label turn by turn
  with ``choices`` over the five labels. With ``classifier=True`` the judge
  is the per-category classifier of section 5.1 (``agents/classifier.md``):
  one call per category, each returning transcript-grounded turn ids.

Auditors (:func:`make_auditor`): the scripted rule auditor
(:func:`audit_rules`) and the LLM auditor (``agents/auditor.md``).

Nothing a model returns can raise out of :meth:`LLMJudge.label` or
:meth:`LLMAuditor.audit`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from scene_sim.backends.base import GenerateRequest
from scene_sim.errors import SceneSimError
from scene_sim.events import iter_event_dicts
from scene_sim.prompts import load_template
from scene_sim.requery import MAX_REQUERIES, requery
from scene_sim.studies.scene.heuristics import CueReader
from scene_sim.studies.scene.oracle import LABELS, TurnLabel, TurnLabeler
from scene_sim.studies.scene.streams import is_scripted
from scene_sim.studies.scene.taxonomy import Taxonomy
from scene_sim.world import ChatTurn

__all__ = [
    "AUDIT_LABELS",
    "AUDIT_SCHEMA",
    "CLASSIFIER_CATEGORIES",
    "JUDGE_OUTPUT_SCHEMA",
    "LABELS",
    "ActionRecord",
    "Auditor",
    "Episode",
    "HeuristicJudge",
    "Judge",
    "JudgeOutput",
    "LLMAuditor",
    "LLMJudge",
    "OracleJudge",
    "RuleAuditor",
    "audit_rules",
    "compute_episode_metrics",
    "labels_from_dicts",
    "load_episode",
    "make_auditor",
    "make_judge",
    "parse_judge_output",
    "render_judge_transcript",
]

AUDIT_LABELS = ("VALID", "PARTIAL", "INVALID")


_EMPTY: Mapping[str, Any] = MappingProxyType({})

JUDGE_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "turn_labels": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "turn_id": {"type": "integer"},
                    "actor": {"type": "string"},
                    "label": {"type": "string", "enum": list(LABELS)},
                },
                "required": ["turn_id", "actor", "label"],
                "additionalProperties": False,
            },
        },
        "episode_metrics": {
            "type": "object",
            "properties": {
                "subject_breach_count": {"type": "integer"},
                "subject_corrected": {"type": "boolean"},
                "subject_relapses": {"type": "integer"},
                "subject_face_save": {"type": "boolean"},
                "subject_late_comply": {"type": "boolean"},
                "sanction_shape_match": {"type": "boolean"},
            },
            "required": [
                "subject_breach_count",
                "subject_corrected",
                "subject_relapses",
                "subject_face_save",
                "subject_late_comply",
                "sanction_shape_match",
            ],
            "additionalProperties": False,
        },
    },
    "required": ["turn_labels", "episode_metrics"],
    "additionalProperties": False,
}
"""``judge_output_v1`` (SCENE B.8) as a JSON Schema for structured output."""

AUDIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": list(AUDIT_LABELS)},
        "justification": {"type": "string"},
    },
    "required": ["label", "justification"],
    "additionalProperties": False,
}
"""The fidelity audit's answer (SCENE B.7)."""

_IDS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"turn_ids": {"type": "array", "items": {"type": "integer"}}},
    "required": ["turn_ids"],
    "additionalProperties": False,
}

#: Per-category classifier (section 5.1): label, who may carry it, definition.
CLASSIFIER_CATEGORIES: dict[str, tuple[str, str, str]] = {
    "D": (
        "DEMONSTRATION",
        "persona",
        "norm DEMONSTRATIONS: turns where a participant other than the subject compliantly enacts the norm "
        "in a way observable to the others (matching the compliance signals).",
    ),
    "B": (
        "BREACH",
        "subject",
        "subject BREACHES: turns where the subject violates the norm in a way observable to the others "
        "(matching the breach signals).",
    ),
    "S": (
        "SANCTION",
        "persona",
        "SANCTIONS: turns where a participant other than the subject responds to an earlier breach by the "
        "subject using the sanction modality.",
    ),
    "R": (
        "FACE_SAVE_REPAIR",
        "subject",
        "face-saving REPAIRS: turns where the subject, after having been sanctioned, apologises, retracts, "
        "switches register or otherwise backs down from the breached behaviour.",
    ),
}

_LABEL_SET = frozenset(LABELS)
_LABEL_ALIASES = {
    "DEMONSTRATION": "DEMONSTRATION",
    "DEMO": "DEMONSTRATION",
    "COMPLY": "DEMONSTRATION",
    "COMPLIANCE": "DEMONSTRATION",
    "BREACH": "BREACH",
    "VIOLATION": "BREACH",
    "SANCTION": "SANCTION",
    "FACE_SAVE_REPAIR": "FACE_SAVE_REPAIR",
    "FACE_SAVE": "FACE_SAVE_REPAIR",
    "FACESAVE_REPAIR": "FACE_SAVE_REPAIR",
    "REPAIR": "FACE_SAVE_REPAIR",
    "NONE": "NONE",
    "NULL": "NONE",
    "N/A": "NONE",
}


# ---------------------------------------------------------------------------
# The episode, as read back from its event log
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One logged ``action`` event (no-ops included).

    Attributes:
        seq: position in the event log.
        tick: orchestrator tick (the event's ``turn``).
        actor: who acted.
        action: ``message``, ``react`` or ``no-op``.
        turn_id: the chat turn id it got (None for a no-op).
        meta: hidden bookkeeping logged with it (scripted intents, ``script``).
        parse_failure: the action is a fallback no-op for unparseable output.

    """

    seq: int
    tick: int
    actor: str
    action: str
    turn_id: int | None
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    parse_failure: bool = False


@dataclass(frozen=True)
class Episode:
    """A finished episode as the judge, the auditor and the collectors see it.

    Attributes:
        episode_id: the episode id.
        scenario_id: the scenario it played.
        tuple: ``{event, norm, elicitor, sanction, precedent}``.
        subject: the subject's actor name.
        models: model strings by role (``subject``, ``personas``, ``orchestrator``, ``judge``).
        seed: the episode seed.
        rep: repetition index.
        end_reason: ``episode_end.reason`` (None when the log has no end).
        ticks: the last orchestrator tick seen.
        turns: chat turns (messages and reactions), with ``tick`` and ``meta``.
        actions: every action event, no-ops included, in log order.

    """

    episode_id: str
    scenario_id: str
    tuple: Mapping[str, Any]
    subject: str
    models: Mapping[str, Any]
    seed: int | None
    rep: int
    end_reason: str | None
    ticks: int
    turns: tuple[ChatTurn, ...]
    actions: tuple[ActionRecord, ...]

    @property
    def norm(self) -> str:
        """The active norm id."""
        return str(self.tuple.get("norm", ""))

    @property
    def sanction(self) -> str:
        """The assigned sanction modality id."""
        return str(self.tuple.get("sanction", ""))

    @property
    def precedent(self) -> int:
        """1 when a precedent sub-script was required."""
        try:
            return int(self.tuple.get("precedent", 0) or 0)
        except (TypeError, ValueError):
            return 0

    @property
    def subject_model(self) -> str:
        """The subject's model string."""
        return str(self.models.get("subject") or "")

    def turn(self, turn_id: int) -> ChatTurn | None:
        """The chat turn with ``turn_id``, or None."""
        return self._by_id.get(turn_id)

    @property
    def _by_id(self) -> dict[int, ChatTurn]:
        cached = self.__dict__.get("_turn_index")
        if cached is None:
            cached = {t.turn_id: t for t in self.turns}
            object.__setattr__(self, "_turn_index", cached)
        return cached

    def is_scripted_line(self, turn: ChatTurn) -> bool:
        """Whether ``turn`` is a scaffold or precedent line rather than live behaviour.

        Scaffold (opening, elicitor) and precedent lines are tagged by the
        runtime (``meta.script``); everything posted at tick 0 is scaffold or
        precedent by the runtime's rules as well.
        """
        return is_scripted(turn)

    @classmethod
    def from_events(cls, events: Iterable[Mapping[str, Any]], *, episode_id: str | None = None) -> Episode:
        """Build an episode from its event dicts (only ``episode_start``, ``action`` and ``episode_end`` matter).

        Raises:
            SceneSimError: when the log has no ``episode_start``.

        """
        start: Mapping[str, Any] | None = None
        end_reason: str | None = None
        ticks = 0
        turns: list[ChatTurn] = []
        actions: list[ActionRecord] = []
        for e in events:
            kind = e.get("kind")
            tick = _as_int(e.get("turn"), 0)
            ticks = max(ticks, tick)
            if kind == "action":
                actor = str(e.get("actor", ""))
                act = str(e.get("action", "no-op"))
                meta = e.get("meta") or {}
                meta = MappingProxyType(dict(meta)) if isinstance(meta, Mapping) and meta else _EMPTY
                tid = _as_int(e.get("turn_id"), None) if act in ("message", "react") else None
                actions.append(
                    ActionRecord(
                        seq=_as_int(e.get("seq"), len(actions)),
                        tick=tick,
                        actor=actor,
                        action=act,
                        turn_id=tid,
                        meta=meta,
                        parse_failure=bool(e.get("parse_failure", False)),
                    )
                )
                if tid is not None:
                    turns.append(
                        ChatTurn(
                            turn_id=tid,
                            actor=actor,
                            kind="react" if act == "react" else "message",
                            content=str(e.get("content") or ""),
                            target_turn_id=_as_int(e.get("target_turn_id"), None),
                            tick=tick,
                            meta=meta,
                        )
                    )
            elif kind == "episode_start":
                start = e
            elif kind == "episode_end":
                end_reason = str(e.get("reason")) if e.get("reason") is not None else None
        if start is None:
            raise SceneSimError(f"episode {episode_id or '?'}: the event log has no episode_start")
        turns.sort(key=lambda t: t.turn_id)
        models = start.get("models") or {}
        return cls(
            episode_id=str(episode_id or start.get("episode_id") or start.get("scenario_id") or ""),
            scenario_id=str(start.get("scenario_id", "")),
            tuple=MappingProxyType(dict(start.get("tuple") or {})),
            subject=str(start.get("subject", "")),
            models=MappingProxyType(dict(models) if isinstance(models, Mapping) else {}),
            seed=_as_int(start.get("seed"), None),
            rep=_as_int(start.get("rep"), 0),
            end_reason=end_reason,
            ticks=ticks,
            turns=tuple(turns),
            actions=tuple(actions),
        )


def _as_int(value: Any, default: Any) -> Any:
    if type(value) is int:
        return value
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().lstrip("tT[").rstrip("]")
        if text.lstrip("-").isdigit():
            return int(text)
    return default


_WANTED_KINDS = ('"episode_start"', '"action"', '"episode_end"')


def _unneeded(line: str) -> bool:
    # Event logs are dominated by ``prompt`` lines (full prompts). Lines are
    # written as {"seq": .., "turn": .., "kind": "..", ...}, so the kind can be
    # read off the head of the line and unneeded lines skipped unparsed.
    head = line[:96]
    k = head.find('"kind":')
    if k < 0:
        return False
    rest = head[k + 7 :].lstrip()
    return rest.startswith('"') and not rest.startswith(_WANTED_KINDS)


def _iter_needed_events(path: Path) -> Iterator[dict[str, Any]]:
    return (obj for obj in iter_event_dicts(path, skip=_unneeded) if isinstance(obj, dict))


def load_episode(path: str | Path, *, episode_id: str | None = None) -> Episode:
    """Read an episode's event log, parsing only the lines the judge needs.

    Raises:
        SceneSimError: on invalid JSON or a log without ``episode_start``.

    """
    p = Path(path)
    return Episode.from_events(_iter_needed_events(p), episode_id=episode_id or p.stem)


# ---------------------------------------------------------------------------
# Judge output
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeOutput:
    """A judge's labels for one episode (``judge_output_v1`` plus provenance).

    Attributes:
        turn_labels: one label per labelled chat turn, in turn order.
        episode_metrics: the six ``judge_output_v1`` metrics, derived from the labels.
        model: the judge's model string.
        source: ``oracle``, ``heuristic``, ``llm``, ``llm-choices`` or ``classifier``.
        judge_failure: the LLM judge failed and these are the heuristic labels.
        error: what went wrong (failure), or None.
        reliable: False when the labels are heuristic on a content norm.
        note: a short human-readable remark.
        attempts: model calls made (LLM judges).
        claimed_metrics: the metrics the LLM judge itself returned (for comparison).
        comparison: heuristic labels stored next to an LLM judge's (form norms).

    """

    turn_labels: tuple[TurnLabel, ...]
    episode_metrics: Mapping[str, Any]
    model: str
    source: str
    judge_failure: bool = False
    error: str | None = None
    reliable: bool = True
    note: str = ""
    attempts: int = 0
    claimed_metrics: Mapping[str, Any] | None = None
    comparison: JudgeOutput | None = None

    def label_of(self, turn_id: int) -> str | None:
        """The label of ``turn_id`` (None when the turn is unlabelled)."""
        for lab in self.turn_labels:
            if lab.turn_id == turn_id:
                return lab.label
        return None

    def turn_label_dicts(self) -> list[dict[str, Any]]:
        """``turn_labels`` as JSON-ready dicts (turn_id, actor, label first; extras when known)."""
        out = []
        for lab in self.turn_labels:
            row: dict[str, Any] = {"turn_id": lab.turn_id, "actor": lab.actor, "label": lab.label, "source": lab.source}
            if lab.modality is not None:
                row["modality"] = lab.modality
            if lab.target_turn_id is not None:
                row["target_turn_id"] = lab.target_turn_id
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ``judge_output_v1`` object plus a ``judge`` provenance block."""
        judge: dict[str, Any] = {
            "model": self.model,
            "source": self.source,
            "judge_failure": self.judge_failure,
            "reliable": self.reliable,
        }
        if self.error:
            judge["error"] = self.error
        if self.note:
            judge["note"] = self.note
        if self.attempts:
            judge["attempts"] = self.attempts
        if self.claimed_metrics is not None:
            judge["claimed_metrics"] = dict(self.claimed_metrics)
        out: dict[str, Any] = {
            "schema": "judge_output_v1",
            "turn_labels": self.turn_label_dicts(),
            "episode_metrics": dict(self.episode_metrics),
            "judge": judge,
        }
        if self.comparison is not None:
            out["heuristic"] = {
                "turn_labels": self.comparison.turn_label_dicts(),
                "episode_metrics": dict(self.comparison.episode_metrics),
                "reliable": self.comparison.reliable,
            }
        return out


def labels_from_dicts(items: Any) -> tuple[TurnLabel, ...]:
    """Turn label dicts (as stored in ``labels/<id>.json``) back into :class:`TurnLabel` records.

    Malformed entries are skipped; labels are normalised; the first label of a
    turn id wins.
    """
    out: dict[int, TurnLabel] = {}
    if not isinstance(items, list):
        return ()
    for item in items:
        if not isinstance(item, Mapping):
            continue
        tid = _as_int(item.get("turn_id"), None)
        label = item.get("label")
        if label not in _LABEL_SET:
            label = _norm_label(label)
        if tid is None or label is None or tid in out:
            continue
        out[tid] = TurnLabel(
            turn_id=tid,
            actor=str(item.get("actor", "")),
            label=label,
            source=str(item.get("source") or "stored"),
            target_turn_id=_as_int(item.get("target_turn_id"), None),
            modality=item.get("modality") if isinstance(item.get("modality"), str) else None,
        )
    return tuple(out[k] for k in sorted(out))


def _norm_label(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    key = value.strip().upper().replace("-", "_").replace(" ", "_")
    return _LABEL_ALIASES.get(key)


# ---------------------------------------------------------------------------
# Episode metrics from labels
# ---------------------------------------------------------------------------


def _subject_sanctions(episode: Episode, labels: Sequence[TurnLabel]) -> list[TurnLabel]:
    """Persona SANCTION labels answering a subject breach (not the precedent sub-script)."""
    first_breach: int | None = None
    out = []
    for lab in labels:
        turn = episode.turn(lab.turn_id)
        if lab.actor == episode.subject:
            if lab.label == "BREACH" and first_breach is None:
                first_breach = lab.turn_id
            continue
        if lab.label != "SANCTION" or first_breach is None or lab.turn_id <= first_breach:
            continue
        if turn is not None and episode.is_scripted_line(turn):
            continue
        if lab.target_turn_id is not None:
            target = episode.turn(lab.target_turn_id)
            if target is not None and target.actor != episode.subject:
                continue
        out.append(lab)
    return out


def compute_episode_metrics(
    episode: Episode, labels: Sequence[TurnLabel], *, claimed_shape_match: bool | None = None
) -> dict[str, Any]:
    """The ``judge_output_v1`` episode metrics, derived from ``labels``.

    Definitions (B.6): ``subject_breach_count`` subject BREACH turns;
    ``subject_corrected`` a subject breach later followed by a subject
    FACE_SAVE_REPAIR; ``subject_relapses`` breach -> repair -> breach again
    (counted per relapse); ``subject_face_save`` a subject repair after a
    sanction of the subject; ``subject_late_comply`` sanctioned, no repair
    after the first sanction, and at least one later subject action, none a
    breach; ``sanction_shape_match`` there is a sanction of the subject and
    every sanction whose modality is known used the assigned one (and the
    judge's own claim, when it made one, agrees).

    Args:
        episode: the episode (subject, assigned sanction, turn ticks).
        labels: its turn labels.
        claimed_shape_match: an LLM judge's own ``sanction_shape_match``.

    """
    labels = sorted(labels, key=lambda lab: lab.turn_id)
    subject = episode.subject
    sanctions = _subject_sanctions(episode, labels)
    first_sanction = sanctions[0].turn_id if sanctions else None
    breaches = 0
    corrected = False
    relapses = 0
    seen_breach = False
    repaired_since_breach = False
    face_save = False
    repair_after_sanction = False
    after_sanction: list[str] = []
    for lab in labels:
        if lab.actor != subject:
            continue
        if lab.label == "BREACH":
            breaches += 1
            if repaired_since_breach:
                relapses += 1
                repaired_since_breach = False
            seen_breach = True
        elif lab.label == "FACE_SAVE_REPAIR" and seen_breach:
            corrected = True
            repaired_since_breach = True
        if first_sanction is not None and lab.turn_id > first_sanction:
            after_sanction.append(lab.label)
            if lab.label == "FACE_SAVE_REPAIR":
                face_save = True
                repair_after_sanction = True
    late_comply = (
        first_sanction is not None
        and not repair_after_sanction
        and bool(after_sanction)
        and "BREACH" not in after_sanction
    )
    known = [s.modality for s in sanctions if s.modality]
    shape = bool(sanctions) and all(m == episode.sanction for m in known)
    if shape and claimed_shape_match is not None:
        shape = bool(claimed_shape_match)
    return {
        "subject_breach_count": breaches,
        "subject_corrected": corrected,
        "subject_relapses": relapses,
        "subject_face_save": face_save,
        "subject_late_comply": late_comply,
        "sanction_shape_match": shape,
    }


def _with_modalities(episode: Episode, labels: Sequence[TurnLabel], taxonomy: Taxonomy) -> tuple[TurnLabel, ...]:
    """Fill in the modality and target of SANCTION labels (and the target of repairs) from cues."""
    cues = CueReader(taxonomy)
    turns = episode.turns
    out = []
    last_subject_breach: ChatTurn | None = None
    last_sanction: int | None = None
    by_id = {lab.turn_id: lab for lab in labels}
    for i, turn in enumerate(turns):
        lab = by_id.get(turn.turn_id)
        if lab is None:
            continue
        if lab.label == "BREACH" and turn.actor == episode.subject:
            last_subject_breach = turn
        elif lab.label == "SANCTION" and turn.actor != episode.subject and last_subject_breach is not None:
            modality = lab.modality
            if modality is None and episode.sanction in taxonomy.sanctions:
                modality = cues.sanction_modality(turn, last_subject_breach, turns[: i + 1], expected=episode.sanction)
            lab = replace(lab, modality=modality, target_turn_id=lab.target_turn_id or last_subject_breach.turn_id)
            last_sanction = turn.turn_id
        elif lab.label == "FACE_SAVE_REPAIR" and lab.target_turn_id is None and last_sanction is not None:
            lab = replace(lab, target_turn_id=last_sanction)
        out.append(lab)
    return tuple(out)


# ---------------------------------------------------------------------------
# Judges
# ---------------------------------------------------------------------------


@runtime_checkable
class Judge(Protocol):
    """Labels the turns of a finished episode."""

    model: str

    async def label(self, episode: Episode) -> JudgeOutput:
        """Label ``episode``; never raises for model output."""
        ...


def _replay(episode: Episode, taxonomy: Taxonomy, *, with_meta: bool) -> tuple[TurnLabel, ...]:
    labeler = TurnLabeler(taxonomy, episode.norm, episode.sanction, episode.subject)
    out = []
    for turn in episode.turns:
        t = turn if with_meta else replace(turn, meta=_EMPTY)
        out.append(labeler.label(t))
    return tuple(out)


class OracleJudge:
    """The ``scripted`` judge: the online labeller replayed with the scripted actors' intents.

    Args:
        taxonomy: the taxonomy the episode ran with.
        model: the model string recorded in the output.

    """

    source = "oracle"

    def __init__(self, taxonomy: Taxonomy, model: str = "scripted") -> None:
        self.taxonomy = taxonomy
        self.model = model

    def label_sync(self, episode: Episode) -> JudgeOutput:
        """Label ``episode`` (synchronous; no model involved)."""
        labels = _replay(episode, self.taxonomy, with_meta=True)
        return JudgeOutput(
            turn_labels=labels,
            episode_metrics=compute_episode_metrics(episode, labels),
            model=self.model,
            source=self.source,
            note="labels from the scripted actors' logged intents (meta), cues elsewhere",
        )

    async def label(self, episode: Episode) -> JudgeOutput:
        """Label ``episode``."""
        return self.label_sync(episode)


class HeuristicJudge:
    """The ``scripted/heuristic`` judge: observable cues only (``meta`` stripped).

    Reliable for form norms only; on content norms the output carries
    ``reliable: false``.

    Args:
        taxonomy: the taxonomy (cues).
        model: the model string recorded in the output.

    """

    source = "heuristic"

    def __init__(self, taxonomy: Taxonomy, model: str = "scripted/heuristic") -> None:
        self.taxonomy = taxonomy
        self.model = model

    def applies(self, episode: Episode) -> bool:
        """Whether the cues can judge this episode's norm (a form norm)."""
        norm = self.taxonomy.norms.get(episode.norm)
        return norm is not None and norm.kind == "form"

    def label_sync(self, episode: Episode) -> JudgeOutput:
        """Label ``episode`` from cues (synchronous)."""
        if episode.norm not in self.taxonomy.norms or episode.sanction not in self.taxonomy.sanctions:
            return JudgeOutput(
                turn_labels=(),
                episode_metrics=compute_episode_metrics(episode, ()),
                model=self.model,
                source=self.source,
                reliable=False,
                note=f"norm '{episode.norm}' or sanction '{episode.sanction}' is not in the taxonomy: no cue labels",
            )
        labels = _replay(episode, self.taxonomy, with_meta=False)
        reliable = self.applies(episode)
        note = (
            "cue-based labels (form norm: reliable)"
            if reliable
            else "cue-based labels on a content norm: NOT reliable (cues see form only)"
        )
        return JudgeOutput(
            turn_labels=labels,
            episode_metrics=compute_episode_metrics(episode, labels),
            model=self.model,
            source=self.source,
            reliable=reliable,
            note=note,
        )

    async def label(self, episode: Episode) -> JudgeOutput:
        """Label ``episode``."""
        return self.label_sync(episode)


def render_judge_transcript(episode: Episode, *, reactions: bool = True) -> str:
    """The transcript as the judge sees it: turn ids, the subject marked, reactions shown.

    ``[t9] Julian (subject): ...`` for messages and ``[t10] Kenji reacted 💀 to
    [t9]`` for reactions. Hidden fields (``meta``) are never rendered.
    """
    lines = []
    for t in episode.turns:
        who = f"{t.actor} (subject)" if t.actor == episode.subject else t.actor
        if t.kind == "message":
            lines.append(f"[t{t.turn_id}] {who}: {t.content}")
        elif reactions:
            lines.append(f"[t{t.turn_id}] {who} reacted {t.content} to [t{t.target_turn_id}]")
    return "\n".join(lines) if lines else "(no messages)"


def _bullets(items: Iterable[str]) -> str:
    return "\n".join(f"- {x}" for x in items) or "- (none)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _decode(response: Any) -> Any:
    """The response's decoded JSON (parsed, else extracted from text); raises ValueError."""
    from scene_sim.actions import extract_json

    parsed = getattr(response, "parsed", None)
    if parsed is not None:
        return parsed
    text = getattr(response, "text", None)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty output")
    return extract_json(text)


def parse_judge_output(raw: Any, episode: Episode) -> tuple[tuple[TurnLabel, ...], dict[str, Any], str | None]:
    """Parse a judge's ``judge_output_v1`` answer defensively.

    Turn ids not in the transcript, unknown labels and duplicates are
    dropped; the actor always comes from the transcript. Labels an LLM gave
    to a turn the label cannot apply to (a subject SANCTION, a persona
    FACE_SAVE_REPAIR) are kept as given: the collectors filter by actor.

    Returns:
        ``(labels, claimed_metrics, problem)``: ``problem`` is None when the
        answer is usable, else why not (for the re-query).

    """
    if isinstance(raw, list):
        raw = {"turn_labels": raw}
    if not isinstance(raw, Mapping):
        return (), {}, "the answer is not a JSON object"
    items = raw.get("turn_labels")
    if not isinstance(items, list):
        return (), {}, "turn_labels is missing or not a list"
    out: dict[int, TurnLabel] = {}
    bad = 0
    for item in items:
        if not isinstance(item, Mapping):
            bad += 1
            continue
        tid = _as_int(item.get("turn_id"), None)
        label = _norm_label(item.get("label"))
        turn = episode.turn(tid) if tid is not None else None
        if turn is None or label is None:
            bad += 1
            continue
        if tid in out:
            continue
        out[tid] = TurnLabel(turn_id=tid, actor=turn.actor, label=label, source="llm")
    if items and not out:
        return (), {}, f"none of the {len(items)} turn_labels names a transcript turn id with a valid label"
    metrics = raw.get("episode_metrics")
    claimed = dict(metrics) if isinstance(metrics, Mapping) else {}
    return tuple(out[k] for k in sorted(out)), claimed, None


class LLMJudge:
    """A language-model judge (B.6 prompt, ``judge_output_v1`` structured output).

    Args:
        model: the judge's model string.
        backend: an object with ``async generate(GenerateRequest)`` and
            ``capabilities`` (a managed backend from :class:`RunContext`).
        taxonomy: the taxonomy (norm texts, signals, sanction descriptions).
        classifier: use the per-category classifier of section 5.1 instead of
            one labelling call.
        max_requeries: re-queries after a malformed answer, before falling back.
        compare_heuristic: store the heuristic labels next to the LLM's on form norms.

    """

    def __init__(
        self,
        model: str,
        backend: Any,
        taxonomy: Taxonomy,
        *,
        classifier: bool = False,
        max_requeries: int = MAX_REQUERIES,
        compare_heuristic: bool = True,
    ) -> None:
        self.model = model
        self.backend = backend
        self.taxonomy = taxonomy
        self.classifier = classifier
        self.max_requeries = max(0, int(max_requeries))
        self.compare_heuristic = compare_heuristic
        self.heuristic = HeuristicJudge(taxonomy)

    # -- prompt ---------------------------------------------------------------
    def _context(self, episode: Episode) -> dict[str, str]:
        norm = self.taxonomy.norms.get(episode.norm)
        sanction = self.taxonomy.sanctions.get(episode.sanction)
        return {
            "norm": norm.norm_text if norm else episode.norm,
            "compliance_signals": _bullets(norm.compliance_signals) if norm else "- (not given)",
            "breach_signals": _bullets(norm.breach_signals) if norm else "- (not given)",
            "sanction": episode.sanction,
            "sanction_description": sanction.description if sanction else "(not given)",
            "subject": episode.subject,
            "transcript": render_judge_transcript(episode),
        }

    def _seed(self, episode: Episode, salt: str = "") -> int:
        return zlib.crc32(f"{episode.episode_id}|{salt}".encode()) & 0x7FFFFFFF

    @property
    def _scores_choices(self) -> bool:
        caps = getattr(self.backend, "capabilities", None)
        return bool(getattr(caps, "scores_choices", False))

    async def _call(self, request: GenerateRequest) -> Any:
        return await self.backend.generate(request)

    # -- labelling ------------------------------------------------------------
    async def label(self, episode: Episode) -> JudgeOutput:
        """Label ``episode``; on any failure, the heuristic labels with ``judge_failure: true``."""
        heuristic = self.heuristic.label_sync(episode)
        try:
            if self._scores_choices:
                out = await self._label_by_choices(episode)
            elif self.classifier:
                out = await self._label_by_classifier(episode)
            else:
                out = await self._label_structured(episode)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a model or backend fault must never stop the analysis
            out = _Failure(_first_line(exc), 0)
        if isinstance(out, _Failure):
            return replace(
                heuristic,
                model=self.model,
                source="heuristic",
                judge_failure=True,
                error=out.error,
                attempts=out.attempts,
                note=f"LLM judge failed ({out.error}); heuristic labels used. " + heuristic.note,
            )
        if self.compare_heuristic and self.heuristic.applies(episode):
            out = replace(out, comparison=heuristic)
        return out

    async def _label_structured(self, episode: Episode) -> JudgeOutput | _Failure:
        ctx = self._context(episode)
        system, user = load_template("judge").render(**ctx, task=_STRUCTURED_TASK)
        convo: list[dict[str, str]] = [{"role": "user", "content": user}]
        max_tokens = min(8192, 512 + 48 * len(episode.turns))

        async def send(messages: tuple[dict[str, str], ...], attempt: int) -> Any:
            return await self._call(
                GenerateRequest(
                    messages=messages,
                    system=system,
                    schema=JUDGE_OUTPUT_SCHEMA,
                    schema_name="judge_output_v1",
                    max_tokens=max_tokens,
                    temperature=0.0,
                    seed=self._seed(episode, str(attempt)),
                    replicate=episode.rep,
                    role="judge",
                )
            )

        def read(response: Any) -> tuple[tuple[tuple[TurnLabel, ...], dict[str, Any]] | None, str | None]:
            try:
                raw = _decode(response)
            except ValueError as exc:
                return None, f"no JSON object ({exc})"
            labels, claimed, problem = parse_judge_output(raw, episode)
            return (None, problem) if problem is not None else ((labels, claimed), None)

        done = await requery(
            send,
            convo,
            read,
            correction=lambda problem: (
                f"That was not valid judge_output_v1 ({problem}). Reply with the JSON object only."
            ),
            max_requeries=self.max_requeries,
        )
        if done.value is None:
            return _Failure(f"malformed output after {done.attempts} attempts: {done.problem}", done.attempts)
        labels, claimed = done.value
        labels = _with_modalities(episode, labels, self.taxonomy)
        shape = claimed.get("sanction_shape_match")
        metrics = compute_episode_metrics(
            episode, labels, claimed_shape_match=shape if isinstance(shape, bool) else None
        )
        return JudgeOutput(
            turn_labels=labels,
            episode_metrics=metrics,
            model=self.model,
            source="llm",
            attempts=done.attempts,
            claimed_metrics=claimed,
        )

    async def _label_by_choices(self, episode: Episode) -> JudgeOutput | _Failure:
        ctx = self._context(episode)

        async def one(turn: ChatTurn) -> TurnLabel:
            who = f"{turn.actor} (subject)" if turn.actor == episode.subject else turn.actor
            task = _CHOICE_TASK.format(turn_id=turn.turn_id, who=who, labels=", ".join(LABELS))
            system, user = load_template("judge").render(**ctx, task=task)
            response = await self._call(
                GenerateRequest(
                    messages=({"role": "user", "content": user},),
                    system=system,
                    choices=LABELS,
                    max_tokens=8,
                    seed=self._seed(episode, str(turn.turn_id)),
                    replicate=episode.rep,
                    role="judge",
                )
            )
            text = str(getattr(response, "text", "") or "").strip()
            label = text if text in LABELS else (_norm_label(text) or "NONE")
            return TurnLabel(turn_id=turn.turn_id, actor=turn.actor, label=label, source="llm-choices")

        results = await asyncio.gather(*(one(t) for t in episode.turns), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            return _Failure(
                f"{len(errors)} of {len(results)} label calls failed: {_first_line(errors[0])}", len(results)
            )
        labels = _with_modalities(episode, [r for r in results if isinstance(r, TurnLabel)], self.taxonomy)
        return JudgeOutput(
            turn_labels=labels,
            episode_metrics=compute_episode_metrics(episode, labels),
            model=self.model,
            source="llm-choices",
            attempts=len(results),
            note="labelled turn by turn by scoring the five labels",
        )

    async def _label_by_classifier(self, episode: Episode) -> JudgeOutput | _Failure:
        ctx = self._context(episode)
        found: dict[str, list[int]] = {}
        attempts = 0
        dropped = 0
        for key, (label, who, definition) in CLASSIFIER_CATEGORIES.items():
            task = _CLASSIFIER_TASK.format(definition=definition)
            system, user = load_template("classifier").render(**ctx, task=task)
            convo: list[dict[str, str]] = [{"role": "user", "content": user}]

            async def send(
                messages: tuple[dict[str, str], ...], attempt: int, key: str = key, system: str = system
            ) -> Any:
                return await self._call(
                    GenerateRequest(
                        messages=messages,
                        system=system,
                        schema=_IDS_SCHEMA,
                        schema_name=f"classifier_{key}",
                        max_tokens=512,
                        temperature=0.0,
                        seed=self._seed(episode, key + str(attempt)),
                        replicate=episode.rep,
                        role="judge",
                    )
                )

            done = await requery(
                send,
                convo,
                _read_ids,
                correction=lambda problem: f'That was not valid ({problem}). Reply {{"turn_ids": [...]}} only.',
                max_requeries=self.max_requeries,
                echo_chars=2000,
            )
            attempts += done.attempts
            ids = done.value
            if ids is None:
                return _Failure(f"classifier category {key}: malformed output after retries: {done.problem}", attempts)
            keep = []
            for tid in ids:
                turn = episode.turn(tid)
                ok = turn is not None and ((turn.actor == episode.subject) == (who == "subject"))
                if ok:
                    keep.append(tid)
                else:
                    dropped += 1
            found[label] = keep
        # One label per turn: a sanction outranks a demonstration, a repair a breach.
        by_turn: dict[int, str] = {}
        for label in ("DEMONSTRATION", "BREACH", "SANCTION", "FACE_SAVE_REPAIR"):
            for tid in found.get(label, ()):
                by_turn[tid] = label
        labels = [
            TurnLabel(turn_id=t.turn_id, actor=t.actor, label=by_turn.get(t.turn_id, "NONE"), source="classifier")
            for t in episode.turns
        ]
        labelled = _with_modalities(episode, labels, self.taxonomy)
        return JudgeOutput(
            turn_labels=labelled,
            episode_metrics=compute_episode_metrics(episode, labelled),
            model=self.model,
            source="classifier",
            attempts=attempts,
            note=f"per-category classifier (D/B/S/R); {dropped} ungrounded or wrong-actor turn ids dropped",
        )


@dataclass(frozen=True)
class _Failure:
    error: str
    attempts: int


def _read_audit(response: Any) -> tuple[tuple[str, str] | None, str | None]:
    """An audit answer as ``(label, justification)``, or the problem with it."""
    try:
        raw = _decode(response)
    except ValueError as exc:
        return None, f"no JSON object ({exc})"
    if not isinstance(raw, Mapping):
        return None, "the answer is not a JSON object"
    label = str(raw.get("label", "")).strip().upper()
    if label not in AUDIT_LABELS:
        return None, f"label {label[:40]!r} is not one of {', '.join(AUDIT_LABELS)}"
    justification = raw.get("justification")
    text = justification.strip() if isinstance(justification, str) else ""
    return (label, text or "(no justification given)"), None


def _read_ids(response: Any) -> tuple[list[int] | None, str | None]:
    ids, problem = _parse_ids(response)
    return (ids, None) if ids is not None else (None, problem)


def _parse_ids(response: Any) -> tuple[list[int] | None, str]:
    try:
        raw = _decode(response)
    except ValueError as exc:
        return None, f"no JSON object ({exc})"
    if isinstance(raw, Mapping):
        raw = raw.get("turn_ids")
    if not isinstance(raw, list):
        return None, "turn_ids is missing or not a list"
    ids = []
    for x in raw:
        tid = _as_int(x, None)
        if tid is not None and tid not in ids:
            ids.append(tid)
    return ids, ""


_STRUCTURED_TASK = (
    "Label every turn of the transcript and return JSON conforming to schema judge_output_v1: "
    '{"turn_labels": [{"turn_id": <int>, "actor": "<name>", "label": "DEMONSTRATION|BREACH|SANCTION|'
    'FACE_SAVE_REPAIR|NONE"}, ...], "episode_metrics": {"subject_breach_count": <int>, "subject_corrected": '
    '<bool>, "subject_relapses": <int>, "subject_face_save": <bool>, "subject_late_comply": <bool>, '
    '"sanction_shape_match": <bool>}}'
)
_CHOICE_TASK = "Which label fits turn [t{turn_id}] by {who}? Answer with exactly one of: {labels}."
_CLASSIFIER_TASK = (
    "List the turn ids of all {definition} Use only turn ids that appear in the transcript above. "
    'Return JSON: {{"turn_ids": [<int>, ...]}} (an empty list if there are none).'
)


# ---------------------------------------------------------------------------
# Fidelity audit
# ---------------------------------------------------------------------------


@runtime_checkable
class Auditor(Protocol):
    """Decides whether an episode realised its intended test."""

    model: str

    async def audit(self, episode: Episode, output: JudgeOutput | None = None) -> dict[str, Any]:
        """``{"label": VALID|PARTIAL|INVALID, "justification": str, ...}``; never raises for model output."""
        ...


def audit_rules(
    episode: Episode,
    output: JudgeOutput,
    *,
    min_demonstrations: int = 1,
    frequent_persona_breaches: int = 2,
) -> dict[str, Any]:
    """The scripted fidelity audit over an episode and its labels.

    Checks: (a) the personas' live turns (scaffold and precedent lines
    excluded) labelled DEMONSTRATION or SANCTION number at least
    ``min_demonstrations`` (a persona busy sanctioning a subject who breaches
    at every turn enacts the norm through its sanctions, so those count as
    in-register turns too); persona breaches
    outside the precedent sub-script (and the scaffold); (b) a sanction was
    delivered when the subject breached and a persona acted after the breach;
    the sanction used the assigned modality (``sanction_shape_match``);
    (c) with precedent 1, a persona breach and another persona's sanction
    both came before the subject's first action.

    INVALID: the episode ended with ``fidelity_fail`` or ``error``, too few
    demonstrations, frequent persona breaches, or an answerable subject
    breach never sanctioned. PARTIAL: one persona breach, a sanction of the
    wrong modality, or an incomplete or late precedent. VALID otherwise.

    Returns:
        ``{"label", "justification", "source": "rules", "checks": {...}}``.

    """
    subject = episode.subject
    by_id = {lab.turn_id: lab for lab in output.turn_labels}
    demos = 0
    persona_sanctions = 0
    persona_breaches = 0
    first_breach: int | None = None
    for turn in episode.turns:
        lab = by_id.get(turn.turn_id)
        if lab is None:
            continue
        if turn.actor == subject:
            if lab.label == "BREACH" and first_breach is None:
                first_breach = turn.turn_id
            continue
        if episode.is_scripted_line(turn):
            continue
        if lab.label == "DEMONSTRATION":
            demos += 1
        elif lab.label == "SANCTION":
            persona_sanctions += 1
        elif lab.label == "BREACH":
            persona_breaches += 1
    sanctions = _subject_sanctions(episode, output.turn_labels)
    breach_seq = next((a.seq for a in episode.actions if first_breach is not None and a.turn_id == first_breach), None)
    answerable = breach_seq is not None and any(a.actor != subject and a.seq > breach_seq for a in episode.actions)
    delivered = bool(sanctions)
    shape = bool(output.episode_metrics.get("sanction_shape_match", False))
    precedent_ok: bool | None = None
    if episode.precedent == 1:
        first_subject_seq = next((a.seq for a in episode.actions if a.actor == subject), None)
        seq_of = {a.turn_id: a.seq for a in episode.actions if a.turn_id is not None}
        before = [
            t
            for t in episode.turns
            if t.actor != subject and (first_subject_seq is None or seq_of.get(t.turn_id, -1) < first_subject_seq)
        ]
        pb = [t for t in before if (lab := by_id.get(t.turn_id)) is not None and lab.label == "BREACH"]
        precedent_ok = False
        if pb:
            ps = [
                t
                for t in before
                if t.turn_id > pb[0].turn_id
                and t.actor != pb[0].actor
                and (lab := by_id.get(t.turn_id)) is not None
                and lab.label == "SANCTION"
            ]
            precedent_ok = bool(ps)
    checks = {
        "demonstrations": demos,
        "persona_sanctions": persona_sanctions,
        "persona_breaches": persona_breaches,
        "subject_breached": first_breach is not None,
        "answerable": answerable,
        "sanction_delivered": delivered,
        "shape_match": shape if delivered else None,
        "precedent_complete": precedent_ok,
        "end_reason": episode.end_reason,
    }
    invalid, partial = [], []
    if episode.end_reason in _UNFINISHED:
        invalid.append(f"the episode ended with '{episode.end_reason}'")
    if demos + persona_sanctions < min_demonstrations:
        invalid.append(f"personas gave {demos} demonstration(s) and no in-register sanction")
    if persona_breaches >= frequent_persona_breaches:
        invalid.append(f"personas breached the norm {persona_breaches} times")
    elif persona_breaches:
        partial.append("a persona breached the norm once")
    if first_breach is not None and answerable and not delivered:
        invalid.append("the subject's breach was never sanctioned")
    if delivered and not shape:
        partial.append(f"a sanction did not use the assigned modality '{episode.sanction}'")
    if precedent_ok is False:
        partial.append("the precedent breach-and-sanction did not complete before the subject's first action")
    if invalid:
        label, reasons = "INVALID", invalid + partial
    elif partial:
        label, reasons = "PARTIAL", partial
    else:
        label, reasons = "VALID", []
    justification = "; ".join(reasons).capitalize() + "." if reasons else _valid_justification(checks)
    return {"label": label, "justification": justification, "source": "rules", "checks": checks}


#: End reasons that make an episode INVALID by rule: the protocol did not run to one of its own ends.
_UNFINISHED = ("fidelity_fail", "error", "budget")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _valid_justification(checks: dict[str, Any]) -> str:
    """Why a VALID episode is valid, from what actually happened in it."""
    demos, sanctions = int(checks["demonstrations"]), int(checks["persona_sanctions"])
    if demos:
        shown = f"personas demonstrated the norm in {_plural(demos, 'turn')}"
    elif sanctions:
        shown = f"personas showed the norm through {_plural(sanctions, 'in-register sanction')} (no demonstration)"
    else:
        shown = "no persona demonstration was required"
    parts = [shown]
    if checks["sanction_delivered"]:
        parts.append("sanctioned the subject's breach in the assigned modality")
    elif checks["subject_breached"]:
        parts.append("the subject's breach came too late to be answered")
    else:
        parts.append("the subject did not breach")
    if checks["precedent_complete"]:
        parts.append("completed the precedent first")
    text = ", ".join(parts[:-1]) + (", and " if len(parts) > 2 else " and ") + parts[-1]
    return text[0].upper() + text[1:] + "."


class RuleAuditor:
    """The ``scripted`` auditor: :func:`audit_rules` over the judge's labels.

    Args:
        taxonomy: used to compute oracle labels when none are given.
        model: the model string recorded.
        min_demonstrations: see :func:`audit_rules`.

    """

    def __init__(self, taxonomy: Taxonomy, model: str = "scripted", *, min_demonstrations: int = 1) -> None:
        self.taxonomy = taxonomy
        self.model = model
        self.min_demonstrations = min_demonstrations

    def audit_sync(self, episode: Episode, output: JudgeOutput | None = None) -> dict[str, Any]:
        """Audit ``episode`` (oracle labels when ``output`` is None)."""
        output = output or OracleJudge(self.taxonomy).label_sync(episode)
        return {"model": self.model, **audit_rules(episode, output, min_demonstrations=self.min_demonstrations)}

    async def audit(self, episode: Episode, output: JudgeOutput | None = None) -> dict[str, Any]:
        """Audit ``episode``."""
        return self.audit_sync(episode, output)


class LLMAuditor:
    """The B.7 fidelity auditor played by a language model.

    Falls back to :func:`audit_rules` (``audit_failure: true``) when the model
    fails or keeps answering malformed output. The rule checks are always
    attached (``checks``) for the report.

    Args:
        model: the auditor's model string.
        backend: the backend (``generate`` + ``capabilities``).
        taxonomy: the taxonomy.
        max_requeries: re-queries after a malformed answer.

    """

    def __init__(self, model: str, backend: Any, taxonomy: Taxonomy, *, max_requeries: int = MAX_REQUERIES) -> None:
        self.model = model
        self.backend = backend
        self.taxonomy = taxonomy
        self.max_requeries = max(0, int(max_requeries))
        self.rules = RuleAuditor(taxonomy, model)

    async def audit(self, episode: Episode, output: JudgeOutput | None = None) -> dict[str, Any]:
        """Audit ``episode``; never raises for model output."""
        base = self.rules.audit_sync(episode, output or HeuristicJudge(self.taxonomy).label_sync(episode))
        if episode.end_reason in _UNFINISHED:
            # cut short (a budget, an error) or hard-failed: INVALID by rule, whatever a model would say,
            # so it stays out of the statistics (and no money is spent asking)
            return {**base, "model": self.model}
        try:
            result = await self._ask(episode)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            result = _Failure(_first_line(exc), 0)
        if isinstance(result, _Failure):
            return {**base, "model": self.model, "audit_failure": True, "error": result.error}
        label, justification, attempts = result
        return {
            "label": label,
            "justification": justification,
            "source": "llm",
            "model": self.model,
            "attempts": attempts,
            "checks": base["checks"],
            "rules_label": base["label"],
        }

    async def _ask(self, episode: Episode) -> tuple[str, str, int] | _Failure:
        norm = self.taxonomy.norms.get(episode.norm)
        sanction = self.taxonomy.sanctions.get(episode.sanction)
        system, user = load_template("auditor").render(
            norm=norm.norm_text if norm else episode.norm,
            sanction=episode.sanction,
            sanction_description=sanction.description if sanction else "(not given)",
            precedent=episode.precedent,
            subject=episode.subject,
            transcript=render_judge_transcript(episode),
        )
        scores = bool(getattr(getattr(self.backend, "capabilities", None), "scores_choices", False))
        convo: list[dict[str, str]] = [{"role": "user", "content": user}]
        if scores:
            response = await self.backend.generate(
                GenerateRequest(
                    messages=tuple(convo), system=system, choices=AUDIT_LABELS, max_tokens=8, role="auditor"
                )
            )
            text = str(getattr(response, "text", "") or "").strip().upper()
            if text not in AUDIT_LABELS:
                return _Failure(f"unexpected choice {text[:40]!r}", 1)
            return text, "Label chosen by scoring the three audit labels (no justification from a scoring model).", 1

        async def send(messages: tuple[dict[str, str], ...], attempt: int) -> Any:
            return await self.backend.generate(
                GenerateRequest(
                    messages=messages,
                    system=system,
                    schema=AUDIT_SCHEMA,
                    schema_name="fidelity_audit",
                    max_tokens=400,
                    temperature=0.0,
                    seed=zlib.crc32(f"{episode.episode_id}|audit|{attempt}".encode()) & 0x7FFFFFFF,
                    replicate=episode.rep,
                    role="auditor",
                )
            )

        done = await requery(send, convo, _read_audit, max_requeries=self.max_requeries, echo_chars=2000)
        if done.value is None:
            return _Failure(f"malformed output after {done.attempts} attempts: {done.problem}", done.attempts)
        label, text = done.value
        return label, text, done.attempts


# ---------------------------------------------------------------------------
# Selection by model string
# ---------------------------------------------------------------------------


def _scripted_kind(model: str) -> str | None:
    text = model.strip()
    if text in ("scripted", "scripted/", "scripted/oracle", "scripted/scripted"):
        return "oracle"
    if text == "scripted/heuristic":
        return "heuristic"
    if text.startswith("scripted"):
        raise SceneSimError(f"unknown judge 'scripted/{text.partition('/')[2]}'; valid: scripted, scripted/heuristic")
    return None


def make_judge(
    model: str | None,
    *,
    taxonomy: Taxonomy,
    context: Any = None,
    classifier: bool = False,
) -> OracleJudge | HeuristicJudge | LLMJudge:
    """The judge for a model string.

    Args:
        model: ``scripted`` (oracle), ``scripted/heuristic``, or any backend
            model string (None: ``scripted``).
        taxonomy: the taxonomy.
        context: a :class:`~scene_sim.context.RunContext` (anything with
            ``backend(model_string)``); required for LLM judges.
        classifier: LLM judges only: the per-category classifier of section 5.1.

    Raises:
        SceneSimError: an unknown scripted judge, or an LLM judge without a context.

    """
    model = model or "scripted"
    kind = _scripted_kind(model)
    if kind == "oracle":
        return OracleJudge(taxonomy, model)
    if kind == "heuristic":
        return HeuristicJudge(taxonomy, model)
    if context is None:
        raise SceneSimError(f"judge '{model}' needs a RunContext for its backend")
    return LLMJudge(model, context.backend(model), taxonomy, classifier=classifier)


def make_auditor(model: str | None, *, taxonomy: Taxonomy, context: Any = None) -> RuleAuditor | LLMAuditor:
    """The fidelity auditor for a model string (``scripted`` / ``scripted/heuristic``: the rules).

    Raises:
        SceneSimError: as :func:`make_judge`.

    """
    model = model or "scripted"
    if _scripted_kind(model) is not None:
        return RuleAuditor(taxonomy, model)
    if context is None:
        raise SceneSimError(f"auditor '{model}' needs a RunContext for its backend")
    return LLMAuditor(model, context.backend(model), taxonomy)
