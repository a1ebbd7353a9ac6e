"""The agents of an episode: ``Subject``, ``ScriptedPersona``, ``Orchestrator``.

They are Mesa agents owned by :class:`scene_sim.studies.scene.model.SceneModel`. Each turn
the runtime asks an agent for its *view* (what it may see), renders its
prompt from ``agents/<role>.md`` and awaits :meth:`ChatAgent.decide`. The
base classes decide with a language model; the offline policies in
:mod:`scene_sim.studies.scene.policies` subclass them and override ``decide`` only.

Writing your own agent::

    class Contrarian(Subject):
        async def decide(self, view, system, messages):
            last = view.turns[-1] if view.turns else None
            if last is not None and last.kind == "message":
                return Decision(React(content="🤔", target_turn_id=last.turn_id))
            return Decision(NoOp())
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from scene_sim.actions import ACTION_SCHEMA, NoOp, parse_action
from scene_sim.agents import EMPTY_META, REACTION_EMOJI, ChatAgent, Decision, ask_until_valid
from scene_sim.prompts import load_template
from scene_sim.studies.scene.scenario import CastMember, HiddenPersona, Scenario
from scene_sim.studies.scene.taxonomy import Norm, Sanction
from scene_sim.world import ChatTurn, render_transcript

if TYPE_CHECKING:
    from scene_sim.studies.scene.model import SceneModel

__all__ = [
    "REACTION_EMOJI",
    "ChatAgent",
    "Decision",
    "Orchestrator",
    "OrchestratorView",
    "PersonaCast",
    "PersonaView",
    "RoutingDecision",
    "ScriptedPersona",
    "Subject",
    "SubjectView",
]


@dataclass(frozen=True)
class RoutingDecision:
    """The orchestrator's choice for one tick."""

    order: tuple[str, ...]
    terminate: bool = False
    parse_failure: bool = False


@dataclass(frozen=True)
class SubjectView:
    """Everything the subject may see: channel-visible context and its own briefing."""

    name: str
    bio: str
    private_knowledge: str
    channel: str
    cast: tuple[CastMember, ...]
    reactions: bool
    turns: tuple[ChatTurn, ...]
    reason: str
    tick: int


@dataclass(frozen=True)
class PersonaView:
    """A scripted persona's view: the chat plus its hidden instructions."""

    name: str
    bio: str
    channel: str
    cast: tuple[CastMember, ...]
    subject: str
    reactions: bool
    turns: tuple[ChatTurn, ...]
    reason: str
    tick: int
    norm: Norm
    sanction: Sanction
    hidden: HiddenPersona
    precedent: int


@dataclass(frozen=True)
class OrchestratorView:
    """The orchestrator's view: roster, outline and transcript."""

    roster: tuple[str, ...]
    outline: str
    turns: tuple[ChatTurn, ...]
    tick: int
    max_turns: int
    min_post_sanction_turns: int | None


_CUES = {
    "after_action": "It is your turn: send a message, react to a message, or do nothing.",
    "floor_open": "Nobody else has said anything this round; the floor is open. Send a message, react, or do nothing.",
    "turn": "It is your turn: send a message, react to a message, or do nothing.",
}


def _cast_lines(cast: Sequence[CastMember], extra: Sequence[tuple[str, str]] = ()) -> str:
    rows = [f"- {c.name}: {c.bio_oneline}" for c in cast]
    rows += [f"- {n}: {b}" for n, b in extra]
    return "\n".join(rows)


def _actions(reactions: bool) -> str:
    return '"message" | "react" | "no-op"' if reactions else '"message" | "no-op"'


