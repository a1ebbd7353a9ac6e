"""``clca roleplay``: each adapted scenario played by two role-playing agents in a Mesa model.

:class:`RoleplayModel` is a :class:`~scene_sim.model.ConversationModel`
with two :class:`RolePlayer` agents. Turns alternate; who speaks first is
a seeded choice; a role-player may ``leave`` (from ``min_turns`` on), which
ends the dialogue; otherwise it ends at ``max_turns``. Each agent holds
only its own :class:`~scene_sim.studies.clca.records.Participant` and the
other's public profile, so no prompt can show it the other's goal or
secret (privacy by construction; the tests check the logged prompts).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from scene_sim._json import dumps_lines
from scene_sim.actions import Message, NoOp, extract_json
from scene_sim.agents import ChatAgent, Decision, ask_until_valid
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.jobs import JobsSummary
from scene_sim.model import ConversationModel
from scene_sim.prompts import load_template
from scene_sim.records import RecordFile
from scene_sim.studies.clca.calls import is_scripted, item_seed
from scene_sim.studies.clca.cultures import Culture
from scene_sim.studies.clca.policies import scripted_roleplay
from scene_sim.studies.clca.records import Dialogue, Participant, Scenario, Turn
from scene_sim.studies.clca.steps import Output, Runner

__all__ = ["ROLEPLAY_SCHEMA", "RolePlayer", "RoleplayModel", "RoleplaySettings", "make_worker", "run_roleplay"]

#: The role-player's structured answer (Sotopia's action types, restricted to speak and leave).
ROLEPLAY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"action": {"type": "string", "enum": ["speak", "leave"]}, "argument": {"type": "string"}},
    "required": ["action", "argument"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class PublicProfile:
    """What one participant may know of the other."""

    name: str
    background: str
    occupation: str


@dataclass(frozen=True)
class RoleView:
    """A role-player's view for one prompt: shared setting, both public profiles, its own goal and secret."""

    me: Participant
    other: PublicProfile
    setting: str
    culture: Culture
    turn: int
    transcript: tuple[tuple[str, str], ...]
    can_leave: bool


@dataclass(frozen=True)
class RoleplaySettings:
    """How dialogues are played (the paper leaves all of these open; see docs/clca.md)."""

    reps: int = 2
    max_turns: int = 20
    min_turns: int = 2
    temperature: float | None = 0.7
    max_tokens: int = 300

    def __post_init__(self) -> None:
        if self.reps < 1:
            raise SceneSimError(f"--reps must be at least 1, got {self.reps}")
        if self.max_turns < 1:
            raise SceneSimError(f"--max-turns must be at least 1, got {self.max_turns}")
        if self.min_turns < 0:
            raise SceneSimError(f"min_turns must be 0 or more, got {self.min_turns}")


