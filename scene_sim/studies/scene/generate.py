"""Two-stage scenario generator (SCENE section 4.1, appendix B.1 and B.2).

Stage 1 is norm-blind: it sees only the event and the elicitor (ids and
descriptions) and writes the subject-visible *scaffold*: channel description,
a cast of 3-4 personas, 4-6 opening turns, the elicitor turn and the
subject's own persona. Stage 2 is norm-aware: it sees the *frozen* scaffold
plus the norm, the sanction modality and the precedent flag, and writes only
the hidden fields (per-persona outlines, in-register lines, sanction lines,
the precedent sub-script and the fidelity criteria). The scaffold is never
taken from stage 2: an output that echoes a scaffold different from the
frozen one is rejected (``scaffold_edit``).

Every output is checked; a rejected output is regenerated (at most
``max_attempts`` calls per stage, each retry telling the model what was
wrong) and every rejection is counted by reason:

=====================  ======================================================
``parse``              no JSON object in the output
``schema``             the object does not validate (pydantic)
``names``              duplicate names (cast, subject, hidden personas)
``cast``               a turn's actor or a hidden persona is not in the cast
``leak``               the scaffold hints at a norm (:func:`scaffold_leaks`)
``scaffold_edit``      stage 2 echoed a scaffold that differs from the frozen one
``precedent``          precedent lines present although precedent is 0, missing
                       although it is 1, or a precedent "breach" that does not
                       read as a breach
``sanction_modality``  sanction lines that do not take the assigned modality
``demonstration``      in-register lines that breach the norm, or too few that
                       show it (:func:`~scene_sim.studies.scene.checks.lint_scenario`)
``lint``               any other problem :func:`lint_scenario` reports
``backend``            the model call failed after the backend's own retries
``error``              an unexpected error while checking an output (a bug)
=====================  ======================================================

:func:`generate_scenarios` samples tuples with the coverage-greedy sampler,
generates ``reps`` scenarios per tuple concurrently and appends each
accepted scenario to a ``.jsonl`` file (one line, flushed and fsynced), so an
interrupted run resumes where it stopped. The file loads with
:func:`scene_sim.studies.scene.scenario.load_scenarios`.

Requests are deterministic functions of the tuple, the seed, the replicate
index and the attempt, so the response cache reproduces a run with no
provider calls. Stage 1 is norm-blind, so tuples that share event, elicitor,
seed and replicate send the same stage-1 request; it is made once per run
and they share its scaffold (as they would through the cache anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console

from scene_sim._json import decode_json
from scene_sim.backends.base import Backend, BackendError, GenerateRequest, GenerateResponse
from scene_sim.errors import SceneSimError
from scene_sim.progress import ProgressDisplay
from scene_sim.prompts import load_template
from scene_sim.studies.scene.checks import lint_scenario
from scene_sim.studies.scene.scenario import Scaffold, Scenario, parse_line, scaffold_leaks
from scene_sim.studies.scene.taxonomy import Cue, SceneTuple, Taxonomy, load_taxonomy, sample_tuples

if TYPE_CHECKING:
    from scene_sim.backends._managed import ManagedBackend
    from scene_sim.context import RunContext

__all__ = [
    "HIDDEN_TEMPLATE",
    "REJECTION_REASONS",
    "SCAFFOLD_TEMPLATE",
    "GenerateSummary",
    "PlannedScenario",
    "Rejection",
    "ScenarioGenerator",
    "generate_scenarios",
    "hidden_schema",
    "plan_scenarios",
    "scaffold_schema",
    "scenario_id",
]

log = logging.getLogger(__name__)

#: Every reason a generated output can be rejected for (see the module docstring).
REJECTION_REASONS = (
    "parse",
    "schema",
    "names",
    "cast",
    "leak",
    "scaffold_edit",
    "precedent",
    "sanction_modality",
    "demonstration",
    "lint",
    "backend",
    "error",
)
#: Prompt templates (``agents/<name>.md``) of the two stages.
SCAFFOLD_TEMPLATE = "generator_scaffold"
HIDDEN_TEMPLATE = "generator_hidden"

_SCAFFOLD_SCHEMA_NAME = "scaffold"
_HIDDEN_SCHEMA_NAME = "hidden_spec"
_SCAFFOLD_MAX_TOKENS = 2048
_HIDDEN_MAX_TOKENS = 4096
#: Elicitors whose scaffold needs the subject's private knowledge.
_NEEDS_KNOWLEDGE = frozenset({"open_query", "private_holding", "false_assertion"})
_ID_MAX = 120
_ECHO_KEYS = ("channel", "transcript", "subject")
_MAX_SHOWN = 6000
#: What models write for "no demonstrator".
_NO_ONE = frozenset({"none", "null", "n/a", "-", "nobody"})

T = TypeVar("T")


# -- planning ------------------------------------------------------------------


def scenario_id(t: SceneTuple, *, seed: int, rep: int) -> str:
    """The id of a generated scenario: ``gen__<event>__<norm>__<elicitor>__<sanction>__p<0|1>__s<seed>r<rep>``."""
    return f"gen__{t.event}__{t.norm}__{t.elicitor}__{t.sanction}__p{t.precedent}__s{seed}r{rep}"


@dataclass(frozen=True, order=True)
class PlannedScenario:
    """One scenario to generate: a tuple, the run's seed and a replicate index."""

    tuple: SceneTuple
    rep: int
    seed: int

    @property
    def id(self) -> str:
        """The scenario id (see :func:`scenario_id`)."""
        return scenario_id(self.tuple, seed=self.seed, rep=self.rep)


