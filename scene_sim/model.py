"""The Mesa model base of every conversation: one episode, one event log, one LLM-call path.

:class:`ConversationModel` is a ``mesa.Model`` that owns a
:class:`~scene_sim.world.ChatWorld`, its :class:`~scene_sim.agents.ChatAgent`
agents (``model.agents``, an ``AgentSet``), the seeded rngs (``model.rng``,
``model.random``: Mesa's ``rng=`` convention, one seed drives everything),
the event log and a ``DataCollector``. A study subclasses it and writes two
hooks:

* :meth:`ConversationModel.start_fields`: what its ``episode_start`` event records;
* :meth:`ConversationModel.play_tick`: one tick of its protocol, using
  :meth:`prompt` (observe -> render -> log the prompt -> decide -> validate ->
  post -> log the action) and :meth:`end`.

Everything else is here, once: model calls with their ``model_call`` events
and deterministic sampling seeds (:meth:`call_llm`; a provider failure ends
the episode with reason ``error``, a call the run's budget refuses with
reason ``budget``), the synchronous
``step()`` for Mesa tools such as ``mesa.batch_run``, ``await arun()`` for
event loops, :meth:`result` and :meth:`dispose`.

The episode's clock is ``model.tick`` (1, 2, ... as ticks start; 0 before the
first): the event log's ``turn``. Mesa's own ``steps`` counts synchronous
``step()`` calls as Mesa defines it, and is left to Mesa.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mesa

from scene_sim._version import __version__
from scene_sim.actions import NoOp
from scene_sim.agents import ChatAgent, Decision
from scene_sim.backends import model_call_fields
from scene_sim.backends.base import GenerateRequest, GenerateResponse
from scene_sim.budget import BudgetExceeded
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.events import EventLog
from scene_sim.modelspec import ModelSpec
from scene_sim.world import ChatTurn, ChatWorld

__all__ = ["ConversationModel", "EpisodeBudgetReached", "EpisodeError", "EpisodeResult", "slug"]


class EpisodeError(Exception):
    """A backend failure that ends the episode with reason ``error``."""


class EpisodeBudgetReached(EpisodeError):
    """The run's budget refused a model call: the episode ends with reason ``budget`` (resumable)."""


@dataclass(frozen=True)
class EpisodeResult:
    """What a finished episode hands on."""

    episode_id: str
    end_reason: str
    ticks: int
    events: list[dict[str, Any]]


