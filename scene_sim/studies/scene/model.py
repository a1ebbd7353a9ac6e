"""``SceneModel``: one SCENE episode as a Mesa model.

The model owns the chat (:class:`~scene_sim.world.ChatWorld`), the agents
(one :class:`~scene_sim.studies.scene.agents.Orchestrator`, 3-4
:class:`~scene_sim.studies.scene.agents.ScriptedPersona`, one
:class:`~scene_sim.studies.scene.agents.Subject`), the seeded rng (``model.random``,
``model.rng``), the event log and a ``DataCollector`` whose tables hold the
demonstration / breach / sanction / repair streams as the episode runs.

Runtime rules (seed sections 4.3, A.6, B.5):

* turn 0: the scaffold's opening turns, then (precedent 1) the precedent
  sub-script, a persona's breach and the others' sanctions, all before the
  subject's first action;
* each tick: the orchestrator orders the personas; in tick 1 the scaffold's
  elicitor turn lands first; after every non-silent persona action the
  subject is prompted (``after_action``); if every persona stays silent the
  subject gets exactly one ``floor_open`` prompt;
* the episode ends at ``max_turns``, after three consecutive all-silent
  prompts answered by subject no-ops (``subject_silent``), by the
  orchestrator's post-sanction rule (``post_sanction``, when
  ``min_post_sanction_turns`` is set), when a persona states the hidden norm
  (``fidelity_fail``), on a backend failure (``error``) or when the run's
  budget refuses a model call (``budget``; a resumed sweep plays it again).

``await model.arun()`` runs an episode; ``model.step()`` runs one tick
synchronously (for Mesa tools such as ``mesa.batch_run``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mesa

from scene_sim.actions import Message, React
from scene_sim.agents import ChatAgent, Decision
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.model import ConversationModel, EpisodeError, EpisodeResult, slug
from scene_sim.modelspec import ModelSpec
from scene_sim.studies.scene._catalog import scenario_source, taxonomy_at
from scene_sim.studies.scene.agents import Orchestrator, PersonaCast, ScriptedPersona, Subject
from scene_sim.studies.scene.oracle import TurnLabel, TurnLabeler
from scene_sim.studies.scene.policies import TemplateSubject, policy_class
from scene_sim.studies.scene.scenario import Scenario, parse_line
from scene_sim.studies.scene.streams import STREAM_TABLES, StreamBuilder
from scene_sim.studies.scene.taxonomy import Taxonomy
from scene_sim.world import ChatTurn

__all__ = ["SILENT_PROMPTS_TO_END", "STREAM_TABLES", "EpisodeError", "EpisodeResult", "SceneModel", "episode_id_for"]

#: Consecutive all-silent prompts answered by subject no-ops that end an episode.
SILENT_PROMPTS_TO_END = 3


def episode_id_for(scenario_id: str, subject: str, rep: int, seed: int | None) -> str:
    """The default episode id: scenario, subject model, repetition and seed."""
    return f"{scenario_id}__{slug(subject)}__r{rep}__s{seed if seed is not None else 'x'}"


class SceneModel(ConversationModel):
    """One SCENE episode.

    Args:
        scenario: a scenario id (from ``scenarios`` or the shipped bank), a
            path to a scenario JSON file, or a :class:`Scenario`.
        subject: model string of the subject, e.g. ``scripted/learner``,
            ``anthropic/claude-sonnet-4-5``, ``local``.
        personas: model string playing every persona (``scripted`` offline).
        orchestrator: model string of the orchestrator (``scripted`` offline).
        judge: model string of the judge (recorded; judging happens after the episode).
        max_turns: number of orchestrator ticks.
        seed: drives ``model.random`` / ``model.rng`` and every sampling seed.
        rep: repetition index (part of the response-cache key).
        min_post_sanction_turns: end the episode once a sanction was enacted
            and the subject had this many further opportunities (None: never).
        temperature: sampling temperature for model-driven agents.
        scenarios: a scenario source (folder, ``.json`` or ``.jsonl``) to look ids up in.
        taxonomy: a :class:`Taxonomy` or a taxonomy folder (None: shipped).
        context: shared backends and accounting (created if needed).
        episode_id: override the default id.
        on_event: callback for each event as it is emitted.

    """

    def __init__(
        self,
        scenario: str | Path | Scenario = "bug_report__concise_answer_norm__address_explicit__silent_ignore__p1",
        subject: str = "scripted/learner",
        personas: str = "scripted",
        orchestrator: str = "scripted",
        judge: str | None = "scripted",
        max_turns: int = 8,
        seed: int | None = 0,
        rep: int = 0,
        min_post_sanction_turns: int | None = None,
        temperature: float | None = None,
        scenarios: str | Path | None = None,
        taxonomy: Taxonomy | str | Path | None = None,
        context: RunContext | None = None,
        episode_id: str | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        agent_classes: dict[str, Callable[..., Any]] | None = None,
        persona_calls: str = "each",
    ) -> None:
        if persona_calls not in ("each", "joint"):
            raise SceneSimError(f"persona_calls must be 'each' or 'joint', got '{persona_calls}'")
        if max_turns < 1:
            raise SceneSimError(f"max_turns must be at least 1, got {max_turns}")
        if min_post_sanction_turns is not None and min_post_sanction_turns < 0:
            raise SceneSimError(f"min_post_sanction_turns must be 0 or more, got {min_post_sanction_turns}")
        tax = taxonomy if isinstance(taxonomy, Taxonomy) else taxonomy_at(str(taxonomy) if taxonomy else None)
        sc = self._resolve_scenario(scenario, scenarios, tax)
        tax.check_tuple(sc.scene_tuple)
        event = tax.events[sc.tuple.event]
        cast = [c.name for c in sc.scaffold.channel.cast]
        super().__init__(
            [*cast, sc.scaffold.subject.name],
            episode_id=episode_id or episode_id_for(sc.id, subject, rep, seed),
            models={"subject": subject, "personas": personas, "orchestrator": orchestrator, "judge": judge},
            seed=seed,
            rep=rep,
            reactions=event.features.get("reactions", True),
            temperature=temperature,
            context=context,
            on_event=on_event,
        )
        self.taxonomy = tax
        self.scene = sc
        self.max_turns = max_turns
        self.min_post_sanction_turns = min_post_sanction_turns
        self._agent_classes = dict(agent_classes or {})
        self.subject_name = sc.scaffold.subject.name
        self.labeler = TurnLabeler(tax, sc.tuple.norm, sc.tuple.sanction, self.subject_name)

        self.orchestrator: Orchestrator = self._make(Orchestrator, "orchestrator", orchestrator, "orchestrator")
        self.personas: dict[str, ScriptedPersona] = {
            name: self._make(ScriptedPersona, "persona", personas, name) for name in cast
        }
        self.subject: Subject = self._make(Subject, "subject", subject, self.subject_name)
        self.persona_calls = persona_calls
        self.cast: PersonaCast | None = None
        first = next(iter(self.personas.values()))
        llm = first.llm
        if persona_calls == "joint" and llm is not None and not llm.capabilities.scores_choices:
            self.cast = PersonaCast(self, llm=llm, model_string=first.model_string)

        self._silent_streak = 0
        self._post_sanction_opportunities: int | None = None
        # The one stream definition (streams.py), fed online; the collectors feed it offline.
        self.stream_builder = StreamBuilder(self.subject_name, self.world.get)
        self.streams: dict[str, list[dict[str, Any]]] = {name: [] for name in STREAM_TABLES}
        self.datacollector = mesa.DataCollector(
            model_reporters={
                "tick": "tick",
                "chat_turns": lambda m: len(m.world),
                "demonstrations": lambda m: len(m.streams["demonstrations"]),
                "breaches": lambda m: len(m.streams["breaches"]),
                "sanctions": lambda m: len(m.streams["sanctions"]),
                "repairs": lambda m: len(m.streams["repairs"]),
                "end_reason": "end_reason",
            },
            tables=STREAM_TABLES,
        )

    # -- construction -----------------------------------------------------------
    @staticmethod
    def _resolve_scenario(scenario: str | Path | Scenario, source: str | Path | None, tax: Taxonomy) -> Scenario:
        if isinstance(scenario, Scenario):
            return scenario
        text = str(scenario)
        path = Path(text)
        if text.endswith((".json", ".jsonl")) and path.exists():
            bank = scenario_source(path)
            if len(bank) != 1:
                raise SceneSimError(f"{path}: holds {len(bank)} scenarios; pass --scenarios {path} and a scenario id")
            return next(iter(bank))
        return scenario_source(source).get(text)

    def _make(self, base: type, role: str, model_string: str, name: str) -> Any:
        # The policy's own class decides how it is built (TemplateSubject needs the norm pair);
        # model-driven roles get the managed backend of their model string.
        if self.context is not None and self.context.has(model_string):
            return base(self, name, llm=self.backend(model_string), model_string=model_string)
        spec = ModelSpec.parse(model_string)
        override = self._agent_classes.get(role)
        if override is not None:
            llm = None if spec.provider in ("scripted", "human") else self.backend(model_string)
            return override(self, name, llm=llm, model_string=model_string)
        if spec.provider == "human":
            raise SceneSimError("a human subject plays through 'scene-sim play', not in a batch run")
        if spec.provider == "scripted":
            cls = policy_class(role, spec.name or "scripted")
            kwargs: dict[str, Any] = {"model_string": model_string}
            if issubclass(cls, TemplateSubject):
                kwargs["pair"] = self.taxonomy.pair(self.scene.tuple.norm)
            return cls(self, name, **kwargs)
        return base(self, name, llm=self.backend(model_string), model_string=model_string)

    # -- the episode's start ------------------------------------------------------------
    def start_fields(self) -> dict[str, Any]:
        """SCENE's ``episode_start`` fields."""
        sc = self.scene
        return {
            "scenario_id": sc.id,
            "tuple": sc.tuple.model_dump(),
            "subject": self.subject_name,
            "max_turns": self.max_turns,
            "min_post_sanction_turns": self.min_post_sanction_turns,
            "reactions": self.world.reactions_enabled,
        }

    def on_open(self) -> None:
        """Turn 0: the scaffold's opening turns, then the precedent sub-script (precedent 1)."""
        sc = self.scene
        for t in sc.scaffold.transcript.opening_turns:
            if t.action == "no-op":
                continue
            action = React(t.content, t.target_turn_id or 0) if t.action == "react" else Message(t.content)
            self._post_scripted(t.actor, action, {"intent": "scaffold", "script": "opening"})
        if sc.tuple.precedent == 1 and sc.hidden.precedent_demonstrator:
            self._play_precedent()

    def _play_precedent(self) -> None:
        sc = self.scene
        demo = sc.hidden.precedent_demonstrator
        breach_turn: ChatTurn | None = None
        for line in sc.persona(demo).precedent_lines_or_null or ():
            parsed = parse_line(line, self.subject_name)
            target = self.world.last_message(exclude=demo)
            action = (
                React(parsed.content, target.turn_id)
                if parsed.action == "react" and target
                else Message(parsed.content)
            )
            turn = self._post_scripted(demo, action, {"intent": "precedent_breach", "script": "precedent"})
            breach_turn = breach_turn or turn
        if breach_turn is None:
            return
        for p in sc.hidden.personas:
            if p.name == demo:
                continue
            for line in p.precedent_lines_or_null or ():
                parsed = parse_line(line, self.subject_name, breach_turn.content)
                if parsed.action == "react" and self.world.reactions_enabled:
                    action = React(parsed.content, breach_turn.turn_id if breach_turn.kind == "message" else 1)
                else:
                    action = Message(parsed.content)
                meta = {"intent": "precedent_sanction", "script": "precedent", "target_turn_id": breach_turn.turn_id}
                self._post_scripted(p.name, action, meta)

    def _post_scripted(self, actor: str, action: Message | React, meta: dict[str, Any]) -> ChatTurn | None:
        """Post a scripted line (scaffold, elicitor, precedent) as that persona's action, with no prompt."""
        return self.post(actor, Decision(action, meta))

    # -- online streams -------------------------------------------------------------------
    def on_action(self, actor: str, decision: Decision, turn: ChatTurn | None) -> None:
        """Label every posted turn online and add it to its D / B / S / R stream."""
        if turn is not None:
            self._record(turn, self.labeler.label(turn))

    def _record(self, turn: ChatTurn, label: TurnLabel) -> None:
        added = self.stream_builder.add(turn, label)
        if added is None:
            return
        table, event = added
        row = event.row(table)
        self.streams[table].append(row)
        self.datacollector.add_table_row(table, row, ignore_missing=True)
        if table == "sanctions" and self._post_sanction_opportunities is None:
            self._post_sanction_opportunities = 0

    # -- one tick ---------------------------------------------------------------------------
    def before_decide(self, agent: ChatAgent, reason: str) -> None:
        """Count the subject's opportunities after a sanction (the post-sanction rule)."""
        if agent is self.subject and self._post_sanction_opportunities is not None:
            self._post_sanction_opportunities += 1

    async def _prompt_cast(self, names: list[str]) -> list[tuple[str, ChatTurn | None]]:
        """One joint call for the personas ``names``; posts their actions up to the first non-silent one."""
        assert self.cast is not None
        system, messages = self.cast.render(names)
        self.emit_prompt(self.cast, "turn", system, messages, actors=list(names))
        out: list[tuple[str, ChatTurn | None]] = []
        for name, decision in await self.cast.decide(names, system, messages):
            turn = self.post(name, decision, notify=self.personas[name])
            out.append((name, turn))
            if turn is not None:
                break
        return out

    async def play_tick(self) -> None:
        """One orchestrator tick of SCENE's runtime rules (module docstring)."""
        tick = self.tick
        self.log.emit("turn_start", tick)
        routing = await self._route()
        acted = False
        if tick == 1:
            el = self.scene.scaffold.transcript.elicitor_turn
            self._post_scripted(el.actor, Message(el.content), {"intent": "scaffold", "script": "elicitor"})
            acted = True
            await self.prompt(self.subject, "after_action")
        order = list(routing.order)
        while order:
            if self.cast is not None:
                segment = await self._prompt_cast(order)
            else:
                segment = [(order[0], await self.prompt(self.personas[order[0]], "turn"))]
            order = order[len(segment) :]
            turn = segment[-1][1]
            if turn is None:
                continue
            acted = True
            if self._states_norm(turn):
                self.end("fidelity_fail")
                return
            await self.prompt(self.subject, "after_action")
        if not acted:
            turn = await self.prompt(self.subject, "floor_open")
            self._silent_streak = self._silent_streak + 1 if turn is None else 0
        else:
            self._silent_streak = 0
        if self._silent_streak >= SILENT_PROMPTS_TO_END:
            self.end("subject_silent")
        elif self._post_sanction_done():
            self.end("post_sanction")
        elif tick >= self.max_turns:
            self.end("max_turns")

    async def _route(self) -> Any:
        view = self.orchestrator.observe("turn")
        system, messages = self.orchestrator.render(view)
        self.emit_prompt(self.orchestrator, "turn", system, messages)
        routing = await self.orchestrator.decide(view, system, messages)
        self.log.emit(
            "route",
            self.tick,
            actor=self.orchestrator.name,
            order=list(routing.order),
            terminate=routing.terminate,
            parse_failure=routing.parse_failure,
        )
        return routing

    def _post_sanction_done(self) -> bool:
        # The orchestrator's rule (B.5 b): a sanction was enacted and the
        # subject has had enough further opportunities. A model-driven
        # orchestrator's request to stop is honoured only when the rule holds.
        need = self.min_post_sanction_turns
        opportunities = self._post_sanction_opportunities
        return need is not None and opportunities is not None and opportunities >= need

    def _states_norm(self, turn: ChatTurn) -> bool:
        # Hard fail (B.5 c): a persona spells out the hidden norm.
        if turn.kind != "message" or turn.meta.get("intent") in ("demonstration", "sanction"):
            return False
        norm = self.taxonomy.norm(self.scene.tuple.norm)
        words = re.findall(r"[\w']+", norm.norm_text.lower())
        text = " ".join(re.findall(r"[\w']+", turn.content.lower()))
        return norm.id in turn.content or any(" ".join(words[i : i + 8]) in text for i in range(max(0, len(words) - 7)))
