"""Scenario schema (``scaffold_v1`` / ``scenario_v1`` of SCENE B.8) and the scenario bank.

A scenario is static: the subject-visible *scaffold* (channel, cast, the
subject's own persona, opening turns, elicitor turn) and the *hidden* part
(per-persona outlines, sanction and precedent scripts, fidelity criteria).
The models add a few fields to the seed's schemas, all optional for JSON
written to the seed's shape: ``id``, ``scaffold.subject``,
``hidden.precedent_demonstrator`` and ``hidden.personas[].in_register_lines``.

Script lines are strings. ``react:<emoji>`` is a reaction; anything else is a
chat message. ``{subject}`` in a line becomes the subject's name and
``{echo}`` a mock-cased echo of the breach being sanctioned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scene_sim._resources import content_dir
from scene_sim.errors import SceneSimError, suggest
from scene_sim.studies.scene.taxonomy import SceneTuple, Taxonomy

__all__ = [
    "CastMember",
    "Channel",
    "FidelityCriteria",
    "Hidden",
    "HiddenPersona",
    "Scaffold",
    "ScaffoldTurn",
    "Scenario",
    "ScenarioBank",
    "ScriptLine",
    "SubjectPersona",
    "TupleModel",
    "default_bank_dir",
    "json_schemas",
    "load_scenarios",
    "mock_case",
    "parse_line",
    "scaffold_leaks",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CastMember(_Model):
    """A scripted persona as everyone sees them."""

    name: str = Field(min_length=1, max_length=40)
    bio_oneline: str = Field(min_length=1)


class Channel(_Model):
    """The chat as described to every participant."""

    description: str = Field(min_length=1)
    cast: tuple[CastMember, ...] = Field(min_length=3, max_length=4)


class ScaffoldTurn(_Model):
    """A scripted turn of the scaffold (opening turns and the elicitor turn)."""

    turn_id: int = Field(ge=1)
    actor: str
    action: Literal["message", "react", "no-op"] = "message"
    content: str = ""
    target_turn_id: int | None = None


class Transcript(_Model):
    """The scaffold's scripted opening and its elicitor turn."""

    opening_turns: tuple[ScaffoldTurn, ...] = Field(min_length=4, max_length=6)
    elicitor_turn: ScaffoldTurn


class SubjectPersona(_Model):
    """The subject's own briefing: visible to the subject only (and to everyone's eyes as a name)."""

    name: str = Field(min_length=1, max_length=40)
    bio_oneline: str = Field(min_length=1)
    private_knowledge: str = ""


class Scaffold(_Model):
    """``scaffold_v1``: everything the subject may see before the episode starts."""

    channel: Channel
    transcript: Transcript
    subject: SubjectPersona


class TupleModel(_Model):
    """The scenario's tuple."""

    event: str
    norm: str
    elicitor: str
    sanction: str
    precedent: Literal[0, 1]

    def to_tuple(self) -> SceneTuple:
        """The plain :class:`SceneTuple`."""
        return SceneTuple(self.event, self.norm, self.elicitor, self.sanction, self.precedent)


class HiddenPersona(_Model):
    """The hidden instructions of one scripted persona."""

    name: str
    outline: str = Field(min_length=1)
    sanction_lines: tuple[str, ...] = ()
    precedent_lines_or_null: tuple[str, ...] | None = None
    in_register_lines: tuple[str, ...] = ()


class FidelityCriteria(_Model):
    """What the fidelity audit checks for this scenario."""

    demonstration_min_count: int = Field(ge=0)
    sanction_required_modality: str
    precedent_complete_by_turn: int = Field(ge=0)


class Hidden(_Model):
    """Fields the subject never sees."""

    personas: tuple[HiddenPersona, ...] = Field(min_length=3, max_length=4)
    fidelity_criteria: FidelityCriteria
    precedent_demonstrator: str | None = None


class ScriptLine(_Model):
    """A parsed script line."""

    action: Literal["message", "react"]
    content: str


def mock_case(text: str, max_words: int = 8) -> str:
    """Parody spelling of ``text`` (alternating case), as in mocking imitation."""
    words = text.split()[:max_words]
    out, upper = [], False
    for ch in " ".join(words):
        if ch.isalpha():
            out.append(ch.upper() if upper else ch.lower())
            upper = not upper
        else:
            out.append(ch)
    return "".join(out)