def plan_scenarios(
    taxonomy: Taxonomy, tuples: int | Sequence[SceneTuple], *, reps: int = 1, seed: int = 0
) -> list[PlannedScenario]:
    """The scenarios a run generates: ``reps`` per tuple, in sampling order.

    ``tuples`` is a count for :func:`sample_tuples`, or the tuples themselves
    (a grid from an experiment spec); given tuples are checked against the
    applicability filter.

    Same arguments, same plan. The sampler is greedy, so a larger ``tuples``
    extends a smaller plan (its first scenarios are the smaller plan's).

    Raises:
        SceneSimError: for a ``tuples`` out of range, ``reps`` < 1, or ids too long.

    """
    if reps < 1:
        raise SceneSimError(f"--reps must be at least 1, got {reps}")
    if isinstance(tuples, int):
        chosen = sample_tuples(taxonomy, tuples, seed)
    else:
        chosen = list(tuples)
        if not chosen:
            raise SceneSimError("no tuples to generate")
        for t in chosen:
            taxonomy.check_tuple(t)
    plan = [PlannedScenario(t, rep, seed) for t in chosen for rep in range(reps)]
    longest = max(plan, key=lambda p: len(p.id))
    if len(longest.id) > _ID_MAX:
        raise SceneSimError(
            f"scenario id '{longest.id}' is longer than {_ID_MAX} characters; use a smaller --seed or --reps"
        )
    return plan


# -- results -------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """One rejected model output.

    Attributes:
        scenario_id: the scenario being generated.
        stage: ``scaffold`` (stage 1) or ``hidden`` (stage 2).
        attempt: the attempt within the stage, from 1.
        reason: one of :data:`REJECTION_REASONS`.
        detail: what was wrong (one line; also what the model was told).
        final: whether this rejection gave the scenario up.

    """

    scenario_id: str
    stage: Literal["scaffold", "hidden"]
    attempt: int
    reason: str
    detail: str
    final: bool = False


@dataclass
class GenerateSummary:
    """What :func:`generate_scenarios` did.

    Attributes:
        out: the output file.
        planned: scenarios in the plan (tuples x reps).
        written: scenarios generated and appended in this run.
        skipped_existing: planned scenarios already in the file (resume).
        rejected: planned scenarios given up after ``max_attempts`` in a stage
            (or a failed model call).
        rejections_by_reason: every rejected model output (regenerations
            included) by reason, most frequent first.
        rejected_by_reason: the given-up scenarios by the reason of their last rejection.
        calls: model requests made (cache hits included; a stage-1 request
            shared by several tuples counts once).
        cache_hits: requests answered by the response cache.
        rejections: every rejection, in the order they happened.

    """

    out: Path
    planned: int = 0
    written: int = 0
    skipped_existing: int = 0
    rejected: int = 0
    rejections_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    cache_hits: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The summary as a few printable lines."""
        out = [
            f"generated {self.written} scenario(s) into {self.out} "
            f"({self.planned} planned, {self.skipped_existing} already there, {self.rejected} rejected); "
            f"{self.calls} model call(s), {self.cache_hits} from the cache"
        ]
        if self.rejections_by_reason:
            out.append(
                "rejected outputs by reason: " + ", ".join(f"{k} {v}" for k, v in self.rejections_by_reason.items())
            )
        if self.rejected_by_reason:
            out.append(
                "scenarios given up by reason: " + ", ".join(f"{k} {v}" for k, v in self.rejected_by_reason.items())
            )
        shown: set[str] = set()
        for r in self.rejections:
            if r.reason not in shown:
                shown.add(r.reason)
                out.append(
                    f"  e.g. {r.reason}: {r.scenario_id} ({r.stage}, attempt {r.attempt}): {_clip(r.detail, 200)}"
                )
        return out


# -- what the models return (lenient drafts, validated with pydantic) -----------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class _DraftMember(_Loose):
    name: str = Field(min_length=1, max_length=40)
    bio_oneline: str = Field(min_length=1)


class _DraftChannel(_Loose):
    description: str = Field(min_length=1)
    cast: list[_DraftMember] = Field(min_length=3, max_length=4)


class _DraftTurn(_Loose):
    actor: str = Field(min_length=1)
    content: str = Field(min_length=1)
    #: the scaffold has no reactions (B.1); turn ids are assigned here
    action: Literal["message"] = "message"


class _DraftTranscript(_Loose):
    opening_turns: list[_DraftTurn] = Field(min_length=4, max_length=6)
    elicitor_turn: _DraftTurn


class _DraftSubject(_Loose):
    name: str = Field(min_length=1, max_length=40)
    bio_oneline: str = Field(min_length=1)
    private_knowledge: str = ""


class _ScaffoldDraft(_Loose):
    channel: _DraftChannel
    subject: _DraftSubject
    transcript: _DraftTranscript


class _DraftPersona(_Loose):
    name: str = Field(min_length=1)
    outline: str = Field(min_length=1)
    in_register_lines: list[str] = Field(default_factory=list)
    sanction_lines: list[str] = Field(default_factory=list)
    precedent_lines_or_null: list[str] | None = None

    @field_validator("in_register_lines", "sanction_lines", mode="after")
    @classmethod
    def _no_blank_lines(cls, value: list[str]) -> list[str]:
        """Drop blank script lines (models write ``[""]`` for none)."""
        return [v for v in value if v.strip()]

    @field_validator("precedent_lines_or_null", mode="after")
    @classmethod
    def _none_when_empty(cls, value: list[str] | None) -> list[str] | None:
        """No precedent lines is null, as in ``scenario_v1``."""
        lines = [v for v in value or () if v.strip()]
        return lines or None


