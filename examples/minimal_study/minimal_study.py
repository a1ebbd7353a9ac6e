"""A minimal study on the scene-sim core: two agents take turns, then the run is saved.

It is the "add a study in 5 steps" example of docs/design.md, and the tests run it.
"""

from __future__ import annotations

import argparse
import asyncio

from scene_sim import Message, NoOp, Study
from scene_sim.agents import ChatAgent, Decision
from scene_sim.model import ConversationModel
from scene_sim.plugins import CommandGroup
from scene_sim.rundir import RunDir
from scene_sim.world import render_transcript


class Speaker(ChatAgent):
    """Says its line each turn while it has lines left; a model string other than 'scripted' asks that model."""

    role = "speaker"

    def __init__(self, model: TakeTurns, name: str, lines: list[str], **kwargs: object) -> None:
        super().__init__(model, name, **kwargs)
        self.lines = list(lines)

    def observe(self, reason: str) -> str:
        return render_transcript(self.model.world.turns, me=self.name)

    def render(self, view: str) -> tuple[str, list[dict[str, str]]]:
        return f"You are {self.name}. Chat briefly.", [{"role": "user", "content": view or "(no messages yet)"}]

    async def decide(self, view: str, system: str, messages: list[dict[str, str]]) -> Decision:
        if self.llm is not None:
            return await super().decide(view, system, messages)
        return Decision(Message(self.lines.pop(0)) if self.lines else NoOp())


class TakeTurns(ConversationModel):
    """Two speakers alternate, the first chosen by the seeded rng; two silent turns end it."""

    def __init__(self, names: tuple[str, str] = ("Ada", "Bo"), model: str = "scripted", seed: int = 0) -> None:
        super().__init__(list(names), episode_id=f"take-turns-s{seed}", models={"speakers": model}, seed=seed)
        llm = None if model == "scripted" else self.backend(model)
        self.speakers = [
            Speaker(self, n, [f"{n} here, line {i}" for i in range(3)], llm=llm, model_string=model) for n in names
        ]
        self.random.shuffle(self.speakers)
        self.silent = 0

    def start_fields(self) -> dict[str, object]:
        return {"first": self.speakers[0].name}

    async def play_tick(self) -> None:
        speaker = self.speakers[(self.tick - 1) % 2]
        turn = await self.prompt(speaker, "turn")
        self.silent = 0 if turn else self.silent + 1
        if self.silent == 2 or self.tick >= 10:
            self.end("silent" if self.silent == 2 else "max_turns")


def _run(args: argparse.Namespace) -> int:
    result = asyncio.run(TakeTurns(model=args.model, seed=args.seed).arun())
    RunDir(args.out).write_episode(result.episode_id, result.events)
    print(f"{result.episode_id}: {result.end_reason} after {result.ticks} turns")
    return 0


def register(group: CommandGroup) -> None:
    p = group.add("run", _run, help="play one two-speaker conversation into a run directory")
    p.add_argument("--model", default="scripted")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)


study = Study(name="take-turns", description="two speakers take turns (an example study)", register=register)
