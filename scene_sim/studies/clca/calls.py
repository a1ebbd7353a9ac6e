"""One model call with bounded re-queries, for the pipeline steps outside an episode (adapt, filter, intents).

``scripted`` models are not backends: the step's offline policy writes the
raw text, which goes through the same ``read`` as a model's answer, so the
parsers are exercised offline too.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scene_sim.backends.base import GenerateRequest
from scene_sim.context import RunContext
from scene_sim.requery import requery

__all__ = ["Asked", "ask", "is_scripted", "item_seed"]


def is_scripted(model: str) -> bool:
    """Whether ``model`` names an offline policy rather than a backend."""
    return model == "scripted" or model.startswith("scripted/")


def item_seed(seed: int, *parts: object) -> int:
    """A stable per-item seed from the run's seed and the item's identity."""
    key = "|".join(str(p) for p in parts).encode()
    return (zlib.crc32(key) ^ (seed * 2654435761)) % (2**31 - 1)


@dataclass(frozen=True)
class _Text:
    text: str
    parsed: Any = None


@dataclass(frozen=True)
class Asked:
    """What one ask returned.

    Attributes:
        value: what ``read`` accepted (None once the re-queries were spent).
        raw: the raw text of every answer, in order.
        problem: why the last answer was refused (None when accepted).

    """

    value: Any
    raw: tuple[str, ...]
    problem: str | None

    @property
    def parse_failures(self) -> int:
        """Answers that could not be parsed."""
        return len(self.raw) - (1 if self.problem is None else 0)


async def ask(
    model: str,
    context: RunContext | None,
    system: str,
    user: str,
    read: Callable[[Any], tuple[Any, str | None]],
    *,
    seed: int,
    role: str,
    scripted: Callable[[], str],
    temperature: float | None = None,
    max_tokens: int = 800,
) -> Asked:
    """Ask ``model`` (or run ``scripted`` for an offline model) and parse with ``read``.

    Provider failures (after the managed backend's retries) propagate: the
    caller's item fails and a re-run retries it.
    """
    raw: list[str] = []
    if is_scripted(model):
        text = scripted()
        raw.append(text)
        value, problem = read(_Text(text))
        return Asked(value, tuple(raw), problem)
    assert context is not None
    backend = context.backend(model)

    async def send(convo: tuple[dict[str, str], ...], attempt: int) -> Any:
        response = await backend.generate(
            GenerateRequest(
                messages=convo,
                system=system or None,
                temperature=temperature,
                max_tokens=max_tokens,
                seed=(seed + attempt) % (2**31 - 1),
                role=role,
            )
        )
        raw.append(str(response.text or ""))
        return response

    outcome = await requery(send, [{"role": "user", "content": user}], read)
    return Asked(outcome.value, tuple(raw), outcome.problem)