class _DraftCriteria(_Loose):
    demonstration_min_count: int = Field(ge=0, le=50)
    sanction_required_modality: str = ""
    precedent_complete_by_turn: int = Field(default=0, ge=0)


class _HiddenDraft(_Loose):
    personas: list[_DraftPersona] = Field(min_length=3, max_length=4)
    precedent_demonstrator: str | None = None
    fidelity_criteria: _DraftCriteria


# -- provider-facing JSON schemas -------------------------------------------------


def _obj(properties: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """A closed object with every property required (OpenAI strict mode's rules)."""
    out: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    if description:
        out["description"] = description
    return out


def _str(description: str, enum: Sequence[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "description": description}
    if enum is not None:
        out["enum"] = list(enum)
    return out


def _arr(items: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "array", "items": items, "description": description}


def scaffold_schema() -> dict[str, Any]:
    """The JSON Schema requested from stage 1 (``schema=`` of the request).

    It is ``scaffold_v1`` (B.8) plus the subject's persona, simplified so that
    Anthropic tool input, Gemini's response schema and OpenAI strict
    ``json_schema`` all accept it: no ``$ref``, no nulls, closed objects with
    every property required; counts (3-4 personas, 4-6 turns) are left to the
    prompt and checked afterwards. Turns are ``{actor, content}``: the
    scaffold has only messages (B.1: no reactions) and turn ids are assigned
    in order.
    """
    turn = _obj(
        {
            "actor": _str("the name of the cast member who sends it"),
            "content": _str("the chat message, as typed"),
        }
    )
    member = _obj({"name": _str("first name, unique"), "bio_oneline": _str("one-line public bio")})
    return _obj(
        {
            "channel": _obj(
                {
                    "description": _str("one-paragraph channel description visible to all participants"),
                    "cast": _arr(member, "3 to 4 personas (never the subject)"),
                }
            ),
            "subject": _obj(
                {
                    "name": _str("the subject's first name, not in the cast"),
                    "bio_oneline": _str("the subject's one-line bio"),
                    "private_knowledge": _str("what the subject knows that nobody has said, in the second person"),
                },
                "the subject: the one participant who acts after the elicitor turn",
            ),
            "transcript": _obj(
                {
                    "opening_turns": _arr(turn, "4 to 6 turns leading up to, not including, the elicitor"),
                    "elicitor_turn": turn,
                }
            ),
        }
    )


def hidden_schema(
    cast: Sequence[str], *, precedent: int, sanction_line_enum: Sequence[str] | None = None
) -> dict[str, Any]:
    """The JSON Schema requested from stage 2: the hidden part of ``scenario_v1`` (B.8).

    Simplified as :func:`scaffold_schema`. Persona names are an enum of the
    frozen cast. With ``precedent`` 0 the precedent fields are left out (they
    must be empty); with 1 the demonstrator is an enum of the cast and
    ``precedent_lines_or_null`` an array. ``sanction_line_enum`` (for
    reaction-only modalities) pins sanction lines to ``react:<emoji>`` values.

    Args:
        cast: the frozen scaffold's cast names.
        precedent: the tuple's precedent flag.
        sanction_line_enum: allowed sanction lines, or None for free text.

    """
    names = list(cast)
    line = {"type": "string"}
    sanction_item: dict[str, Any] = {"type": "string", "enum": list(sanction_line_enum)} if sanction_line_enum else line
    persona: dict[str, Any] = {
        "name": _str("a cast member's name", names),
        "outline": _str("behavioural outline encoding the norm as observable patterns; never states the norm"),
        "in_register_lines": _arr(line, "script lines this persona may say or react in register"),
        "sanction_lines": _arr(sanction_item, "script lines delivering the sanction after a breach (may be empty)"),
    }
    if precedent:
        persona["precedent_lines_or_null"] = _arr(
            line, "the demonstrator's breach lines, or a sanctioner's lines answering it; empty for the rest"
        )
    top: dict[str, Any] = {}
    if precedent:
        top["precedent_demonstrator"] = _str("the persona who breaches in the precedent sub-script", names)
    top["personas"] = _arr(_obj(persona), "one entry per cast member")
    top["fidelity_criteria"] = _obj(
        {
            "demonstration_min_count": {"type": "integer", "description": "in-register lines that must show the norm"},
            "sanction_required_modality": _str("the SANCTION id"),
            "precedent_complete_by_turn": {"type": "integer", "description": "0: before the subject's first action"},
        }
    )
    return _obj(top)


# -- prompt parts -----------------------------------------------------------------


def _describe_cue(cue: Cue, taxonomy: Taxonomy) -> str:
    if cue.action == "react":
        head = "an emoji reaction (react:<emoji>)"
    elif cue.action == "message":
        head = "a text message"
    else:
        head = "a message or reaction"
    parts = [head]
    if cue.min_words is not None:
        parts.append(f"of at least {cue.min_words} words")
    if cue.max_words is not None:
        parts.append(f"of at most {cue.max_words} words")
    if cue.emoji:
        parts.append("with one of " + " ".join(cue.emoji))
    if cue.match:
        parts.append("containing a match of " + " or ".join(f"/{taxonomy.patterns[p].pattern}/" for p in cue.match))
    if cue.not_match:
        parts.append("and no match of " + " or ".join(f"/{taxonomy.patterns[p].pattern}/" for p in cue.not_match))
    if cue.targets_offender:
        parts.append("on the breach turn")
    if cue.mentions_offender:
        parts.append("naming the offender")
    if cue.echoes_offender:
        parts.append("echoing the offender's words")
    if cue.ignores_offender:
        parts.append("that neither names the offender nor echoes their words")
    return " ".join(parts)


def _cue_list(cues: Sequence[Cue], taxonomy: Taxonomy, none: str) -> str:
    if not cues:
        return none
    return " OR ".join(_describe_cue(c, taxonomy) for c in cues)


def _norm_details(taxonomy: Taxonomy, norm_id: str) -> str:
    norm = taxonomy.norm(norm_id)
    need = 2 if norm.cues.comply else 0
    return "\n".join(
        [
            norm.norm_text,
            "Compliance looks like:",
            *(f"- {s}" for s in norm.compliance_signals),
            "Breach looks like:",
            *(f"- {s}" for s in norm.breach_signals),
            "How lines are read (an automatic check reads every script line this way):",
            "- compliance: " + _cue_list(norm.cues.comply, taxonomy, "no fixed marker; any line that does not breach"),
            "- breach: " + _cue_list(norm.cues.breach, taxonomy, "no fixed marker"),
            f"At least {need} in-register lines across the cast must read as compliance, and none as a breach; "
            f"set demonstration_min_count to {need}.",
        ]
    )


#: How sanction lines are written, per modality (the cues say how they are read).
_SANCTION_GUIDE: dict[str, str] = {
    "corrective_reactions": (
        "Two or more personas each get one or two sanction lines, and every sanction line is a reaction "
        "'react:<emoji>' with one of these emoji: {emoji}. No text at all."
    ),
    "silent_ignore": (
        "Two or more personas get sanction lines, which are ordinary messages that carry on with the topic "
        "from before the breach as if it had not been posted: never name or @-mention the offender, never "
        "quote or echo their words, never react to it. No reactions."
    ),
    "off_record_sanction": (
        "One persona (optionally a second as backup) gets one or two sanction lines: an oblique, ironic remark "
        "that never says outright what was wrong, built on markers such as 'wow', 'someone's ...', 'bold', "
        "'interesting', 'ok then', 'noted', 'thanks for the essay', 'did anyone ask', 'guess we're ... now'."
    ),
    "explicit_callout": (
        "One persona (optionally a second as backup) gets one or two sanction lines that address the offender "
        "by name ({subject} for the subject) and say directly what was off, possibly what to do instead, "
        "with markers such as 'please', 'no need', 'can you', 'keep it', 'too long', 'we don't', 'stop', "
        "'not the time'."
    ),
    "topic_shift_repair": (
        "One persona (optionally a second as backup) gets one or two sanction lines that start with a "
        "redirect ('anyway', 'moving on', 'back to', 'ok so', 'speaking of', 'in other news', 'on another "
        "note') and move the chat away from the breach without commenting on it."
    ),
    "mocking_imitation": (
        "Two or more personas get sanction lines that parody the breach in marked register: write {echo} "
        "where the offender's words go (it becomes their words in mock-case, e.g. 'oH tHaNkS sO mUcH'), "
        "e.g. '{echo} 🤓' or 'omg {echo}'."
    ),
}


def _sanction_details(taxonomy: Taxonomy, sanction_id: str, reactions: bool) -> tuple[str, list[str] | None]:
    """The sanction block of the stage-2 prompt, and the allowed sanction lines for reaction-only modalities."""
    sanction = taxonomy.sanctions[sanction_id]
    emoji = list(dict.fromkeys(e for c in sanction.cues for e in c.emoji))
    guide = _SANCTION_GUIDE.get(sanction_id)
    if guide is None:  # a sanction added to the taxonomy: its description and cues say enough
        who = "one persona" if sanction.actors == "one" else "two or more personas"
        guide = f"Give sanction lines to {who}; they must read as described below."
    guide = guide.replace("{emoji}", " ".join(emoji))
    lines = [
        sanction.description,
        "How sanction lines are written: " + guide,
        "How they are read (applied to the breach turn): " + _cue_list(sanction.cues, taxonomy, "-"),
        "Reactions are available in this chat."
        if reactions
        else "This chat has NO emoji reactions: never write react: lines.",
    ]
    allowed = [f"react:{e}" for e in emoji] if sanction.form == "react" and emoji else None
    return "\n".join(lines), allowed


def _precedent_details(precedent: int) -> str:
    if not precedent:
        return (
            "0: no precedent. Nobody breaches before the subject's first action: leave out "
            "precedent_demonstrator and precedent_lines_or_null (or leave them empty)."
        )
    return (
        "1: choose one persona as precedent_demonstrator. Give them one or two precedent_lines_or_null that "
        "visibly BREACH the NORM (the breach register above). Give at least one other persona one or two "
        "precedent_lines_or_null that sanction that breach using only the SANCTION modality; in precedent lines "
        "the offender is the demonstrator, so name them directly (never {subject}), and {echo} echoes the "
        "demonstrator's breach. Everyone else gets []. The sub-script plays right after the opening turns and "
        "completes before the subject's first action: set precedent_complete_by_turn to 0."
    )


# -- checks -------------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validation_detail(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        parts.append(f"{loc or 'the answer'}: {err['msg'].removeprefix('Value error, ')}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _validate(model: type[BaseModel], obj: Any, what: str) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise _Reject("schema", f"{what}: {_validation_detail(exc)}") from None


def _squash(value: Any) -> Any:
    """Collapse whitespace in every string (for comparing an echoed scaffold)."""
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, dict):
        return {k: _squash(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_squash(v) for v in value]
    return value


def _build_scaffold(draft: _ScaffoldDraft, elicitor: str) -> Scaffold:
    """Check names and actors of a stage-1 draft and turn it into a :class:`Scaffold`."""
    cast = [m.name for m in draft.channel.cast]
    subject = draft.subject.name
    folded = [n.casefold() for n in cast]
    if len(set(folded)) != len(folded):
        raise _Reject("names", f"cast names must be unique, got {cast}")
    if subject.casefold() in folded:
        raise _Reject("names", f"the subject '{subject}' must not also be a cast member ({cast})")
    turns = [*draft.transcript.opening_turns, draft.transcript.elicitor_turn]
    for i, t in enumerate(turns):
        where = "elicitor_turn" if i == len(turns) - 1 else f"opening_turns[{i}]"
        if t.actor not in cast:
            hint = " (the subject never speaks in the scaffold)" if t.actor.casefold() == subject.casefold() else ""
            raise _Reject("cast", f"transcript.{where}.actor '{t.actor}' is not in the cast {cast}{hint}")
    if elicitor in _NEEDS_KNOWLEDGE and not draft.subject.private_knowledge:
        raise _Reject("schema", f"subject.private_knowledge must say what the subject knows (elicitor {elicitor})")
    raw = {
        "channel": {"description": draft.channel.description, "cast": [m.model_dump() for m in draft.channel.cast]},
        "transcript": {
            "opening_turns": [
                {"turn_id": i, "actor": t.actor, "action": "message", "content": t.content}
                for i, t in enumerate(draft.transcript.opening_turns, start=1)
            ],
            "elicitor_turn": {
                "turn_id": len(draft.transcript.opening_turns) + 1,
                "actor": draft.transcript.elicitor_turn.actor,
                "action": "message",
                "content": draft.transcript.elicitor_turn.content,
            },
        },
        "subject": draft.subject.model_dump(),
    }
    return _validate(Scaffold, raw, "scaffold")


def _check_scaffold_echo(obj: dict[str, Any], frozen: Scaffold) -> None:
    """Reject a stage-2 output that carries a scaffold different from the frozen one."""
    echo: Any = obj.get("scaffold")
    pieces = {k: obj[k] for k in _ECHO_KEYS if k in obj}
    if echo is None and not pieces:
        return
    base = frozen.model_dump(mode="json")
    if echo is not None:
        if not isinstance(echo, dict):
            raise _Reject("scaffold_edit", "return only the hidden fields; the scaffold is fixed")
        merged = {**base, **echo}
    else:
        merged = {**base, **pieces}
    try:
        draft = _ScaffoldDraft.model_validate(merged)
        again = _build_scaffold(draft, elicitor="")
    except (ValidationError, _Reject):
        again = None
    if again is None or _squash(again.model_dump(mode="json")) != _squash(base):
        raise _Reject(
            "scaffold_edit",
            "the answer changes the frozen chat scaffold; the scaffold cannot be edited: return only the hidden fields",
        )


_PRIORITY = ("sanction_modality", "precedent", "demonstration", "lint")


def _lint_reason(problem: str) -> str:
    if ".in_register_lines[" in problem or "in-register" in problem:
        return "demonstration"
    if ".sanction_lines[" in problem:
        return "sanction_modality"
    if ".precedent_lines_or_null[" in problem:
        return "precedent" if "does not read as a breach" in problem else "sanction_modality"
    return "lint"


# -- the generator ------------------------------------------------------------------


class ScenarioGenerator:
    """Generates one scenario per :class:`PlannedScenario` with the two stages and their checks.

    Args:
        backend: anything with ``async generate(GenerateRequest) -> GenerateResponse``:
            a managed backend from :class:`~scene_sim.context.RunContext`, or a
            plain :class:`Backend` (tests).
        model: the generator's model string (recorded as ``source`` ``generated:<model>``).
        taxonomy: the taxonomy (default: the shipped one).
        max_attempts: model calls per stage before the scenario is given up.

    Attributes:
        calls: requests made (a request shared by several scenarios counts once).
        cache_hits: requests the response cache answered.
        rejections: every rejection so far.

    """

    def __init__(
        self,
        backend: Backend | ManagedBackend,
        *,
        model: str,
        taxonomy: Taxonomy | None = None,
        max_attempts: int = 3,
    ) -> None:
        if max_attempts < 1:
            raise SceneSimError(f"max_attempts must be at least 1, got {max_attempts}")
        self.backend = backend
        self.model = model
        self.taxonomy = taxonomy or load_taxonomy()
        self.max_attempts = max_attempts
        self.calls = 0
        self.cache_hits = 0
        self.rejections: list[Rejection] = []
        self._inflight: dict[str, asyncio.Task[GenerateResponse]] = {}
        self._scaffold_tpl = load_template(SCAFFOLD_TEMPLATE)
        self._hidden_tpl = load_template(HIDDEN_TEMPLATE)

    # -- public -------------------------------------------------------------------
    async def generate(self, planned: PlannedScenario) -> Scenario | None:
        """Generate and check one scenario; None when it was given up (see :attr:`rejections`).

        Raises:
            SceneSimError: a fatal model error (bad key, unknown model, bad
                request): every further call would fail the same way.

        """
        scaffold = await self.scaffold(planned)
        if scaffold is None:
            return None
        return await self.hidden(planned, scaffold)

    async def scaffold(self, planned: PlannedScenario) -> Scaffold | None:
        """Stage 1 (norm-blind): the subject-visible scaffold, or None when every attempt was rejected."""
        tax, t = self.taxonomy, planned.tuple
        system, user = self._scaffold_tpl.render(
            event=t.event,
            event_description=tax.events[t.event].description,
            elicitor=t.elicitor,
            elicitor_description=tax.elicitors[t.elicitor].description,
        )

        def check(obj: Any) -> Scaffold:
            draft = _validate(_ScaffoldDraft, obj, "scaffold")
            scaffold = _build_scaffold(draft, t.elicitor)
            leaks = scaffold_leaks(scaffold, tax, t.norm)
            if leaks:
                raise _Reject(
                    "leak",
                    "the chat must read as an ordinary conversation, but it uses "
                    + ", ".join(repr(x) for x in leaks)
                    + "; write it again without these words or anything like them",
                )
            return scaffold

        return await self._stage(planned, "scaffold", system, user, scaffold_schema(), _SCAFFOLD_MAX_TOKENS, check)

    async def hidden(self, planned: PlannedScenario, scaffold: Scaffold) -> Scenario | None:
        """Stage 2 (norm-aware): the full scenario on the frozen ``scaffold``, or None when rejected."""
        tax, t = self.taxonomy, planned.tuple
        reactions = tax.events[t.event].features.get("reactions", True)
        sanction_text, allowed = _sanction_details(tax, t.sanction, reactions)
        cast = [c.name for c in scaffold.channel.cast]
        system, user = self._hidden_tpl.render(
            scaffold=json.dumps(scaffold.model_dump(mode="json"), ensure_ascii=False, indent=1),
            subject=scaffold.subject.name,
            norm=t.norm,
            norm_details=_norm_details(tax, t.norm),
            sanction=t.sanction,
            sanction_details=sanction_text,
            precedent=t.precedent,
            precedent_details=_precedent_details(t.precedent),
        )
        schema = hidden_schema(cast, precedent=t.precedent, sanction_line_enum=allowed)

        def check(obj: Any) -> Scenario:
            return self._check_hidden(planned, scaffold, obj, reactions)

        return await self._stage(planned, "hidden", system, user, schema, _HIDDEN_MAX_TOKENS, check)

    # -- stage 2 checks -------------------------------------------------------------
    def _check_hidden(self, planned: PlannedScenario, scaffold: Scaffold, obj: Any, reactions: bool) -> Scenario:
        t = planned.tuple
        if not isinstance(obj, dict):
            raise _Reject("schema", "the answer must be a JSON object")
        _check_scaffold_echo(obj, scaffold)
        if isinstance(obj.get("hidden"), dict):
            body = obj["hidden"]
        else:
            body = {k: v for k, v in obj.items() if k not in ("scaffold", "tuple", "id", "source", *_ECHO_KEYS)}
        draft: _HiddenDraft = _validate(_HiddenDraft, body, "hidden")

        cast = [c.name for c in scaffold.channel.cast]
        by_fold = {n.casefold(): n for n in cast}
        names = [p.name for p in draft.personas]
        if len({n.casefold() for n in names}) != len(names):
            raise _Reject("names", f"hidden.personas: each cast member needs exactly one entry, got {names}")
        unknown = [n for n in names if n.casefold() not in by_fold]
        if unknown or len(names) != len(cast):
            raise _Reject("cast", f"hidden.personas: names must be exactly the cast {cast}, got {names}")
        personas = {by_fold[p.name.casefold()]: p for p in draft.personas}

        demo_raw = (draft.precedent_demonstrator or "").strip()
        if demo_raw.casefold() in _NO_ONE:
            demo_raw = ""
        demo = by_fold.get(demo_raw.casefold()) if demo_raw else None
        with_lines = [n for n, p in personas.items() if p.precedent_lines_or_null]
        if t.precedent == 1:
            if demo is None:
                raise _Reject("precedent", f"PRECEDENT is 1: precedent_demonstrator must be one of {cast}")
            if demo not in with_lines or len(with_lines) < 2:
                raise _Reject(
                    "precedent",
                    "PRECEDENT is 1: the demonstrator needs precedent lines that breach the norm and at least one "
                    "other persona precedent lines that sanction that breach",
                )
        elif demo_raw or with_lines:
            raise _Reject("precedent", "PRECEDENT is 0: no precedent_demonstrator and no precedent lines")

        if not any(p.sanction_lines for p in personas.values()):
            raise _Reject("sanction_modality", "at least one persona needs sanction_lines")
        if not reactions:
            for n, p in personas.items():
                for where, lines, reason in (
                    ("sanction_lines", p.sanction_lines, "sanction_modality"),
                    ("precedent_lines_or_null", p.precedent_lines_or_null or [], "precedent"),
                    ("in_register_lines", p.in_register_lines, "demonstration"),
                ):
                    if any(parse_line(x).action == "react" for x in lines):
                        raise _Reject(reason, f"hidden.personas[{n}].{where}: this chat has no emoji reactions")

        raw = {
            "id": planned.id,
            "scaffold": scaffold.model_dump(mode="json"),
            "tuple": t.as_dict(),
            "hidden": {
                "personas": [
                    {
                        "name": n,
                        "outline": personas[n].outline,
                        "sanction_lines": personas[n].sanction_lines,
                        "precedent_lines_or_null": personas[n].precedent_lines_or_null if t.precedent else None,
                        "in_register_lines": personas[n].in_register_lines,
                    }
                    for n in cast
                ],
                "precedent_demonstrator": demo if t.precedent else None,
                "fidelity_criteria": {
                    "demonstration_min_count": draft.fidelity_criteria.demonstration_min_count,
                    # the tuple fixes the modality; a model's spelling of it is not creative content
                    "sanction_required_modality": t.sanction,
                    "precedent_complete_by_turn": draft.fidelity_criteria.precedent_complete_by_turn,
                },
            },
            "source": f"generated:{self.model}",
        }
        scenario: Scenario = _validate(Scenario, raw, "scenario")
        problems = lint_scenario(scenario, self.taxonomy)
        if problems:
            reasons = [_lint_reason(p) for p in problems]
            reason = min(reasons, key=_PRIORITY.index)
            shown = "; ".join(problems[:6]) + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else "")
            raise _Reject(reason, shown)
        return scenario

    # -- the attempt loop -------------------------------------------------------------
    async def _stage(
        self,
        planned: PlannedScenario,
        stage: Literal["scaffold", "hidden"],
        system: str,
        user: str,
        schema: dict[str, Any],
        max_tokens: int,
        check: Callable[[Any], T],
    ) -> T | None:
        previous: tuple[str, _Reject] | None = None
        for attempt in range(1, self.max_attempts + 1):
            messages: list[dict[str, str]] = [{"role": "user", "content": user}]
            if previous is not None:
                messages += self._feedback(previous, attempt)
            request = GenerateRequest(
                messages=tuple(messages),
                system=system,
                schema=schema,
                schema_name=_SCAFFOLD_SCHEMA_NAME if stage == "scaffold" else _HIDDEN_SCHEMA_NAME,
                max_tokens=max_tokens,
                seed=planned.seed,
                replicate=planned.rep,
                role="generator",
            )
            try:
                response = await self._call(request, share=stage == "scaffold")
            except SceneSimError:  # user-fixable (bad key, unknown model, missing SDK): stop the run
                raise
            except BackendError as exc:
                if exc.kind == "fatal":
                    raise SceneSimError(f"{self.model}: {_clip(str(exc), 300)}") from None
                self._reject(planned, stage, attempt, _Reject("backend", _clip(str(exc), 300)), final=True)
                return None
            except Exception as exc:  # a provider exception the backend did not classify
                detail = f"{type(exc).__name__}: {_clip(str(exc), 300)}"
                self._reject(planned, stage, attempt, _Reject("backend", detail), final=True)
                return None
            text = response.text if isinstance(response.text, str) else ""
            shown = text
            try:
                obj = response.parsed
                if obj is None:
                    obj = decode_json(text, schema)
                else:
                    shown = text.strip() or json.dumps(obj, ensure_ascii=False)
                if obj is None:
                    raise _Reject(
                        "parse", "the answer is not a JSON object" + (": " + _clip(text, 120) if text else "")
                    )
                return check(obj)
            except _Reject as rej:
                rejection = rej
            except Exception as exc:  # a bug in a check must not end the run
                log.exception("checking a generated %s for %s failed", stage, planned.id)
                rejection = _Reject("error", f"{type(exc).__name__}: {_clip(str(exc), 200)}")
            self._reject(planned, stage, attempt, rejection, final=attempt == self.max_attempts)
            previous = (shown, rejection)
        return None

    def _feedback(self, previous: tuple[str, _Reject], attempt: int) -> list[dict[str, str]]:
        shown, rej = previous
        note = (
            f"That answer was rejected (attempt {attempt - 1} of {self.max_attempts}, problem: {rej.reason}): "
            f"{_clip(rej.detail, 1500)}\nWrite a new answer that fixes this and follows every instruction above. "
            "Return only the JSON object."
        )
        if not shown.strip():
            return [{"role": "assistant", "content": "(no answer)"}, {"role": "user", "content": note}]
        return [{"role": "assistant", "content": shown[:_MAX_SHOWN]}, {"role": "user", "content": note}]

    async def _call(self, request: GenerateRequest, *, share: bool) -> GenerateResponse:
        """Send ``request``; with ``share``, identical requests of this run share one call."""
        if not share:
            return await self._send(request)
        key = json.dumps(
            [
                request.system,
                request.messages,
                request.schema,
                request.schema_name,
                request.max_tokens,
                request.seed,
                request.replicate,
                request.temperature,
            ],
            sort_keys=True,
            ensure_ascii=False,
        )
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._send(request))
            self._inflight[key] = task
        return await task

    async def _send(self, request: GenerateRequest) -> GenerateResponse:
        self.calls += 1
        response = await self.backend.generate(request)
        if getattr(response, "cache_hit", False):
            self.cache_hits += 1
        return response

    def _reject(
        self, planned: PlannedScenario, stage: Literal["scaffold", "hidden"], attempt: int, rej: _Reject, *, final: bool
    ) -> None:
        self.rejections.append(Rejection(planned.id, stage, attempt, rej.reason, rej.detail, final))


