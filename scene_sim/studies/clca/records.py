"""The CLCA pipeline's records (DESIGN.md, "CLCA contracts"), as pydantic models.

Each stage reads the previous stage's JSONL file into these models and
writes its own; extra keys are allowed on disk (``extra="allow"``), so a
record written by a newer version still loads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "Choice",
    "Dialogue",
    "Intent",
    "Judgement",
    "MetaJudgement",
    "Participant",
    "Scenario",
    "Task",
    "Turn",
]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class Participant(_Record):
    """One side of a social task: public profile (name, age, gender, occupation) and private goal and secret."""

    name: str = Field(min_length=1)
    age: int | str
    gender: str = Field(min_length=1)
    occupation: str = Field(min_length=1)
    goal: str = Field(min_length=1)
    secret: str = Field(min_length=1)

    @field_validator("name", "gender", "occupation", "goal", "secret")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    def background(self) -> str:
        """The public ``age / gender`` line (seed 004 Table 7)."""
        return f"{self.age} / {self.gender}"

    def public(self) -> str:
        """What both participants see of this one: name, age / gender, occupation."""
        return f"{self.name}: {self.background()}, {self.occupation}"


class Task(_Record):
    """A generic (culture-free) two-person social task."""

    id: str = Field(min_length=1)
    setting: str = Field(min_length=1)
    participants: list[Participant] = Field(min_length=2, max_length=2)


class Scenario(_Record):
    """A task adapted to a culture (``scenarios.jsonl``)."""

    id: str
    culture: str
    source_id: str
    setting: str = Field(min_length=1)
    participants: list[Participant] = Field(min_length=2, max_length=2)


class Turn(_Record):
    """One dialogue turn."""

    speaker: str
    text: str


class Dialogue(_Record):
    """A role-played dialogue (``dialogues.jsonl``)."""

    id: str
    scenario_id: str
    culture: str
    rep: int
    turns: list[Turn]
    end_reason: str


Confidence = Literal["very confident", "confident", "not sure"]


class Choice(_Record):
    """A step-1 judgement: the choice and the verbalised confidence (None where unparsed)."""

    choice: str | None
    confidence: Confidence | None


class MetaJudgement(_Record):
    """The step-2 meta-judgement."""

    label: Literal["good", "bad"] | None
    confidence: Confidence | None
    critic: str | None


class Judgement(_Record):
    """The filter's record for one dialogue (``judgements.jsonl``)."""

    dialogue_id: str
    culture_alignment: Choice
    quality: Choice
    meta: MetaJudgement
    kept: bool


class Intent(_Record):
    """The intent of one turn of a kept dialogue (``intents.jsonl``)."""

    dialogue_id: str
    turn: int
    speaker: str
    intent: str
    cultural_reason: str | None
