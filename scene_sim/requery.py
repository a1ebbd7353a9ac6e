"""The one bounded re-query loop for structured model output.

A model asked for structured output may answer with something unusable. The
loop asks once, and while the answer is unusable and re-queries are left,
shows the model its answer and the problem and asks again. Every caller
(agents in an episode, judges, generators, pipelines) goes through
:func:`requery`, so the bound and the correction turn are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["MAX_REQUERIES", "Requeried", "requery"]

#: How many times a malformed model output is re-queried before the caller's fallback.
MAX_REQUERIES = 2

T = TypeVar("T")

#: ``send(messages, attempt)``: one model call with this conversation (attempt 0 is the first ask).
Send = Callable[[tuple[dict[str, str], ...], int], Awaitable[Any]]


@dataclass(frozen=True)
class Requeried(Generic[T]):
    """The loop's outcome.

    Attributes:
        value: what ``read`` accepted, or None once the re-queries were spent.
        attempts: model calls made.
        problem: why the last answer was refused (None when one was accepted).
        response: the last response.

    """

    value: T | None
    attempts: int
    problem: str | None
    response: Any


def _default_correction(problem: str) -> str:
    return f"That was not valid ({problem}). Reply with the JSON object only."


async def requery(
    send: Send,
    messages: Sequence[dict[str, str]],
    read: Callable[[Any], tuple[T | None, str | None]],
    *,
    correction: Callable[[str], str] = _default_correction,
    max_requeries: int = MAX_REQUERIES,
    echo_chars: int | None = 4000,
) -> Requeried[T]:
    """Ask, then re-query with the problem (at most ``max_requeries`` times) until ``read`` accepts.

    Args:
        send: makes one call for a conversation and the attempt index.
        messages: the first conversation.
        read: ``read(response)`` returns ``(value, None)`` or ``(None, problem)``.
        correction: the user turn that follows a refused answer, from the problem.
        max_requeries: re-queries after the first ask.
        echo_chars: how much of a refused answer is shown back to the model (None: all of it).

    """
    convo = tuple(messages)
    response: Any = None
    problem: str | None = "no answer"
    for attempt in range(max_requeries + 1):
        response = await send(convo, attempt)
        value, problem = read(response)
        if problem is None:
            return Requeried(value, attempt + 1, None, response)
        text = str(getattr(response, "text", "") or "")
        text = text if echo_chars is None else text[:echo_chars]
        convo = (*convo, {"role": "assistant", "content": text}, {"role": "user", "content": correction(problem)})
    return Requeried(None, max_requeries + 1, problem, response)
