"""Exact replay: a SCENE episode that met faults and malformed outputs re-runs from the cache with zero requests.

Run 1 plays an episode whose subject is an API model on the loopback fake
server, which answers with a fixed pattern of 429s, 500s, unreadable HTTP
bodies, outputs that are not JSON and valid actions (each valid action
distinct, so a replay that took another path would show). Run 2 plays the
same episode in a fresh run directory while the server answers every request
with a 500: no request may reach it, and the event log must equal run 1's
except for the fields a cache hit changes by design: ``latency_s``,
``cache_hit``, ``attempts`` and ``retries`` (the transport faults met) of
``model_call`` events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Kit
from fakeserver import FakeServer, Recorded, Reply

from scene_sim.events import iter_event_dicts
from scene_sim.studies.scene.runner import run_episode

#: The fields a cache hit legitimately changes (DESIGN.md's model_call event).
REPLAY_VOLATILE = ("latency_s", "cache_hit", "attempts", "retries")


class FaultyProvider:
    """Answers by request index: faults, malformed outputs and distinct valid actions."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.n = 0
        self.faults = {"429": 0, "500": 0, "bad_body": 0, "not_json": 0}

    def __call__(self, rec: Recorded) -> Reply:
        self.n += 1
        i = self.n
        if i % 6 == 1 and i > 1:
            self.faults["429"] += 1
            return self.kit.error(429, "rate limited")
        if i % 6 == 3:
            self.faults["500"] += 1
            return self.kit.error(500, "internal error")
        if i % 6 == 4:
            self.faults["bad_body"] += 1
            return Reply(200, '{"id": "truncated', content_type="application/json")
        if i % 4 == 2:
            self.faults["not_json"] += 1
            return self.kit.text("I would rather just chat. No JSON today.")
        action = "no-op" if i % 5 == 0 else "message"
        body = {"action": action, "content": f"answer {i}" if action == "message" else "", "target_turn_id": None}
        return self.kit.structured(body)


def _comparable(path: Path) -> list[dict[str, Any]]:
    out = []
    for event in iter_event_dicts(path):
        if event.get("kind") == "model_call":
            event = {k: v for k, v in event.items() if k not in REPLAY_VOLATILE}
        out.append(event)
    return out


@pytest.mark.slow
async def test_faulty_run_replays_from_cache_with_zero_requests(kit: Kit, server: FakeServer, tmp_path: Path) -> None:
    provider = FaultyProvider(kit)
    server.default = provider
    model = kit.model(server, max_attempts=6)

    async def run(out: Path) -> Path:
        from scene_sim.backends import _managed

        # no real waiting between retried attempts (the retry schedule is not what is tested here)
        original = _managed.ManagedBackend._backoff
        _managed.ManagedBackend._backoff = lambda self, attempt, retry_after: 0.0  # type: ignore[method-assign]
        try:
            outcome = await run_episode(
                out,
                scenario="achievement_announcement__deadpan_default__noticeable_absence__off_record_sanction__p0",
                subject=model,
                judge=None,
                seed=7,
                max_turns=4,
            )
        finally:
            _managed.ManagedBackend._backoff = original  # type: ignore[method-assign]
        return outcome.run_dir.episode_path(outcome.result.episode_id)

    first = await run(tmp_path / "run1")
    run1_requests = len(server.posts)
    events1 = _comparable(first)
    calls = [e for e in events1 if e["kind"] == "model_call"]
    retried = [e for e in iter_event_dicts(first) if e.get("kind") == "model_call" and e["attempts"] > 1]
    requeries = [e for e in events1 if e["kind"] == "prompt" and e.get("reason") == "requery"]
    # the first run really met every kind of fault, and malformed outputs made the subject re-query
    assert all(count > 0 for count in provider.faults.values()), provider.faults
    assert retried and requeries and calls
    assert any(e["kind"] == "action" and e.get("parse_failure") is False for e in events1)

    server.default = kit.error(500, "the replay must not reach the provider")
    second = await run(tmp_path / "run2")
    assert len(server.posts) == run1_requests  # zero requests in run 2
    replayed = [e for e in iter_event_dicts(second) if e.get("kind") == "model_call"]
    assert replayed and all(e["cache_hit"] and e["attempts"] == 0 for e in replayed)
    events2 = _comparable(second)
    assert json.dumps(events2, sort_keys=True) == json.dumps(events1, sort_keys=True)
    print(f"replay: run 1 sent {run1_requests} requests ({provider.faults}), run 2 sent 0")
