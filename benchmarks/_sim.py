"""A simulated language model for benchmarks: fixed latency, plausible chat behaviour.

It answers the framework's requests the way a model would, but from a seeded
hash of the prompt: personas speak now and then, subjects answer about half
the time, the orchestrator keeps the roster order, the judge and the auditor
return schema-valid labels. No network, no model: only the framework's own
cost is measured.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from typing import Any

from scene_sim.backends import Backend, GenerateRequest, GenerateResponse, Usage
from scene_sim.backends.fake import instance_of

LINES = ["sounds good", "on it, will report back in a bit", "did anyone check the logs?", "same here", "lol yes"]


_NAME = re.compile(r"You play the role of (.+?) in a multi-party")


def _u(text: str, salt: str) -> float:
    digest = hashlib.sha256((salt + text).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class SimModel(Backend):
    """Simulated model with ``latency_s`` per call (asyncio.sleep: never blocks the loop).

    Whether a persona speaks depends only on its name and the chat so far (not
    on the prompt's wording), so the per-persona and the joint protocols play
    out the same episode and differ only in how many calls they make.
    """

    provider = "custom"

    def __init__(self, latency_s: float = 0.1, persona_rate: float = 0.3, subject_rate: float = 0.5) -> None:
        super().__init__("sim")
        self.latency_s = latency_s
        self.persona_rate = persona_rate
        self.subject_rate = subject_rate
        #: ``(start, end)`` of every call (perf_counter): how busy the connections were, and when
        self.windows: list[tuple[float, float]] = []

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        # a call takes latency_s in all: the simulated model's own work counts inside it
        started = time.perf_counter()
        prompt = (request.system or "") + "".join(m["content"] for m in request.messages)
        text, parsed = self._answer(request, prompt)
        usage = Usage(math.ceil(len(prompt) / 4), math.ceil(len(text) / 4))
        if self.latency_s:
            await asyncio.sleep(max(0.0, self.latency_s - (time.perf_counter() - started)))
        self.windows.append((started, time.perf_counter()))
        return GenerateResponse(text, parsed=parsed, usage=usage, model="custom/sim")

    @staticmethod
    def _speaks(who: str, prompt: str, rate: float) -> tuple[bool, str]:
        # keyed on the actor and the chat so far (its last turn id), not on the wording
        last = prompt.rsplit("[t", 1)[-1].split("]", 1)[0] if "[t" in prompt else "0"
        key = f"{who}:{last}"
        speak = _u(key, "speak") < rate
        return speak, LINES[int(_u(key, "line") * len(LINES))] if speak else ""

    def _answer(self, request: GenerateRequest, prompt: str) -> tuple[str, Any]:
        name = request.schema_name
        if name == "routing":
            order = request.schema["properties"]["order"]["items"]["enum"]
            obj: Any = {"order": list(order), "terminate": False}
        elif name == "cast_actions":
            names = request.schema["properties"]["actions"]["items"]["properties"]["actor"]["enum"]
            acts = []
            for n in names:
                speak, line = self._speaks(n, prompt, self.persona_rate)
                acts.append(
                    {
                        "actor": n,
                        "action": "message" if speak else "no-op",
                        "content": line,
                        "target_turn_id": None,
                        "sanction": False,
                    }
                )
                if speak:
                    break
            obj = {"actions": acts}
        elif name == "chat_action":
            if request.role == "persona":
                match = _NAME.search(request.system or "")
                speak, line = self._speaks(match.group(1) if match else "?", prompt, self.persona_rate)
            else:
                speak, line = self._speaks("subject", prompt, self.subject_rate)
            obj = {"action": "message" if speak else "no-op", "content": line, "target_turn_id": None}
            if request.role == "persona":
                obj["sanction"] = False
        elif request.choices:
            return request.choices[0], None
        elif request.schema is not None:
            obj = instance_of(request.schema)
        else:
            return "ok", None
        return json.dumps(obj), obj