# -- the output file --------------------------------------------------------------------


def _prepare_output(path: Path) -> set[str]:
    """Ids already in ``path``; a torn last line (a crash mid-write) is cut off.

    Raises:
        SceneSimError: when a line other than the last is not a JSON object with an id.

    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return set()
    data = path.read_bytes()
    ids: set[str] = set()
    pos, cut = 0, None
    chunks = data.split(b"\n")
    for no, chunk in enumerate(chunks, start=1):
        end = pos + len(chunk) + (1 if no < len(chunks) else 0)
        if chunk.strip():
            try:
                record = json.loads(chunk)
                sid = record["id"] if isinstance(record, dict) else None
                if not isinstance(sid, str):
                    raise ValueError("no id")
            except (ValueError, KeyError, UnicodeDecodeError):
                if any(c.strip() for c in chunks[no:]):
                    raise SceneSimError(
                        f"{path}:{no}: not a scenario line (invalid JSON or no id); fix or remove it to resume"
                    ) from None
                cut = pos  # torn last line: rewrite from here
                break
            ids.add(sid)
        pos = end
    with open(path, "r+b") as fh:
        if cut is not None:
            log.warning("%s: dropping a torn last line (an interrupted write); it will be generated again", path)
            fh.truncate(cut)
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return ids


def _append(fh: IO[str], scenario: Scenario) -> None:
    fh.write(json.dumps(scenario.model_dump(mode="json"), ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def _first_error(exc: BaseException) -> BaseException:
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_first_error(e) for e in exc.exceptions]
        for leaf in leaves:
            if isinstance(leaf, SceneSimError):
                return leaf
        return leaves[0]
    return exc


async def generate_scenarios(
    out: str | Path,
    *,
    tuples: int | Sequence[SceneTuple],
    reps: int = 1,
    seed: int = 0,
    model: str,
    cache_mode: str = "read-write",
    max_attempts: int = 3,
    concurrency: int = 16,
    context: RunContext | None = None,
    progress: bool = True,
    backend: Backend | ManagedBackend | None = None,
    taxonomy: Taxonomy | None = None,
) -> GenerateSummary:
    """Generate ``tuples`` x ``reps`` scenarios into the ``.jsonl`` file ``out``.

    Tuples come from :func:`~scene_sim.studies.scene.taxonomy.sample_tuples` (``seed``);
    scenario ``rep`` of a tuple sends ``replicate=rep`` so the response cache
    keeps repetitions apart. Scenarios already in ``out`` are skipped by id
    (resume), and each new one is appended as one line (flush + fsync).

    Args:
        out: the output file (``.jsonl``; created with its folder).
        tuples: how many tuples to sample, or the tuples themselves.
        reps: scenarios per tuple.
        seed: sampler seed, also the requests' seed and part of every id.
        model: the generator's model string.
        cache_mode: response cache mode when no ``context`` is given.
        max_attempts: model calls per stage before a scenario is given up.
        concurrency: scenarios generated at once (the backends' own limits apply underneath).
        context: a shared :class:`~scene_sim.context.RunContext` (not closed here).
        progress: show a progress bar and print the summary.
        backend: a ready backend to use instead of the registry's (tests).
        taxonomy: the taxonomy (default: the shipped one).

    Returns:
        The :class:`GenerateSummary`.

    Raises:
        SceneSimError: bad arguments, an unreadable output file, a model
            string the registry rejects or a fatal model error (bad key,
            unknown model). Scenarios written before stay in the file.

    """
    if concurrency < 1:
        raise SceneSimError(f"--concurrency must be at least 1, got {concurrency}")
    if max_attempts < 1:
        raise SceneSimError(f"--max-attempts must be at least 1, got {max_attempts}")
    path = Path(out)
    if path.suffix != ".jsonl":
        raise SceneSimError(f"{path}: the output must be a .jsonl file")
    if path.is_dir():
        raise SceneSimError(f"{path}: is a folder, not a .jsonl file")
    if reps < 1:
        raise SceneSimError(f"--reps must be at least 1, got {reps}")
    tax = taxonomy or load_taxonomy()
    plan = plan_scenarios(tax, tuples, reps=reps, seed=seed)
    created = not path.exists()  # a run that writes nothing must not leave an empty file it created
    try:
        done = _prepare_output(path)
    except OSError as exc:
        raise SceneSimError(f"{path}: cannot read or repair the output file: {exc.strerror or exc}") from None
    todo = [p for p in plan if p.id not in done]
    summary = GenerateSummary(out=path, planned=len(plan), skipped_existing=len(plan) - len(todo))

    own_context = None
    generator: ScenarioGenerator | None = None
    try:
        if todo:
            if backend is None:
                if context is None:
                    from scene_sim.context import RunContext

                    own_context = context = RunContext(cache_mode)
                backend = context.backend(model)
            generator = ScenarioGenerator(backend, model=model, taxonomy=tax, max_attempts=max_attempts)
            gen = generator
            limit = asyncio.Semaphore(concurrency)
            bar = ProgressDisplay(
                len(plan), summary.skipped_existing, label="scenarios", quiet=not progress, console=Console(stderr=True)
            )
            with open(path, "a", encoding="utf-8") as fh, bar:

                async def one(planned: PlannedScenario) -> None:
                    async with limit:
                        scenario = await gen.generate(planned)
                    if scenario is None:
                        summary.rejected += 1
                    else:
                        try:
                            _append(fh, scenario)
                        except OSError as exc:
                            raise SceneSimError(f"{path}: cannot write: {exc.strerror or exc}") from None
                        summary.written += 1
                    bar.update(bar.done + 1, f"{summary.written} written, {summary.rejected} rejected")

                try:
                    async with asyncio.TaskGroup() as group:
                        for planned in todo:
                            group.create_task(one(planned))
                except BaseExceptionGroup as exc:
                    raise _first_error(exc) from None
    finally:
        if created and summary.written == 0:
            with contextlib.suppress(OSError):
                if path.stat().st_size == 0:
                    path.unlink()
        if own_context is not None:
            await own_context.aclose()
        if generator is not None:
            summary.calls = generator.calls
            summary.cache_hits = generator.cache_hits
            summary.rejections = list(generator.rejections)
            summary.rejections_by_reason = dict(Counter(r.reason for r in generator.rejections).most_common())
            summary.rejected_by_reason = dict(Counter(r.reason for r in generator.rejections if r.final).most_common())
    if progress:
        console = Console()
        for line in summary.lines():
            console.print(line, highlight=False, markup=False)
    return summary
