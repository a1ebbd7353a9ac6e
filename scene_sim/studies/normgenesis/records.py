"""Typed records between the stages, and the contract's dialogue record (``DESIGN.md``, NormGenesis)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ADHERENCE",
    "DQ_CRITERIA",
    "REACTIONS",
    "REPAIR_ACTS",
    "RQ_CRITERIA",
    "TYPES",
    "DQScores",
    "DialogueRecord",
    "RQScores",
    "Refinement",
    "RejectedRecord",
    "Situation",
    "Turn",
]

#: Dialogue types.
TYPES = ("adherence", "violation", "v2r")
#: Turn-level norm adherence labels.
ADHERENCE = ("adheres", "violates", "not_relevant")
#: Speaker reaction labels (NR = not relevant).
REACTIONS = ("ACK", "AGR", "DIS", "APO", "THX", "EMP", "JUS", "SUG", "QUE", "CRT", "NR")
#: Repair acts: apology, empathy, explanation (justification), compensation (an offer to fix).
REPAIR_ACTS = ("APO", "EMP", "JUS", "SUG")
#: The RQ protocol's criteria (1-5 each).
RQ_CRITERIA = ("norm_alignment", "linguistic_quality", "semantic_fidelity")
#: The six dialogue-quality criteria (1-5 each).
DQ_CRITERIA = (
    "consistency",
    "naturalness",
    "relevance",
    "coherence",
    "emotion_appropriateness",
    "norm_appropriateness",
)

Score = Field(ge=1, le=5)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Situation(_Frozen):
    """A scenario-situation pair for one norm."""

    scenario: str
    situation: str


class RQScores(_Frozen):
    """One round's RQ scores (round 0 is the first draft)."""

    round: int = Field(ge=0)
    norm_alignment: int = Score
    linguistic_quality: int = Score
    semantic_fidelity: int = Score

    def passes(self, threshold: int) -> bool:
        """Whether every criterion reaches ``threshold``."""
        return min(self.norm_alignment, self.linguistic_quality, self.semantic_fidelity) >= threshold


class Refinement(_Frozen):
    """The RQ loop's trace: refinement rounds done and every round's scores."""

    rounds: int = Field(ge=0)
    scores: list[RQScores]


class Turn(_Frozen):
    """One annotated dialogue turn."""

    speaker: str
    text: str
    adherence: Literal["adheres", "violates", "not_relevant"]
    reaction: Literal["ACK", "AGR", "DIS", "APO", "THX", "EMP", "JUS", "SUG", "QUE", "CRT", "NR"]
    justification: str


class DQScores(_Frozen):
    """The six dialogue-quality scores."""

    consistency: int = Score
    naturalness: int = Score
    relevance: int = Score
    coherence: int = Score
    emotion_appropriateness: int = Score
    norm_appropriateness: int = Score

    def mean(self) -> float:
        """The mean of the six scores."""
        values = [getattr(self, c) for c in DQ_CRITERIA]
        return sum(values) / len(values)


class DialogueRecord(BaseModel):
    """A line of ``dialogues.jsonl``: the contract's fields plus ``mode``, ``dq`` and ``seed``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    lang: str
    category: str
    norm: str
    norm_id: str
    type: Literal["adherence", "violation", "v2r"]
    scenario: str
    situation: str
    exemplar_ids: list[str]
    refinement: Refinement
    turns: list[Turn]
    dq: DQScores | None = None
    mode: Literal["generator", "agents"] = "generator"
    seed: int = 0


class RejectedRecord(BaseModel):
    """A line of ``rejected.jsonl``: a planned item that could not be made valid, and why."""

    model_config = ConfigDict(extra="forbid")

    id: str
    lang: str
    category: str
    norm_id: str
    type: str
    stage: str
    reason: str
