"""Typed chat actions and the defensive parser for model output.

Every role acts through the same three actions (seed B.3/B.4): send a
message, react to an earlier turn, or do nothing. Model output is parsed by
:func:`parse_action`, which never raises on bad input: it returns an
:class:`ActionParse` whose ``error`` says what was wrong so the caller can
re-query, and finally fall back to a logged no-op.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from scene_sim._json import decode_json

__all__ = [
    "ACTION_SCHEMA",
    "Action",
    "ActionParse",
    "Message",
    "NoOp",
    "React",
    "extract_json",
    "parse_action",
]

MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Message:
    """Send a chat message."""

    content: str
    kind: ClassVar[str] = "message"


@dataclass(frozen=True, slots=True)
class React:
    """Add an emoji reaction to an earlier message."""

    content: str
    target_turn_id: int
    kind: ClassVar[str] = "react"


@dataclass(frozen=True, slots=True)
class NoOp:
    """Do nothing this time."""

    content: str = ""
    kind: ClassVar[str] = "no-op"


Action = Message | React | NoOp

#: JSON Schema of the action object every role returns (seed B.3/B.4), used
#: for providers' structured-output features.
ACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": ["message", "react", "no-op"]},
        "content": {"type": "string"},
        "target_turn_id": {"type": ["integer", "null"]},
    },
    "required": ["action", "content", "target_turn_id"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class ActionParse:
    """Result of parsing one model output."""

    action: Action | None
    error: str | None = None
    data: dict[str, Any] | None = None


def extract_json(text: str) -> Any:
    """Pull the first JSON object out of ``text`` (bare, fenced, or embedded in chatter).

    Raises:
        ValueError: when no JSON object can be decoded.

    """
    value = decode_json(text, {"type": "object"})
    if value is None:
        raise ValueError("no JSON object found")
    return value


_ALIASES: dict[str, Literal["message", "react", "no-op"]] = {
    "message": "message",
    "msg": "message",
    "say": "message",
    "send": "message",
    "reply": "message",
    "react": "react",
    "reaction": "react",
    "emoji": "react",
    "no-op": "no-op",
    "noop": "no-op",
    "no_op": "no-op",
    "none": "no-op",
    "pass": "no-op",
    "silent": "no-op",
    "silence": "no-op",
    "nothing": "no-op",
}


def parse_action(raw: str | dict[str, Any] | None) -> ActionParse:
    """Parse a model's action output defensively; never raises.

    Accepts a dict (structured output) or text containing a JSON object with
    ``action``, ``content`` and ``target_turn_id``. Common variants
    (``"noop"``, ``"t12"`` as a turn id) are normalised. Semantic checks
    against the chat (does the target exist?) are the world's job.
    """
    if raw is None:
        return ActionParse(None, "empty output")
    if isinstance(raw, dict):
        data = raw
    else:
        try:
            data = extract_json(str(raw))
        except ValueError as exc:
            return ActionParse(None, f"could not read a JSON object: {exc}")
    if not isinstance(data, dict):
        return ActionParse(None, "output is not a JSON object")
    name = str(data.get("action", "")).strip().lower()
    kind = _ALIASES.get(name)
    if kind is None:
        return ActionParse(None, f"unknown action {name!r}; use message, react or no-op", data)
    content = data.get("content")
    content = "" if content is None else str(content).strip()
    if kind == "no-op":
        return ActionParse(NoOp(), None, data)
    if not content:
        return ActionParse(None, f"a {kind} needs non-empty content", data)
    if kind == "message":
        return ActionParse(Message(content=content[:MAX_MESSAGE_CHARS]), None, data)
    target = data.get("target_turn_id")
    if isinstance(target, str):
        m = re.fullmatch(r"\s*\[?t?(\d+)\]?\s*", target)
        target = int(m.group(1)) if m else None
    if isinstance(target, bool) or not isinstance(target, int | float):
        return ActionParse(None, "a react needs an integer target_turn_id", data)
    if len(content) > 16:
        return ActionParse(None, "a reaction is a single emoji", data)
    return ActionParse(React(content=content, target_turn_id=int(target)), None, data)
