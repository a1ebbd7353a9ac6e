"""``agents`` mode: two speaker agents play the dialogue on the core's conversation model.

The turn schedule is the seeded plan of :func:`policies.plan_dialogue`: who
speaks when, and at which turn the second speaker slips. A scripted speaker
says its planned line (its intended labels go into the turn's hidden meta); a
model-driven speaker is told, privately and per turn, what to do: follow the
norm, slip at the seeded turn, notice and sanction the slip in the norm's way,
then repair it (``v2r``) or stay dismissive (``violation``). The played chat
becomes the same draft the generator mode writes, so both modes share the
annotation and the record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from scene_sim.actions import Message
from scene_sim.agents import ChatAgent, Decision
from scene_sim.model import ConversationModel
from scene_sim.prompts import load_template
from scene_sim.studies.normgenesis import policies
from scene_sim.studies.normgenesis.norms import Norm
from scene_sim.studies.normgenesis.records import Situation
from scene_sim.studies.normgenesis.roles import DraftTurn

__all__ = ["NormPlay", "SpeakerAgent", "instruction_for"]

_REPAIR_ACTS = {"apology", "justify", "empathy_r", "offer"}


def instruction_for(act: str, kind: str) -> str:
    """The private per-turn instruction for a model-driven speaker whose plan says ``act``."""
    if act in ("slip", "slip2"):
        if act == "slip2":
            return "Do not apologise or repair anything; stay dismissive in this message."
        return (
            "In this message, slip: break the norm in a way that feels natural for you (for example "
            "dismissive, curt or rude). Do not say that you are breaking a norm."
        )
    if act in ("sanction", "sanction_q"):
        return (
            "The other person just broke the norm. Notice it and sanction it the way people in this culture "
            "would: a pointed remark, a reproach or a pointed question."
        )
    if act in _REPAIR_ACTS:
        return (
            "Repair what you did earlier: apologise, explain, show empathy or offer to make up for it "
            "(more than one if it is natural)."
        )
    if kind == "v2r" and act in ("question", "accept", "accept_ack"):
        return "Respond to the other person's repair; accept it if it is sincere."
    return "Follow the norm in this message."


class SpeakerAgent(ChatAgent):
    """One speaker: scripted (``llm`` None) or model-driven."""

    role: ClassVar[str] = "speaker"

    def __init__(self, model: Any, name: str, other: str, *, llm: Any = None, model_string: str = "") -> None:
        super().__init__(model, name, llm=llm, model_string=model_string)
        self.other = other
        self.current: policies.PlannedTurn | None = None

    def observe(self, reason: str) -> dict[str, Any]:
        """The chat so far and this turn's plan."""
        return {"turns": list(self.model.world.turns), "plan": self.current}

    def render(self, view: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
        """The speaker prompt (``agents/normgenesis/speaker.md``)."""
        host: NormPlay = self.model
        plan = view["plan"]
        transcript = "\n".join(f"{t.actor}: {t.content}" for t in view["turns"] if t.kind == "message")
        system, user = load_template("normgenesis/speaker").render(
            name=self.name,
            other=self.other,
            lang=host.norm.lang,
            scenario=host.sit.scenario,
            situation=host.sit.situation,
            norm=host.norm.norm,
            instruction=instruction_for(plan.act if plan else "", host.kind),
            transcript=transcript or "(nothing yet: you open the conversation)",
        )
        return system, [{"role": "user", "content": user}]

    async def decide(self, view: Any, system: str, messages: list[dict[str, str]]) -> Decision:
        """A scripted speaker says its planned line; a model-driven one asks its model."""
        plan = view["plan"]
        if self.llm is None:
            meta = {"act": plan.act, "adherence": plan.adherence, "reaction": plan.reaction, "why": plan.justification}
            return Decision(Message(plan.text), meta)
        return await super().decide(view, system, messages)


class NormPlay(ConversationModel):
    """A two-speaker dialogue of one type for one norm and situation.

    Args:
        norm: the norm.
        sit: the refined scenario-situation pair.
        kind: ``adherence``, ``violation`` or ``v2r``.
        item_id: the item (episode id; seeds the plan).
        speaker_models: the two speakers' model strings (``scripted`` for the offline policy).
        seed: the run's seed.
        context: the run's backends.
        on_event: event callback.

    """

    def __init__(
        self,
        norm: Norm,
        sit: Situation,
        kind: str,
        *,
        item_id: str,
        speaker_models: tuple[str, str],
        seed: int = 0,
        context: Any = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        names = policies.speakers(norm.lang)
        models = {"speaker_a": speaker_models[0], "speaker_b": speaker_models[1]}
        super().__init__(
            list(names), episode_id=item_id, models=models, seed=seed, reactions=False, context=context,
            on_event=on_event,
        )  # fmt: skip
        self.norm = norm
        self.sit = sit
        self.kind = kind
        self.plan = policies.plan_dialogue(norm, kind, seed=seed, item_id=item_id)
        self.speakers: list[SpeakerAgent] = []
        for i, model_string in enumerate(speaker_models):
            llm = None if model_string.split("?")[0] in ("scripted", "scripted/speaker") else self.backend(model_string)
            self.speakers.append(SpeakerAgent(self, names[i], names[1 - i], llm=llm, model_string=model_string))

    def start_fields(self) -> dict[str, Any]:
        """The norm, the type and the seeded slip turn."""
        slip = next((i + 1 for i, p in enumerate(self.plan) if p.adherence == "violates"), None)
        return {"norm_id": self.norm.id, "lang": self.norm.lang, "type": self.kind, "slip_turn": slip}

    async def play_tick(self) -> None:
        """One planned turn."""
        if self.tick > len(self.plan):
            self.end("max_turns")
            return
        step = self.plan[self.tick - 1]
        agent = self.speakers[step.speaker]
        agent.current = step
        await self.prompt(agent, "turn")
        if self.tick == len(self.plan):
            self.end("max_turns")

    def draft(self) -> list[DraftTurn]:
        """The played chat as a dialogue draft (scripted turns keep their intended labels)."""
        out = []
        for turn in self.world.turns:
            if turn.kind != "message":
                continue
            meta = turn.meta
            plan = None
            if "act" in meta:
                plan = policies.PlannedTurn(
                    0, meta["act"], turn.content, meta["adherence"], meta["reaction"], meta["why"]
                )
            out.append(DraftTurn(turn.actor, turn.content, plan))
        return out