class RolePlayer(ChatAgent):
    """One participant, played by a model or by the scripted policy (``llm`` None)."""

    role: ClassVar[str] = "roleplayer"

    def __init__(
        self, model: RoleplayModel, me: Participant, other: PublicProfile, *, llm: Any, model_string: str
    ) -> None:
        super().__init__(model, me.name, llm=llm, model_string=model_string)
        self.me = me
        self.other = other
        self.left = False

    def observe(self, reason: str) -> RoleView:
        """Own profile, the other's public profile, the transcript so far."""
        m: RoleplayModel = self.model
        transcript = tuple((t.actor, t.content) for t in m.world.turns if t.kind == "message")
        return RoleView(
            me=self.me,
            other=self.other,
            setting=m.setting,
            culture=m.culture,
            turn=m.tick,
            transcript=transcript,
            can_leave=len(transcript) >= m.settings.min_turns,
        )

    def render(self, view: RoleView) -> tuple[str, list[dict[str, str]]]:
        """The ``agents/clca/roleplay.md`` prompt."""
        lines = "\n".join(f"{s}: {t}" for s, t in view.transcript) or "(the conversation has not started yet)"
        system, user = load_template("clca/roleplay").render(
            name=view.me.name,
            other=view.other.name,
            culture=view.culture.name,
            hofstede=view.culture.hofstede,
            inglehart_welzel=view.culture.inglehart_welzel,
            setting=view.setting,
            own_background=f"{view.me.background()}, {view.me.occupation}",
            other_background=f"{view.other.background}, {view.other.occupation}",
            goal=view.me.goal,
            secret=view.me.secret,
            transcript=lines,
            turn=view.turn,
            actions='"speak" and "leave"' if view.can_leave else '"speak"',
        )
        return system, [{"role": "user", "content": user}]

    async def decide(self, view: RoleView, system: str, messages: list[dict[str, str]]) -> Decision:
        """Speak or leave."""
        if self.llm is None:
            action, text = scripted_roleplay(
                view.me, view.other.name, list(view.transcript), can_leave=view.can_leave, seed=self.model.seed or 0
            )
            return _decision(action, text)
        if self.llm.capabilities.scores_choices:
            return await self._local(view, system, messages)
        allowed = ("speak", "leave") if view.can_leave else ("speak",)

        def read(response: Any) -> tuple[Decision | None, str | None]:
            data = response.parsed
            if not isinstance(data, dict):
                try:
                    data = extract_json(str(response.text or ""))
                except ValueError as exc:
                    return None, str(exc)
            action = str(data.get("action", "")).strip().lower()
            text = str(data.get("argument") or "").strip()
            if action not in allowed:
                return None, f"action must be one of {', '.join(allowed)}"
            if action == "speak" and not text:
                return None, "'speak' needs a non-empty argument"
            return _decision(action, text), None

        decision = await ask_until_valid(
            self,
            system,
            messages,
            read,
            what="action",
            schema=ROLEPLAY_SCHEMA,
            schema_name="roleplay_action",
            max_tokens=self.model.settings.max_tokens,
        )
        return decision or Decision(NoOp(), {"leave": False}, parse_failure=True)

    async def _local(self, view: RoleView, system: str, messages: list[dict[str, str]]) -> Decision:
        # A local model scores the allowed actions (valid by construction), then writes the line.
        if view.can_leave:
            options = ('{"action": "speak"', '{"action": "leave"')
            picked = await self.model.call_llm(self, system, messages, reason="choice", choices=options, max_tokens=8)
            if picked.text == options[1]:
                return _decision("leave", "")
        prefill = '{"action": "speak", "argument": "'
        response = await self.model.call_llm(
            self,
            system,
            [*messages, {"role": "assistant", "content": prefill}],
            reason="content",
            max_tokens=min(80, self.model.settings.max_tokens),
            stop=('"', "\n"),
        )
        text = str(response.text or "").split('"')[0].strip()
        return _decision("speak", text) if text else Decision(NoOp(), {"leave": False}, parse_failure=True)

    def on_posted(self, turn: Any, decision: Decision) -> None:
        """Remember a ``leave``."""
        self.left = bool(decision.meta.get("leave"))


def _decision(action: str, text: str) -> Decision:
    if action == "leave":
        return Decision(NoOp(), {"leave": True})
    return Decision(Message(content=text), {"leave": False})