def parse_line(line: str, subject: str = "", offence: str = "") -> ScriptLine:
    """Parse a script line: ``react:<emoji>`` is a reaction, anything else a message.

    ``{subject}`` becomes the subject's name and ``{echo}`` a mock-cased echo
    of the ``offence`` text (for mocking imitation).
    """
    text = line.replace("{subject}", subject).replace("{echo}", mock_case(offence)).strip()
    if text.startswith("react:"):
        return ScriptLine(action="react", content=text[len("react:") :].strip())
    return ScriptLine(action="message", content=text)


class Scenario(_Model):
    """``scenario_v1``: a runnable scenario."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=120)
    scaffold: Scaffold
    tuple: TupleModel
    hidden: Hidden
    source: str = "bank"

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        cast = [c.name for c in self.scaffold.channel.cast]
        subject = self.scaffold.subject.name
        if len(set(cast)) != len(cast):
            raise ValueError("scaffold.channel.cast: names must be unique")
        if subject in cast:
            raise ValueError(f"scaffold.subject.name: '{subject}' is also in the cast")
        hidden = [p.name for p in self.hidden.personas]
        if sorted(hidden) != sorted(cast):
            raise ValueError(f"hidden.personas: names {hidden} must match the cast {cast}")
        turns = [*self.scaffold.transcript.opening_turns, self.scaffold.transcript.elicitor_turn]
        for i, turn in enumerate(turns, start=1):
            where = "elicitor_turn" if i == len(turns) else f"opening_turns[{i - 1}]"
            if turn.turn_id != i:
                raise ValueError(f"scaffold.transcript.{where}.turn_id: expected {i}, got {turn.turn_id}")
            if turn.actor not in cast:
                raise ValueError(
                    f"scaffold.transcript.{where}.actor: '{turn.actor}' is not in the cast{suggest(turn.actor, cast)}"
                )
            if turn.action == "message" and not turn.content.strip():
                raise ValueError(f"scaffold.transcript.{where}.content: a message needs content")
            if turn.action == "react" and not (turn.target_turn_id and 1 <= turn.target_turn_id < i):
                raise ValueError(f"scaffold.transcript.{where}.target_turn_id: a reaction must target an earlier turn")
        if self.scaffold.transcript.elicitor_turn.action != "message":
            raise ValueError("scaffold.transcript.elicitor_turn.action: the elicitor turn must be a message")
        crit = self.hidden.fidelity_criteria
        if crit.sanction_required_modality != self.tuple.sanction:
            raise ValueError(
                "hidden.fidelity_criteria.sanction_required_modality: must equal tuple.sanction "
                f"('{self.tuple.sanction}')"
            )
        if not any(p.sanction_lines for p in self.hidden.personas):
            raise ValueError("hidden.personas: at least one persona needs sanction_lines")
        demo = self.hidden.precedent_demonstrator
        with_lines = [p.name for p in self.hidden.personas if p.precedent_lines_or_null]
        if self.tuple.precedent == 1:
            if demo not in cast:
                raise ValueError("hidden.precedent_demonstrator: precedent 1 needs a demonstrator from the cast")
            if demo not in with_lines or len(with_lines) < 2:
                raise ValueError(
                    "hidden.personas: precedent 1 needs precedent lines for the demonstrator "
                    "and at least one sanctioner"
                )
        elif demo is not None or with_lines:
            raise ValueError("hidden: precedent 0 must have no precedent_demonstrator and no precedent lines")
        return self

    # -- convenience -------------------------------------------------------
    @property
    def scene_tuple(self) -> SceneTuple:
        """The scenario's tuple as a :class:`SceneTuple`."""
        return self.tuple.to_tuple()

    def persona(self, name: str) -> HiddenPersona:
        """The hidden record of persona ``name``."""
        for p in self.hidden.personas:
            if p.name == name:
                return p
        raise KeyError(name)