class Subject(ChatAgent):
    """The model under test. It sees only the channel-visible context."""

    role: ClassVar[str] = "subject"

    def observe(self, reason: str) -> SubjectView:
        """The subject's view: its briefing and the visible transcript, no hidden field."""
        sc: Scenario = self.model.scene
        me = sc.scaffold.subject
        turns = tuple(
            ChatTurn(t.turn_id, t.actor, t.kind, t.content, t.target_turn_id, t.tick) for t in self.model.world.turns
        )
        return SubjectView(
            name=me.name,
            bio=me.bio_oneline,
            private_knowledge=me.private_knowledge,
            channel=sc.scaffold.channel.description,
            cast=sc.scaffold.channel.cast,
            reactions=self.model.world.reactions_enabled,
            turns=turns,
            reason=reason,
            tick=self.model.tick,
        )

    def render(self, view: SubjectView) -> tuple[str, list[dict[str, str]]]:
        """Fill ``agents/subject.md`` from the subject's view only."""
        system, user = load_template("subject").render(
            name=view.name,
            bio=view.bio,
            private_knowledge=view.private_knowledge or "(nothing beyond what is in the chat)",
            channel=view.channel,
            cast=_cast_lines(view.cast, [(view.name, f"{view.bio} (you)")]),
            actions=_actions(view.reactions),
            transcript=render_transcript(view.turns, me=view.name),
            cue=_CUES.get(view.reason, _CUES["turn"]),
        )
        return system, [{"role": "user", "content": user}]


