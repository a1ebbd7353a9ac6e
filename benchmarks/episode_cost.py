"""Calls, input tokens and stable-prefix share per 8-turn episode.

Every role is played by a simulated model (no latency) that answers like a
chatty group; each episode is then judged and audited by the same model.
For each configuration it reports, per episode: model calls (simulation +
judge + audit), input tokens (characters / 4) and the share of input tokens
that sit in a prefix some earlier request of the run already sent (what a
provider prefix cache can serve). SCENE spent 64.5 calls and about 119k
input tokens per episode; the targets are <= 32 calls, <= 59k input tokens
and >= 80% stable prefix.

    python benchmarks/episode_cost.py --episodes 68
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _sim import SimModel

from scene_sim.backends import GenerateRequest, GenerateResponse
from scene_sim.context import RunContext
from scene_sim.studies.scene import SceneModel
from scene_sim.studies.scene._catalog import scenario_source
from scene_sim.studies.scene.analysis import judge_episode


class Recording(SimModel):
    """Records the full text of every request (system first, as providers see it)."""

    def __init__(self, persona_rate: float) -> None:
        super().__init__(latency_s=0.0, persona_rate=persona_rate)
        self.prompts: list[tuple[str, str]] = []

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        text = (request.system or "") + "\n" + "\n".join(m["content"] for m in request.messages)
        self.prompts.append((request.role, text))
        return await super().generate(request)


def _common(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n
    while lo < hi:  # binary search on prefix equality: fast on long prompts
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def stable_share(prompts: list[str]) -> float:
    """Share of characters in a prefix already sent by an earlier request."""
    total = cached = 0
    seen: list[str] = []
    for p in prompts:
        best = max((_common(p, q) for q in seen[-60:]), default=0)
        cached += best
        total += len(p)
        seen.append(p)
    return cached / total if total else 0.0


async def measure(episodes: int, persona_calls: str, orchestrator: str, persona_rate: float) -> dict:
    bank = list(scenario_source())
    calls = tokens = ticks = 0
    persona_actions = 0
    prefix_chars = total_chars = 0
    for i in range(episodes):
        ctx = RunContext(cache_mode="off")
        sim = Recording(persona_rate)
        ctx.add("custom/sim", sim)
        m = SceneModel(
            scenario=bank[i % len(bank)],
            subject="custom/sim",
            personas="custom/sim",
            orchestrator="custom/sim" if orchestrator == "model" else "scripted",
            judge="custom/sim",
            seed=i,
            max_turns=8,
            context=ctx,
            persona_calls=persona_calls,
        )
        result = await m.arun()
        await judge_episode(result.events, judge="custom/sim", context=ctx)
        ticks += result.ticks
        names = {c.name for c in m.scene.scaffold.channel.cast}
        persona_actions += sum(
            1
            for e in result.events
            if e["kind"] == "action" and e["turn"] >= 1 and e["actor"] in names and e["action"] != "no-op"
        )
        texts = [t for _, t in sim.prompts]
        calls += len(texts)
        tokens += sum(len(t) for t in texts) / 4
        share = stable_share(texts)
        total_chars += sum(len(t) for t in texts)
        prefix_chars += share * sum(len(t) for t in texts)
        await ctx.aclose()
    return {
        "persona_calls": persona_calls,
        "orchestrator": orchestrator,
        "episodes": episodes,
        "ticks_per_episode": round(ticks / episodes, 1),
        "persona_actions_per_episode": round(persona_actions / episodes, 1),
        "calls_per_episode": round(calls / episodes, 1),
        "input_tokens_per_episode": round(tokens / episodes),
        "stable_prefix_share": round(prefix_chars / total_chars, 3),
    }


async def main(episodes: int, persona_rate: float) -> list[dict]:
    out = []
    for persona_calls, orchestrator in (("each", "model"), ("each", "scripted"), ("joint", "scripted")):
        out.append(await measure(episodes, persona_calls, orchestrator, persona_rate))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=68)
    ap.add_argument("--persona-rate", type=float, default=0.3, help="chance a persona speaks when asked")
    a = ap.parse_args()
    for row in asyncio.run(main(a.episodes, a.persona_rate)):
        print(json.dumps(row))
