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
  (``fidelity_fail``) or on a backend failure (``error``).

``await model.arun()`` runs an episode; ``model.step()`` runs one tick
synchronously (for Mesa tools such as ``mesa.batch_run``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mesa

from scene_sim._version import __version__
from scene_sim.actions import Message, NoOp, React
from scene_sim.backends import model_call_fields
from scene_sim.backends.base import GenerateRequest, GenerateResponse
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.events import EventLog
from scene_sim.modelspec import ModelSpec
from scene_sim.studies.scene._catalog import scenario_source, taxonomy_at
from scene_sim.studies.scene.agents import ChatAgent, Decision, Orchestrator, PersonaCast, ScriptedPersona, Subject
from scene_sim.studies.scene.oracle import TurnLabel, TurnLabeler
from scene_sim.studies.scene.policies import TemplateSubject, policy_class
from scene_sim.studies.scene.scenario import Scenario, parse_line
from scene_sim.studies.scene.taxonomy import Taxonomy
from scene_sim.world import ChatTurn, ChatWorld

__all__ = ["STREAM_TABLES", "EpisodeResult", "SceneModel", "episode_id_for"]

#: DataCollector tables holding the event streams (one row per event).
STREAM_TABLES = {
    "demonstrations": ["tick", "turn_id", "actor"],
    "breaches": ["tick", "turn_id", "actor"],
    "sanctions": ["tick", "turn_id", "actor", "target_turn_id", "modality"],
    "repairs": ["tick", "turn_id", "actor", "target_turn_id"],
}

#: Consecutive all-silent prompts answered by subject no-ops that end an episode.
SILENT_PROMPTS_TO_END = 3


class EpisodeError(Exception):
    """A backend failure that ends the episode with reason ``error``."""


@dataclass(frozen=True)
class EpisodeResult:
    """What a finished episode hands on."""

    episode_id: str
    end_reason: str
    ticks: int
    events: list[dict[str, Any]]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "x"


def episode_id_for(scenario_id: str, subject: str, rep: int, seed: int | None) -> str:
    """The default episode id: scenario, subject model, repetition and seed."""
    return f"{scenario_id}__{_slug(subject)}__r{rep}__s{seed if seed is not None else 'x'}"


class SceneModel(mesa.Model):
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
        super().__init__(seed=seed)
        if persona_calls not in ("each", "joint"):
            raise SceneSimError(f"persona_calls must be 'each' or 'joint', got '{persona_calls}'")
        if max_turns < 1:
            raise SceneSimError(f"max_turns must be at least 1, got {max_turns}")
        self.taxonomy = taxonomy if isinstance(taxonomy, Taxonomy) else taxonomy_at(str(taxonomy) if taxonomy else None)
        self.scenario = self._resolve_scenario(scenario, scenarios)
        self.taxonomy.check_tuple(self.scenario.scene_tuple)
        self.seed = seed
        self.rep = rep
        self.max_turns = max_turns
        self.min_post_sanction_turns = min_post_sanction_turns
        self.temperature = temperature
        self.models = {"subject": subject, "personas": personas, "orchestrator": orchestrator, "judge": judge}
        self.context = context
        for value in self.models.values():
            if value is not None and not (context is not None and context.has(value)):
                ModelSpec.parse(value)
        self.episode_id = episode_id or episode_id_for(self.scenario.id, subject, rep, seed)
        self.log = EventLog(on_event)
        self._agent_classes = dict(agent_classes or {})

        sc = self.scenario
        event = self.taxonomy.events[sc.tuple.event]
        cast = [c.name for c in sc.scaffold.channel.cast]
        self.subject_name = sc.scaffold.subject.name
        self.world = ChatWorld([*cast, self.subject_name], reactions=event.features.get("reactions", True))
        self.labeler = TurnLabeler(self.taxonomy, sc.tuple.norm, sc.tuple.sanction, self.subject_name)

        self.orchestrator: Orchestrator = self._make(Orchestrator, "orchestrator", orchestrator, "orchestrator")
        self.personas: dict[str, ScriptedPersona] = {
            name: self._make(ScriptedPersona, "persona", personas, name) for name in cast
        }
        self.subject: Subject = self._make(Subject, "subject", subject, self.subject_name)
        self.persona_calls = persona_calls
        self.cast: PersonaCast | None = None
        first = next(iter(self.personas.values()))
        llm = getattr(first, "llm", None)
        if persona_calls == "joint" and llm is not None and not llm.capabilities.scores_choices:
            self.cast = PersonaCast(self, llm=llm, model_string=first.model_string)

        self.end_reason: str | None = None
        self.error: str | None = None
        self._opened = False
        self._silent_streak = 0
        self._post_sanction_opportunities: int | None = None
        self._calls = 0
        self._runner: asyncio.Runner | None = None
        self.streams: dict[str, list[dict[str, Any]]] = {name: [] for name in STREAM_TABLES}
        self.datacollector = mesa.DataCollector(
            model_reporters={
                "tick": "steps",
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
    def _resolve_scenario(self, scenario: str | Path | Scenario, source: str | Path | None) -> Scenario:
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
        if self.context is not None and self.context.has(model_string):
            return base(self, name, llm=self.context.backend(model_string), model_string=model_string)
        spec = ModelSpec.parse(model_string)
        override = self._agent_classes.get(role)
        if override is not None:
            llm = None
            if spec.provider not in ("scripted", "human"):
                self.context = self.context or RunContext()
                llm = self.context.backend(model_string)
            return override(self, name, llm=llm, model_string=model_string)
        if spec.provider == "human":
            raise SceneSimError("a human subject plays through 'scene-sim play', not in a batch run")
        if spec.provider == "scripted":
            policy = spec.name or "scripted"
            cls = policy_class(role, policy)
            kwargs: dict[str, Any] = {"model_string": model_string}
            if issubclass(cls, TemplateSubject):
                kwargs["pair"] = self.taxonomy.pair(self.scenario.tuple.norm)
            return cls(self, name, **kwargs)
        if self.context is None:
            self.context = RunContext()
        return base(self, name, llm=self.context.backend(model_string), model_string=model_string)

    # -- services used by agents ----------------------------------------------------
    def call_seed(self) -> int:
        """A deterministic sampling seed for the next model call."""
        self._calls += 1
        base = self.seed if self.seed is not None else 0
        return (base * 1_000_003 + self.rep * 7919 + self._calls) % (2**31 - 1)

    def emit_prompt(
        self, actor: ChatAgent | Orchestrator, reason: str, system: str, messages: list[dict[str, str]]
    ) -> None:
        """Log the full prompt as sent."""
        self.log.emit(
            "prompt",
            self.steps,
            actor=actor.name,
            role=actor.role,
            reason=reason,
            messages=[{"role": "system", "content": system}, *messages],
        )

    async def call_llm(
        self,
        actor: ChatAgent | Orchestrator | PersonaCast,
        system: str,
        messages: list[dict[str, str]],
        *,
        reason: str,
        log_prompt: bool = False,
        **request: Any,
    ) -> GenerateResponse:
        """Ask ``actor``'s backend, logging a ``model_call`` event (and the prompt, if ``log_prompt``).

        ``request`` holds the :class:`GenerateRequest` fields of this call
        (schema, choices, max_tokens, stop, ...); the seed, the repetition,
        the role and the episode's temperature are filled in here.

        Raises:
            EpisodeError: when the backend fails for good (the episode ends with ``error``).
        """
        if log_prompt:
            self.emit_prompt(actor, reason, system, messages)
        request.setdefault("temperature", self.temperature)
        sent = GenerateRequest(
            messages=tuple(messages),
            system=system,
            seed=self.call_seed(),
            replicate=self.rep,
            role=actor.role,
            **request,
        )
        try:
            response: GenerateResponse = await actor.llm.generate(sent)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a provider fault must end this episode, never the sweep
            fields = model_call_fields(exc, actor.model_string)
            self.log.emit("model_call", self.steps, actor=actor.name, **fields)
            raise EpisodeError(f"{actor.model_string}: {fields['error']}") from None
        fields = model_call_fields(response, actor.model_string)
        self.log.emit("model_call", self.steps, actor=actor.name, **fields, retries=list(response.retries))
        return response

    # -- running ---------------------------------------------------------------------
    def step(self) -> None:
        """Run one tick synchronously (Mesa's ``step``; ``steps`` is advanced by Mesa)."""
        if not self.running:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise SceneSimError("model.step() cannot run inside an event loop; use 'await model.astep()'")
        if self._runner is None:
            self._runner = asyncio.Runner()
        try:
            self._runner.run(self._tick())
        finally:
            if not self.running:
                self._close_runner()

    async def astep(self) -> None:
        """Run one tick in the current event loop."""
        if not self.running:
            return
        self.steps += 1  # what Mesa's wrapped step() does for the synchronous path
        await self._tick()

    async def arun(self) -> EpisodeResult:
        """Run the episode to its end."""
        while self.running:
            await self.astep()
        return self.result()

    def run_model(self) -> None:
        """Run the episode synchronously (Mesa's ``run_model``)."""
        while self.running:
            self.step()

    def result(self) -> EpisodeResult:
        """The finished episode."""
        return EpisodeResult(self.episode_id, self.end_reason or "", self.steps, self.log.events)

    def dispose(self) -> None:
        """Free a finished episode's memory now rather than at a later garbage collection.

        A Mesa model and its agents refer to each other, so a dropped episode
        lingers as a reference cycle until the collector's next pass; in a
        sweep of thousands, those passes stalled the event loop for up to a
        second. Take :meth:`result` first: this clears the model's and its
        agents' attributes, and the model cannot be used afterwards.
        """
        self._close_runner()
        agents = [self.orchestrator, self.subject, *self.personas.values(), self.cast]
        self.remove_all_agents()
        for obj in (*agents, self):
            attrs = getattr(obj, "__dict__", None)
            if attrs is not None:
                attrs.clear()

    def _close_runner(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    async def _tick(self) -> None:
        try:
            if not self._opened:
                self._open()
            await self._play_tick()
        except EpisodeError as exc:
            self.error = str(exc)
            self._end("error")
        self.datacollector.collect(self)

    def _open(self) -> None:
        self._opened = True
        sc = self.scenario
        self.log.emit(
            "episode_start",
            0,
            episode_id=self.episode_id,
            scenario_id=sc.id,
            tuple=sc.tuple.model_dump(),
            subject=self.subject_name,
            models=dict(self.models),
            seed=self.seed,
            rep=self.rep,
            max_turns=self.max_turns,
            min_post_sanction_turns=self.min_post_sanction_turns,
            reactions=self.world.reactions_enabled,
            version=__version__,
        )
        for t in sc.scaffold.transcript.opening_turns:
            if t.action == "no-op":
                continue
            action = React(t.content, t.target_turn_id or 0) if t.action == "react" else Message(t.content)
            self._post_scripted(t.actor, action, {"intent": "scaffold", "script": "opening"}, tick=0)
        if sc.tuple.precedent == 1 and sc.hidden.precedent_demonstrator:
            self._play_precedent()

    def _play_precedent(self) -> None:
        sc = self.scenario
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
            turn = self._post_scripted(demo, action, {"intent": "precedent_breach", "script": "precedent"}, tick=0)
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
                self._post_scripted(p.name, action, meta, tick=0)

    def _post_scripted(
        self, actor: str, action: Message | React, meta: dict[str, Any], *, tick: int
    ) -> ChatTurn | None:
        """Post a scripted line (scaffold, precedent) as that persona's action, with no prompt."""
        turn = self.world.post(actor, action, tick=tick, meta=meta)
        self._log_action(actor, Decision(action, meta), turn, tick=tick)
        return turn

    def _log_action(self, actor: str, decision: Decision, turn: ChatTurn | None, *, tick: int) -> None:
        action = decision.action
        self.log.emit(
            "action",
            tick,
            actor=actor,
            action=action.kind,
            content=action.content,
            target_turn_id=action.target_turn_id if isinstance(action, React) else None,
            turn_id=turn.turn_id if turn else None,
            parse_failure=decision.parse_failure,
            meta=dict(decision.meta),
        )
        if turn is not None:
            self._record(self.labeler.label(turn))

    def _record(self, label: TurnLabel) -> None:
        row = {"tick": self.steps, "turn_id": label.turn_id, "actor": label.actor}
        is_subject = label.actor == self.subject_name
        if label.label == "DEMONSTRATION" and not is_subject:
            self._add_row("demonstrations", row)
        elif label.label == "BREACH" and is_subject:
            self._add_row("breaches", row)
        elif label.label == "SANCTION" and not is_subject:
            target = self.world.get(label.target_turn_id or 0)
            if target is not None and target.actor == self.subject_name:
                self._add_row("sanctions", {**row, "target_turn_id": label.target_turn_id, "modality": label.modality})
                if self._post_sanction_opportunities is None:
                    self._post_sanction_opportunities = 0
        elif label.label == "FACE_SAVE_REPAIR" and is_subject:
            self._add_row("repairs", {**row, "target_turn_id": label.target_turn_id})

    def _add_row(self, table: str, row: dict[str, Any]) -> None:
        self.streams[table].append(row)
        self.datacollector.add_table_row(table, row, ignore_missing=True)

    async def _prompt(self, agent: ChatAgent, reason: str) -> ChatTurn | None:
        view = agent.observe(reason)
        system, messages = agent.render(view)
        self.emit_prompt(agent, reason, system, messages)
        if agent is self.subject and self._post_sanction_opportunities is not None:
            self._post_sanction_opportunities += 1
        decision = await agent.decide(view, system, messages)
        problem = None if isinstance(decision.action, NoOp) else self.world.validate(agent.name, decision.action)
        if problem is not None:
            decision = Decision(NoOp(), {"invalid": problem}, parse_failure=True)
        turn = self.world.post(agent.name, decision.action, tick=self.steps, meta=decision.meta)
        self._log_action(agent.name, decision, turn, tick=self.steps)
        agent.on_posted(turn, decision)
        return turn

    async def _prompt_cast(self, names: list[str]) -> list[tuple[str, ChatTurn | None]]:
        """One joint call for the personas ``names``; posts their actions up to the first non-silent one."""
        assert self.cast is not None
        system, messages = self.cast.render(names)
        self.log.emit(
            "prompt",
            self.steps,
            actor=self.cast.name,
            actors=list(names),
            role="persona",
            reason="turn",
            messages=[{"role": "system", "content": system}, *messages],
        )
        out: list[tuple[str, ChatTurn | None]] = []
        for name, decision in await self.cast.decide(names, system, messages):
            problem = None if isinstance(decision.action, NoOp) else self.world.validate(name, decision.action)
            if problem is not None:
                decision = Decision(NoOp(), {"invalid": problem}, parse_failure=True)
            turn = self.world.post(name, decision.action, tick=self.steps, meta=decision.meta)
            self._log_action(name, decision, turn, tick=self.steps)
            self.personas[name].on_posted(turn, decision)
            out.append((name, turn))
            if turn is not None:
                break
        return out

    async def _play_tick(self) -> None:
        tick = self.steps
        self.log.emit("turn_start", tick)
        view = self.orchestrator.observe("turn")
        system, messages = self.orchestrator.render(view)
        self.emit_prompt(self.orchestrator, "turn", system, messages)
        routing = await self.orchestrator.decide(view, system, messages)
        self.log.emit(
            "route",
            tick,
            actor=self.orchestrator.name,
            order=list(routing.order),
            terminate=routing.terminate,
            parse_failure=routing.parse_failure,
        )
        acted = False
        if tick == 1:
            el = self.scenario.scaffold.transcript.elicitor_turn
            self._post_scripted(el.actor, Message(el.content), {"intent": "scaffold", "script": "elicitor"}, tick=1)
            acted = True
            await self._prompt(self.subject, "after_action")
        order = list(routing.order)
        while order:
            if self.cast is not None:
                segment = await self._prompt_cast(order)
            else:
                segment = [(order[0], await self._prompt(self.personas[order[0]], "turn"))]
            order = order[len(segment) :]
            turn = segment[-1][1]
            if turn is None:
                continue
            acted = True
            if self._states_norm(turn):
                self._end("fidelity_fail")
                return
            await self._prompt(self.subject, "after_action")
        if not acted:
            turn = await self._prompt(self.subject, "floor_open")
            self._silent_streak = self._silent_streak + 1 if turn is None else 0
        else:
            self._silent_streak = 0
        if self._silent_streak >= SILENT_PROMPTS_TO_END:
            self._end("subject_silent")
        elif self._post_sanction_done():
            self._end("post_sanction")
        elif tick >= self.max_turns:
            self._end("max_turns")

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
        norm = self.taxonomy.norm(self.scenario.tuple.norm)
        words = re.findall(r"[\w']+", norm.norm_text.lower())
        text = " ".join(re.findall(r"[\w']+", turn.content.lower()))
        return norm.id in turn.content or any(" ".join(words[i : i + 8]) in text for i in range(max(0, len(words) - 7)))

    def _end(self, reason: str) -> None:
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self.running = False
        fields: dict[str, Any] = {"reason": reason, "ticks": self.steps, "chat_turns": len(self.world)}
        if self.error:
            fields["error"] = self.error
        self.log.emit("episode_end", self.steps, **fields)