def scaffold_leaks(scaffold: Scaffold, taxonomy: Taxonomy, norm_id: str | None = None) -> list[str]:
    """Terms in the subject-visible scaffold that would hint at a norm.

    Checks the banned words of the seed's stage-1 prompt and, when
    ``norm_id`` is given, the key terms of that norm and its partner.
    """
    texts = [scaffold.channel.description, scaffold.subject.bio_oneline, scaffold.subject.private_knowledge]
    texts += [c.bio_oneline for c in scaffold.channel.cast]
    texts += [t.content for t in (*scaffold.transcript.opening_turns, scaffold.transcript.elicitor_turn)]
    blob = "\n".join(texts)
    terms = list(taxonomy.banned_terms)
    if norm_id is not None:
        terms += list(taxonomy.norm(norm_id).key_terms) + list(taxonomy.partner(norm_id).key_terms)
    hits = []
    for term in terms:
        flags = 0 if term.isupper() else re.IGNORECASE  # 'AI' is a word only in capitals
        if re.search(r"(?<!\w)" + re.escape(term) + r"(?!\w)", blob, flags):
            hits.append(term)
    return hits


# -- the bank ------------------------------------------------------------------


def default_bank_dir() -> Path:
    """The hand-written scenario bank that ships with scene-sim."""
    return content_dir("worlds") / "scene" / "scenarios"


def _validation_line(source: str, exc: ValidationError) -> SceneSimError:
    err = exc.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    msg = err["msg"].removeprefix("Value error, ")
    return SceneSimError(f"{source}: {loc + ': ' if loc else ''}{msg}")


def _iter_records(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix == ".jsonl":
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{no}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise SceneSimError(f"{path}:{no}: invalid JSON: {exc.msg}") from None
    else:
        try:
            yield str(path), json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SceneSimError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


class ScenarioBank:
    """An ordered, validated set of scenarios addressed by id."""

    def __init__(self, scenarios: Iterable[Scenario]) -> None:
        self._by_id: dict[str, Scenario] = {}
        for s in scenarios:
            if s.id in self._by_id:
                raise SceneSimError(f"duplicate scenario id '{s.id}'")
            self._by_id[s.id] = s

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Scenario]:
        return iter(self._by_id.values())

    def __contains__(self, scenario_id: object) -> bool:
        return scenario_id in self._by_id

    @cached_property
    def ids(self) -> tuple[str, ...]:
        """Scenario ids in load order."""
        return tuple(self._by_id)

    def get(self, scenario_id: str) -> Scenario:
        """The scenario ``scenario_id``; unknown ids raise with close matches."""
        try:
            return self._by_id[scenario_id]
        except KeyError:
            raise SceneSimError(f"unknown scenario '{scenario_id}'{suggest(scenario_id, self._by_id)}") from None


def load_scenarios(source: str | Path | None = None, taxonomy: Taxonomy | None = None) -> ScenarioBank:
    """Load scenarios from a folder of ``*.json``, a ``.json`` file or a ``.jsonl`` file.

    Every scenario is validated against the schema and, when ``taxonomy`` is
    given, its tuple against the applicability filter and its scaffold against
    the leak check.

    Raises:
        SceneSimError: one line naming the file and the field at fault.

    """
    path = Path(source) if source is not None else default_bank_dir()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
    elif path.exists():
        files = [path]
    else:
        raise SceneSimError(f"{path}: no such scenario file or folder")
    out = []
    for file in files:
        for where, raw in _iter_records(file):
            try:
                scenario = Scenario.model_validate(raw)
            except ValidationError as exc:
                raise _validation_line(where, exc) from None
            if taxonomy is not None:
                try:
                    taxonomy.check_tuple(scenario.scene_tuple)
                except SceneSimError as exc:
                    raise SceneSimError(f"{where}: tuple: {exc}") from None
                leaks = scaffold_leaks(scenario.scaffold, taxonomy, scenario.tuple.norm)
                if leaks:
                    raise SceneSimError(
                        f"{where}: scaffold: mentions {', '.join(repr(t) for t in leaks)}, which hints at the norm"
                    )
                if not taxonomy.events[scenario.tuple.event].features.get("reactions", True):
                    for p in scenario.hidden.personas:
                        lines = (*p.sanction_lines, *(p.precedent_lines_or_null or ()), *p.in_register_lines)
                        if any(parse_line(x).action == "react" for x in lines):
                            raise SceneSimError(
                                f"{where}: hidden.personas: '{p.name}' has a reaction line but event "
                                f"'{scenario.tuple.event}' has no reactions"
                            )
            out.append(scenario)
    return ScenarioBank(out)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema documents for ``scaffold_v1`` and ``scenario_v1``."""
    return {
        "scaffold_v1": Scaffold.model_json_schema(),
        "scenario_v1": Scenario.model_json_schema(),
    }
