"""The agent base: a Mesa agent that chats, with one language-model path.

:class:`ChatAgent` is the base of every conversational role in every study.
Each prompt the model asks the agent for its *view* (:meth:`ChatAgent.observe`),
renders its prompt (:meth:`ChatAgent.render`), awaits :meth:`ChatAgent.decide`
and reports the posted turn back (:meth:`ChatAgent.on_posted`). The default
``decide`` asks the agent's language model for a chat action: API models
answer with structured JSON, re-queried a bounded number of times
(:func:`ask_until_valid`, the one re-query loop of the project); local
models score the closed set of actions, so their choice is valid by
construction.

The agent is typed against :class:`ConversationHost`, the few services a
model gives its agents, not against any study's model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

import mesa

from scene_sim.actions import ACTION_SCHEMA, Action, Message, NoOp, React, parse_action
from scene_sim.requery import MAX_REQUERIES, requery
from scene_sim.world import ChatTurn, ChatWorld

__all__ = [
    "EMPTY_META",
    "MAX_REQUERIES",
    "REACTION_EMOJI",
    "ChatAgent",
    "ConversationHost",
    "Decision",
    "ask_until_valid",
]

#: Reactions a local model chooses from (API models may use any emoji).
REACTION_EMOJI = ("👍", "❤️", "😂", "🙏", "🔥", "👀", "💀", "🙄", "😬", "🤐")

#: The empty, read-only ``Decision.meta``.
EMPTY_META: Mapping[str, Any] = MappingProxyType({})


class ConversationHost(Protocol):
    """What an agent may use of its model (:class:`scene_sim.model.ConversationModel` provides it)."""

    steps: int
    world: ChatWorld

    async def call_llm(
        self,
        actor: Any,
        system: str,
        messages: list[dict[str, str]],
        *,
        reason: str,
        log_prompt: bool = False,
        **request: Any,
    ) -> Any:
        """Ask ``actor``'s backend and log the call."""
        ...


@dataclass(frozen=True)
class Decision:
    """An agent's choice for one prompt.

    Attributes:
        action: what to post.
        meta: hidden bookkeeping stored with the turn and the event log (for
            scripted actors: what they intended); never shown to anyone.
        parse_failure: the model's output could not be turned into a valid
            action and this is the fallback no-op.

    """

    action: Action
    meta: Mapping[str, Any] = field(default_factory=lambda: EMPTY_META)
    parse_failure: bool = False


class ChatAgent(mesa.Agent):
    """Base of every chat role.

    Args:
        model: the episode.
        name: the actor name used in the chat and the log.
        llm: the managed backend that decides (None for offline policies).
        model_string: the model string this agent was built from (for the log).

    """

    role: ClassVar[str] = "agent"

    def __init__(self, model: Any, name: str, *, llm: Any = None, model_string: str = "") -> None:
        super().__init__(model)
        self.name = name
        self.llm = llm
        self.model_string = model_string

    # The three hooks a subclass may override -------------------------------------
    def observe(self, reason: str) -> Any:
        """Build this agent's view for a prompt with ``reason``."""
        raise NotImplementedError

    def render(self, view: Any) -> tuple[str, list[dict[str, str]]]:
        """Render the prompt for ``view``: ``(system, messages)``."""
        raise NotImplementedError

    async def decide(self, view: Any, system: str, messages: list[dict[str, str]]) -> Decision:
        """Choose an action. The default asks the language model."""
        return await self._llm_action(view, system, messages)

    def on_posted(self, turn: ChatTurn | None, decision: Decision) -> None:
        """Called after the runtime posted this agent's decision (``turn`` is None for a no-op)."""

    # The language-model path ----------------------------------------------------
    async def _llm_action(self, view: Any, system: str, messages: list[dict[str, str]]) -> Decision:
        if self.llm is None:
            raise RuntimeError(f"{type(self).__name__} '{self.name}' has no language model and no policy")
        if self.llm.capabilities.scores_choices:
            return await self._choice_action(view, system, messages)

        def read(response: Any) -> tuple[Decision | None, str | None]:
            parsed = parse_action(response.parsed if response.parsed is not None else response.text)
            problem = parsed.error
            if parsed.action is not None and problem is None:
                problem = self.model.world.validate(self.name, parsed.action)
            if problem is not None or parsed.action is None:
                return None, problem
            return Decision(parsed.action, self._meta_from(parsed.data or {})), None

        decision = await ask_until_valid(
            self,
            system,
            messages,
            read,
            what="action",
            schema=self._schema(),
            schema_name="chat_action",
            max_tokens=400,
        )
        return decision or Decision(NoOp(), parse_failure=True)

    async def _choice_action(self, view: Any, system: str, messages: list[dict[str, str]]) -> Decision:
        # Valid by construction: score the closed set of actions, then only
        # generate free text for a message.
        world = self.model.world
        kinds = ["message", "react", "no-op"] if world.reactions_enabled else ["message", "no-op"]
        options = tuple(f'{{"action": "{k}"' for k in kinds)
        choice = await self._choose(system, messages, options)
        kind = kinds[options.index(choice)]
        if kind == "no-op":
            return Decision(NoOp())
        if kind == "react":
            targets = [t.turn_id for t in world.turns if t.kind == "message"][-5:]
            if not targets:
                return Decision(NoOp())
            pairs = list(itertools.product(targets, REACTION_EMOJI))
            options = tuple(f'{{"action": "react", "target_turn_id": {t}, "content": "{e}"' for t, e in pairs)
            picked = await self._choose(system, messages, options)
            target, emoji = pairs[options.index(picked)]
            return Decision(React(content=emoji, target_turn_id=target))
        prefill = '{"action": "message", "content": "'
        convo = [*messages, {"role": "assistant", "content": prefill}]
        response = await self.model.call_llm(
            self,
            system,
            convo,
            reason="content",
            max_tokens=60,
            stop=('"', "\n"),
        )
        text = response.text.split('"')[0].strip()
        if not text:
            return Decision(NoOp(), parse_failure=True)
        return Decision(Message(content=text))

    async def _choose(self, system: str, messages: list[dict[str, str]], options: tuple[str, ...]) -> str:
        response = await self.model.call_llm(
            self,
            system,
            list(messages),
            reason="choice",
            choices=options,
            max_tokens=32,
        )
        return response.text if response.text in options else options[-1]

    def _schema(self) -> dict[str, Any]:
        return ACTION_SCHEMA

    def _meta_from(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        return EMPTY_META


async def ask_until_valid(
    actor: Any,
    system: str,
    messages: list[dict[str, str]],
    read: Callable[[Any], tuple[Any, str | None]],
    *,
    what: str,
    **request: Any,
) -> Any:
    """Ask ``actor``'s model; re-query with the problem (bounded) until ``read`` accepts the answer.

    ``read(response)`` returns ``(value, None)`` or ``(None, problem)``. Each
    re-query shows the model its answer and the problem, and is logged as a
    ``requery`` prompt. Returns the value, or None once the re-queries are spent.
    """

    async def send(convo: tuple[dict[str, str], ...], attempt: int) -> Any:
        reason = "turn" if attempt == 0 else "requery"
        return await actor.model.call_llm(actor, system, list(convo), reason=reason, log_prompt=attempt > 0, **request)

    outcome = await requery(
        send,
        messages,
        read,
        correction=lambda problem: f"That was not a valid {what} ({problem}). Reply with the JSON object only.",
        echo_chars=None,
    )
    return outcome.value