class ScriptedPersona(ChatAgent):
    """A scripted persona (SCENE's SP): enacts the hidden norm and sanctions breaches.

    'Scripted' means it follows a hidden script (outline, sanction and
    precedent lines); by default a language model plays it. The offline
    policy :class:`scene_sim.studies.scene.policies.OfflinePersona` plays it without one.
    """

    role: ClassVar[str] = "persona"

    def observe(self, reason: str) -> PersonaView:
        """The persona's view, hidden instructions included."""
        m = self.model
        sc: Scenario = m.scene
        bio = next(c.bio_oneline for c in sc.scaffold.channel.cast if c.name == self.name)
        return PersonaView(
            name=self.name,
            bio=bio,
            channel=sc.scaffold.channel.description,
            cast=sc.scaffold.channel.cast,
            subject=sc.scaffold.subject.name,
            reactions=m.world.reactions_enabled,
            turns=m.world.turns,
            reason=reason,
            tick=m.tick,
            norm=m.taxonomy.norm(sc.tuple.norm),
            sanction=m.taxonomy.sanctions[sc.tuple.sanction],
            hidden=sc.persona(self.name),
            precedent=sc.tuple.precedent,
        )

    def render(self, view: PersonaView) -> tuple[str, list[dict[str, str]]]:
        """Fill ``agents/persona.md``."""
        subject = self.model.scene.scaffold.subject
        h = view.hidden

        def bullets(lines: Sequence[str] | None) -> str:
            return "\n".join(f"- {x.replace('{subject}', view.subject)}" for x in lines) if lines else "(none)"

        system, user = load_template("persona").render(
            name=view.name,
            bio=view.bio,
            channel=view.channel,
            cast=_cast_lines(view.cast, [(subject.name, subject.bio_oneline)]),
            norm=view.norm.norm_text,
            outline=h.outline,
            in_register_lines="; ".join(h.in_register_lines) or "(free)",
            sanction=view.sanction.id,
            sanction_description=view.sanction.description,
            sanction_lines=bullets(h.sanction_lines),
            precedent_lines=bullets(h.precedent_lines_or_null),
            actions=_actions(view.reactions),
            transcript=render_transcript(view.turns, me=view.name),
            cue=_CUES.get(view.reason, _CUES["turn"]),
        )
        return system, [{"role": "user", "content": user}]

    def _schema(self) -> dict[str, Any]:
        props = {**ACTION_SCHEMA["properties"], "sanction": {"type": "boolean"}}
        return {**ACTION_SCHEMA, "properties": props, "required": [*ACTION_SCHEMA["required"], "sanction"]}

    def _meta_from(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        if data.get("sanction") is True:
            return MappingProxyType({"intent": "sanction", "claimed": True})
        return EMPTY_META


ORDER_SCHEMA_NAME = "routing"


class Orchestrator(ChatAgent):
    """Decides the order in which the personas act each tick (routing only).

    The default asks a language model (SCENE B.5); the offline policy
    :class:`scene_sim.studies.scene.policies.SeededOrderOrchestrator` shuffles with the
    model's seeded rng.
    """

    role: ClassVar[str] = "orchestrator"

    def __init__(
        self, model: SceneModel, name: str = "orchestrator", *, llm: Any = None, model_string: str = ""
    ) -> None:
        super().__init__(model, name, llm=llm, model_string=model_string)

    def observe(self, reason: str = "turn") -> OrchestratorView:
        """Roster, outline and transcript."""
        m = self.model
        sc: Scenario = m.scene
        outline = "\n".join(f"- {p.name}: {p.outline}" for p in sc.hidden.personas)
        return OrchestratorView(
            roster=tuple(c.name for c in sc.scaffold.channel.cast),
            outline=outline,
            turns=m.world.turns,
            tick=m.tick,
            max_turns=m.max_turns,
            min_post_sanction_turns=m.min_post_sanction_turns,
        )

    def render(self, view: OrchestratorView) -> tuple[str, list[dict[str, str]]]:
        """Fill ``agents/orchestrator.md``."""
        system, user = load_template("orchestrator").render(
            roster="\n".join(f"- {n}" for n in view.roster),
            outline=view.outline,
            max_turns=view.max_turns,
            min_post_sanction_turns=view.min_post_sanction_turns
            if view.min_post_sanction_turns is not None
            else "never",
            tick=view.tick,
            transcript=render_transcript(view.turns),
        )
        return system, [{"role": "user", "content": user}]

    async def decide(self, view: OrchestratorView, system: str, messages: list[dict[str, str]]) -> RoutingDecision:
        """Ask the language model for the order; fall back to the roster order."""
        roster = view.roster
        if self.llm is None:
            raise RuntimeError("Orchestrator has no language model and no policy")
        if self.llm.capabilities.scores_choices:
            perms = list(itertools.permutations(roster))
            options = tuple('{"order": [' + ", ".join(f'"{n}"' for n in p) + "]" for p in perms)
            response = await self.model.call_llm(
                self,
                system,
                messages,
                reason="choice",
                choices=options,
                max_tokens=64,
            )
            if response.text in options:
                return RoutingDecision(perms[options.index(response.text)])
            return RoutingDecision(roster, parse_failure=True)
        schema = {
            "type": "object",
            "properties": {
                "order": {"type": "array", "items": {"type": "string", "enum": list(roster)}},
                "terminate": {"type": "boolean"},
            },
            "required": ["order", "terminate"],
            "additionalProperties": False,
        }
        response = await self.model.call_llm(
            self,
            system,
            messages,
            reason="turn",
            schema=schema,
            schema_name=ORDER_SCHEMA_NAME,
            max_tokens=200,
        )
        data = response.parsed if isinstance(response.parsed, dict) else None
        if data is None:
            from scene_sim.actions import extract_json

            try:
                data = extract_json(response.text)
            except ValueError:
                return RoutingDecision(roster, parse_failure=True)
        order = data.get("order") if isinstance(data, dict) else None
        if isinstance(order, str):
            order = [order]
        if not isinstance(order, list):
            nxt = data.get("next_actor") if isinstance(data, dict) else None
            order = [nxt] if isinstance(nxt, str) else []
        clean = [n for n in dict.fromkeys(str(x) for x in order) if n in roster]
        # Personas the model left out still get their chance this tick, after the others.
        clean += [n for n in roster if n not in clean]
        return RoutingDecision(tuple(clean), terminate=bool(data.get("terminate", False)), parse_failure=not order)


class PersonaCast(ChatAgent):
    """Decides the next actions of several personas in one model call.

    Used when a model plays the personas and the episode runs with
    ``persona_calls="joint"``. The personas remain the episode's agents;
    only the call is shared. Given the personas still to act this tick, in
    order, the model returns their actions up to and including the first one
    who sends a message or reacts; the subject is then prompted as usual and
    the rest of the order gets a fresh call. This keeps the runtime rules of
    the per-persona protocol with fewer calls.

    Args:
        model: the episode.
        llm: the managed backend playing the personas.
        model_string: its model string.
    """

    role: ClassVar[str] = "persona"

    def __init__(self, model: SceneModel, *, llm: Any, model_string: str) -> None:
        super().__init__(model, "cast", llm=llm, model_string=model_string)

    def render(self, names: Sequence[str]) -> tuple[str, list[dict[str, str]]]:
        """Fill ``agents/cast.md`` for the personas ``names`` acting now (the system part covers all)."""
        m = self.model
        sc: Scenario = m.scene
        norm = m.taxonomy.norm(sc.tuple.norm)
        sanction = m.taxonomy.sanctions[sc.tuple.sanction]
        subject = sc.scaffold.subject
        members = []
        for c in sc.scaffold.channel.cast:
            h = sc.persona(c.name)
            lines = [f"## {c.name} ({c.bio_oneline})", f"Outline: {h.outline}"]
            if h.in_register_lines:
                lines.append(
                    "Might say: " + "; ".join(x.replace("{subject}", subject.name) for x in h.in_register_lines)
                )
            if h.sanction_lines:
                lines.append(
                    "Sanction script (only after a breach): "
                    + "; ".join(x.replace("{subject}", subject.name) for x in h.sanction_lines)
                )
            if h.precedent_lines_or_null:
                lines.append("Precedent sub-script: " + "; ".join(h.precedent_lines_or_null))
            members.append("\n".join(lines))
        system, user = load_template("cast").render(
            names=", ".join(c.name for c in sc.scaffold.channel.cast),
            channel=sc.scaffold.channel.description,
            cast=_cast_lines(sc.scaffold.channel.cast, [(subject.name, subject.bio_oneline)]),
            norm=norm.norm_text,
            sanction=sanction.id,
            sanction_description=sanction.description,
            members="\n\n".join(members),
            actions=_actions(m.world.reactions_enabled),
            transcript=render_transcript(m.world.turns),
            order=", ".join(names),
        )
        return system, [{"role": "user", "content": user}]

    def _schema(self, names: Sequence[str]) -> dict[str, Any]:
        item = {
            "type": "object",
            "properties": {
                "actor": {"type": "string", "enum": list(names)},
                "action": {"type": "string", "enum": ["message", "react", "no-op"]},
                "content": {"type": "string"},
                "target_turn_id": {"type": ["integer", "null"]},
                "sanction": {"type": "boolean"},
            },
            "required": ["actor", "action", "content", "target_turn_id", "sanction"],
            "additionalProperties": False,
        }
        return {
            "type": "object",
            "properties": {"actions": {"type": "array", "items": item}},
            "required": ["actions"],
            "additionalProperties": False,
        }

    async def decide(
        self, names: Sequence[str], system: str, messages: list[dict[str, str]]
    ) -> list[tuple[str, Decision]]:
        """Decisions for a prefix of ``names``, ending at the first non-silent one (or covering all)."""
        from scene_sim.actions import extract_json

        def read(response: Any) -> tuple[list[tuple[str, Decision]] | None, str | None]:
            data = response.parsed
            if not isinstance(data, dict):
                try:
                    data = extract_json(response.text)
                except ValueError:
                    data = None
            decisions, problem = self._read(names, data.get("actions") if isinstance(data, dict) else None)
            return (decisions, None) if problem is None else (None, problem)

        decisions = await ask_until_valid(
            self,
            system,
            messages,
            read,
            what="answer",
            schema=self._schema(names),
            schema_name="cast_actions",
            max_tokens=600,
        )
        if decisions is not None:
            return decisions
        return [(names[0], Decision(NoOp(), parse_failure=True)), *((n, Decision(NoOp())) for n in names[1:])]

    def _read(self, names: Sequence[str], entries: Any) -> tuple[list[tuple[str, Decision]], str | None]:
        if not isinstance(entries, list):
            return [], "'actions' must be a list"
        by_name: dict[str, Mapping[str, Any]] = {}
        for e in entries:
            if isinstance(e, dict) and isinstance(e.get("actor"), str):
                key = e["actor"].strip().lower()
                by_name.setdefault(key, e)
        out: list[tuple[str, Decision]] = []
        for name in names:
            entry = by_name.get(name.lower())
            if entry is None:
                out.append((name, Decision(NoOp())))
                continue
            parsed = parse_action(dict(entry))
            problem = parsed.error
            if parsed.action is not None and problem is None:
                problem = self.model.world.validate(name, parsed.action)
            if problem is not None or parsed.action is None:
                return [], f"{name}: {problem}"
            meta = (
                MappingProxyType({"intent": "sanction", "claimed": True})
                if entry.get("sanction") is True
                else EMPTY_META
            )
            out.append((name, Decision(parsed.action, meta)))
            if not isinstance(parsed.action, NoOp):
                break
        return out, None