class RoleplayModel(ConversationModel):
    """One dialogue of a culture-adapted scenario between two role-players.

    Args:
        scenario: the adapted scenario (kept as ``scene_record``: Mesa owns ``Model.scenario``).
        culture: its culture.
        model_string: the role-players' model (``scripted`` for the offline policy).
        settings: turn limit, decoding.
        **kwargs: :class:`ConversationModel`'s keyword arguments (episode_id, seed, rep, context, ...).

    """

    def __init__(
        self,
        scenario: Scenario,
        culture: Culture,
        model_string: str,
        *,
        settings: RoleplaySettings | None = None,
        **kwargs: Any,
    ) -> None:
        names = [p.name for p in scenario.participants]
        if len(set(names)) != 2:
            raise SceneSimError(f"scenario {scenario.id}: the two participants need different names")
        self.settings = settings or RoleplaySettings()
        super().__init__(
            names,
            models={"roleplayer": model_string},
            reactions=False,
            temperature=None if is_scripted(model_string) else self.settings.temperature,
            **kwargs,
        )
        self.scene_record = scenario
        self.setting = scenario.setting
        self.culture = culture
        llm = None if is_scripted(model_string) else self.backend(model_string)
        a, b = scenario.participants
        self.players = [
            RolePlayer(
                self, a, PublicProfile(b.name, b.background(), b.occupation), llm=llm, model_string=model_string
            ),
            RolePlayer(
                self, b, PublicProfile(a.name, a.background(), a.occupation), llm=llm, model_string=model_string
            ),
        ]
        first = int(self.random.random() < 0.5)  # seeded: who speaks first
        self.order = [self.players[first], self.players[1 - first]]
        self._failures = 0

    def start_fields(self) -> dict[str, Any]:
        """``scenario_id``, culture, participants, first speaker, limits."""
        return {
            "scenario_id": self.scene_record.id,
            "culture": self.culture.name,
            "participants": [p.name for p in self.scene_record.participants],
            "first_speaker": self.order[0].name,
            "max_turns": self.settings.max_turns,
        }

    async def play_tick(self) -> None:
        """One turn: the next speaker speaks or leaves."""
        self.log.emit("turn_start", self.tick)
        agent = self.order[(self.tick - 1) % 2]
        turn = await self.prompt(agent, "turn")
        if agent.left:
            self.end("leave", by=agent.name)
            return
        self._failures = 0 if turn is not None else self._failures + 1
        if self._failures >= 2:
            self.end("parse_failure")
        elif self.tick >= self.settings.max_turns:
            self.end("max_turns")

    def dialogue(self) -> Dialogue:
        """The dialogue record of the finished episode."""
        turns = [Turn(speaker=t.actor, text=t.content) for t in self.world.turns if t.kind == "message"]
        return Dialogue(
            id=self.episode_id,
            scenario_id=self.scene_record.id,
            culture=self.culture.name,
            rep=self.rep,
            turns=turns,
            end_reason=self.end_reason or "",
        )


def make_worker(
    context: RunContext | None, *, model: str, settings: RoleplaySettings, seed: int
) -> Callable[[tuple[Scenario, int, Culture | None]], Awaitable[Output]]:
    """The work of one (scenario, rep): its event log and dialogue record, written by the driver."""

    async def compute(item: tuple[Scenario, int, Culture | None]) -> Output:
        scenario, rep, culture = item
        if culture is None:
            raise SceneSimError(f"scenario {scenario.id}: unknown culture '{scenario.culture}'")
        episode = RoleplayModel(
            scenario,
            culture,
            model,
            settings=settings,
            episode_id=f"{scenario.id}-r{rep}",
            seed=item_seed(seed, scenario.id, rep),
            rep=rep,
            context=context,
        )
        try:
            await episode.arun()
            result = episode.result()
            record = episode.dialogue()
        finally:
            episode.dispose()
        log = (result.episode_id, dumps_lines(list(result.events)))
        if result.end_reason in ("error", "budget"):  # the log is kept; the dialogue is retried by a re-run
            return Output(episode=log, error=f"ended with '{result.end_reason}' (re-run to retry)")
        return Output(records=(("dialogues.jsonl", record.model_dump()),), episode=log)

    return compute


async def run_roleplay(
    out: Path,
    model: str,
    cultures: dict[str, Culture],
    *,
    settings: RoleplaySettings,
    seed: int,
    context: RunContext | None,
    concurrency: int = 16,
    quiet: bool = False,
    budget_usd: float | None = None,
    runner: Runner | None = None,
) -> JobsSummary:
    """Play every scenario of ``out/scenarios.jsonl`` ``settings.reps`` times (skipping dialogues done)."""
    scenarios = [Scenario.model_validate(r) for r in RecordFile(out / "scenarios.jsonl")]
    done = RecordFile(out / "dialogues.jsonl").ids("id")
    todo = [
        (s, rep, cultures.get(s.culture))
        for s in scenarios
        for rep in range(settings.reps)
        if f"{s.id}-r{rep}" not in done
    ]
    return await (runner or Runner()).run(
        out,
        todo,
        "scene_sim.studies.clca.roleplay:make_worker",
        {"model": model, "settings": settings, "seed": seed},
        context=context,
        concurrency=concurrency,
        budget_usd=budget_usd,
        label="dialogues",
        already_done=len(done),
        quiet=quiet,
        name=lambda it: f"{it[0].id}-r{it[1]}",
        counts=lambda _it: not is_scripted(model),
    )