def slug(text: str) -> str:
    """A short, file-name-safe form of ``text`` (for episode ids)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "x"


class ConversationModel(mesa.Model):
    """Base of every conversation episode.

    Args:
        participants: the chat's actor names.
        episode_id: the episode's id (its event log's file name).
        models: model string per role (recorded in ``episode_start``; checked here).
        seed: drives ``model.rng``, ``model.random`` and every sampling seed.
        rep: repetition index (part of the response-cache key).
        reactions: whether the chat allows emoji reactions.
        temperature: sampling temperature of model-driven agents (None: the backend's).
        context: shared backends and accounting (created on first use).
        on_event: callback for each event as it is emitted.

    """

    def __init__(
        self,
        participants: list[str],
        *,
        episode_id: str,
        models: dict[str, str | None],
        seed: int | None = 0,
        rep: int = 0,
        reactions: bool = True,
        temperature: float | None = None,
        context: RunContext | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(rng=seed)
        if temperature is not None and not 0 <= temperature <= 2:
            raise SceneSimError(f"temperature must be between 0 and 2, got {temperature}")
        self.seed = seed
        self.rep = rep
        self.temperature = temperature
        self.context = context
        self.models = dict(models)
        for value in self.models.values():
            if value is not None and not (context is not None and context.has(value)):
                ModelSpec.parse(value)
        self.episode_id = episode_id
        self.world = ChatWorld(participants, reactions=reactions)
        self.log = EventLog(on_event)
        self.tick = 0
        self.end_reason: str | None = None
        self.error: str | None = None
        self._opened = False
        self._calls = 0
        self._runner: asyncio.Runner | None = None

    # -- the two hooks of a study ------------------------------------------------------
    def start_fields(self) -> dict[str, Any]:
        """Fields of the ``episode_start`` event besides ``episode_id``, ``models``, ``seed``."""
        return {}

    async def play_tick(self) -> None:
        """Play one tick of the protocol (``self.tick`` is already advanced)."""
        raise NotImplementedError

    def on_open(self) -> None:
        """Called once, after ``episode_start`` is logged and before the first tick is played."""

    # -- backends ------------------------------------------------------------------------
    def backend(self, model_string: str) -> Any:
        """The managed backend serving ``model_string`` (from the run context, created if needed)."""
        if self.context is None:
            self.context = RunContext()
        return self.context.backend(model_string)

    def call_seed(self) -> int:
        """A deterministic sampling seed for the next model call."""
        self._calls += 1
        base = self.seed if self.seed is not None else 0
        return (base * 1_000_003 + self.rep * 7919 + self._calls) % (2**31 - 1)

    def emit_prompt(
        self, actor: ChatAgent, reason: str, system: str, messages: list[dict[str, str]], **fields: Any
    ) -> None:
        """Log the full prompt as sent."""
        self.log.emit(
            "prompt",
            self.tick,
            actor=actor.name,
            **fields,
            role=actor.role,
            reason=reason,
            messages=[{"role": "system", "content": system}, *messages],
        )

    async def call_llm(
        self,
        actor: ChatAgent,
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
            EpisodeBudgetReached: when the run's budget refuses the call (the episode ends with ``budget``).

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
            if isinstance(exc, BudgetExceeded):
                fields["attempts"] = 0  # refused before any request was sent
            self.log.emit("model_call", self.tick, actor=actor.name, **fields)
            cls = EpisodeBudgetReached if isinstance(exc, BudgetExceeded) else EpisodeError
            raise cls(f"{actor.model_string}: {fields['error']}") from None
        fields = model_call_fields(response, actor.model_string)
        self.log.emit("model_call", self.tick, actor=actor.name, **fields, retries=list(response.retries))
        return response

    # -- the prompt -> validate -> post -> log path ----------------------------------------
    async def prompt(self, agent: ChatAgent, reason: str) -> ChatTurn | None:
        """Prompt ``agent`` once and post what it decides; returns the turn (None for a no-op)."""
        view = agent.observe(reason)
        system, messages = agent.render(view)
        self.emit_prompt(agent, reason, system, messages)
        self.before_decide(agent, reason)
        decision = await agent.decide(view, system, messages)
        return self.post(agent.name, decision, notify=agent)

    def before_decide(self, agent: ChatAgent, reason: str) -> None:
        """Hook called after an agent's prompt is logged, before it decides."""

    def post(self, actor: str, decision: Decision, *, notify: ChatAgent | None = None) -> ChatTurn | None:
        """Validate ``decision``, post it to the chat and log the ``action`` event.

        An action the chat refuses becomes a logged no-op with
        ``parse_failure: true``. ``notify``'s :meth:`ChatAgent.on_posted` is called.
        """
        if decision.action.kind != "no-op":
            problem = self.world.validate(actor, decision.action)
            if problem is not None:
                decision = Decision(NoOp(), {"invalid": problem}, parse_failure=True)
        turn = self.world.post(actor, decision.action, tick=self.tick, meta=decision.meta)
        self.log_action(actor, decision, turn)
        if notify is not None:
            notify.on_posted(turn, decision)
        return turn

    def log_action(self, actor: str, decision: Decision, turn: ChatTurn | None) -> None:
        """Log the ``action`` event of a posted decision."""
        action = decision.action
        self.log.emit(
            "action",
            self.tick,
            actor=actor,
            action=action.kind,
            content=action.content,
            target_turn_id=getattr(action, "target_turn_id", None) if action.kind == "react" else None,
            turn_id=turn.turn_id if turn else None,
            parse_failure=decision.parse_failure,
            meta=dict(decision.meta),
        )
        self.on_action(actor, decision, turn)

    def on_action(self, actor: str, decision: Decision, turn: ChatTurn | None) -> None:
        """Hook called after every logged action (online collectors listen here)."""

    # -- running ---------------------------------------------------------------------------
    def step(self) -> None:
        """Run one tick synchronously (Mesa's ``step``, for ``mesa.batch_run`` and friends)."""
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
            self._runner.run(self.astep())
        finally:
            if not self.running:
                self._close_runner()

    async def astep(self) -> None:
        """Run one tick in the current event loop."""
        if not self.running:
            return
        try:
            if not self._opened:
                self._open()  # at tick 0: what a study posts before the first tick is logged there
            self.tick += 1
            await self.play_tick()
        except EpisodeError as exc:
            self.error = str(exc)
            self.end("budget" if isinstance(exc, EpisodeBudgetReached) else "error")
        self.collect()

    def collect(self) -> None:
        """Collect this tick's data (the default: the ``datacollector``, if the study made one)."""
        collector = getattr(self, "datacollector", None)
        if collector is not None:
            collector.collect(self)

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
        """The finished (or current) episode."""
        return EpisodeResult(self.episode_id, self.end_reason or "", self.tick, self.log.events)

    def dispose(self) -> None:
        """Free a finished episode's memory now rather than at a later garbage collection.

        A Mesa model and its agents refer to each other, so a dropped episode
        lingers as a reference cycle until the collector's next pass; in a
        sweep of thousands, those passes stalled the event loop for up to a
        second. Take :meth:`result` first: this clears the model's and its
        agents' attributes, and the model cannot be used afterwards.
        """
        self._close_runner()
        agents = list(self.agents)
        self.remove_all_agents()
        for obj in (*agents, self):
            obj.__dict__.clear()

    def _close_runner(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def _open(self) -> None:
        self._opened = True
        self.log.emit(
            "episode_start",
            0,
            episode_id=self.episode_id,
            **self.start_fields(),
            models=dict(self.models),
            seed=self.seed,
            rep=self.rep,
            version=__version__,
        )
        self.on_open()

    def end(self, reason: str, **fields: Any) -> None:
        """End the episode with ``reason`` (the first reason wins) and log ``episode_end``."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self.running = False
        extra: dict[str, Any] = {"reason": reason, "ticks": self.tick, "chat_turns": len(self.world), **fields}
        if self.error:
            extra["error"] = self.error
        self.log.emit("episode_end", self.tick, **extra)
