"""Experiment specs (TOML) for ``scene-sim sweep``.

A spec names the subjects, the models of the other roles, the scenario
source, repetitions, turns, seeds, limits and a budget::

    name = "offline_smoke"
    subjects = ["scripted/learner", "scripted/always-message"]
    personas = "scripted"
    orchestrator = "scripted"
    judge = "scripted"
    classifier = false         # LLM judges: the per-category classifier (SCENE 5.1)

    [scenarios]
    source = "bank"            # "bank", a .json/.jsonl/folder path, or "generate"
    ids = []                   # optional subset of the source

    [run]
    reps = 2
    max_turns = 8
    seed = 0
    concurrency = 64

    [limits.anthropic]         # per provider or per model string
    max_connections = 16
    rpm = 500

    [budget]
    usd = 25.0

Every problem is reported as one line naming the file and the field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scene_sim.context import CACHE_MODES
from scene_sim.errors import SceneSimError, suggest
from scene_sim.modelspec import ModelSpec
from scene_sim.studies.scene.taxonomy import SceneTuple, Taxonomy

__all__ = ["SweepSpec", "load_spec"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _model_string(value: str) -> str:
    try:
        ModelSpec.parse(value)
    except SceneSimError as exc:
        raise ValueError(str(exc)) from None  # pydantic then names the field
    return value


ModelString = Annotated[str, AfterValidator(_model_string)]


class ScenarioSource(_Strict):
    """Where the episodes' scenarios come from."""

    source: str = "bank"
    ids: tuple[str, ...] = ()
    #: for source = "generate": how many tuples to sample, or a grid of axis
    #: values whose valid combinations are generated (``"*"`` = every value)
    tuples: int | None = Field(default=None, ge=1)
    grid: dict[str, str | list[str | int]] | None = None
    generator: str | None = None
    generator_reps: int = Field(default=1, ge=1, le=1000)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _generate_needs(self) -> ScenarioSource:
        if self.source == "generate":
            if (self.tuples is None) == (self.grid is None) or self.generator is None:
                raise ValueError("source 'generate' needs 'generator' and either 'tuples' or 'grid'")
            _model_string(self.generator)
        if self.grid is not None:
            unknown = set(self.grid) - {"event", "norm", "elicitor", "sanction", "precedent"}
            if unknown:
                axes = "event, norm, elicitor, sanction, precedent"
                raise ValueError(f"grid: unknown axis {sorted(unknown)}; axes: {axes}")
        return self

    def grid_tuples(self, taxonomy: Taxonomy) -> list[SceneTuple]:
        """The valid tuples of the grid, in a stable order (unknown values fail with a hint)."""
        grid = self.grid or {}
        axes = ("event", "norm", "elicitor", "sanction", "precedent")
        chosen: dict[str, list[Any]] = {}
        for axis in axes:
            values = list(taxonomy.axis_values(axis))
            want = grid.get(axis, "*")
            if want == "*":
                chosen[axis] = values
                continue
            picked = [want] if isinstance(want, str | int) else list(want)
            for v in picked:
                if v not in values:
                    hint = suggest(str(v), map(str, values))
                    raise SceneSimError(f"scenarios.grid.{axis}: unknown value {v!r}{hint}")
            chosen[axis] = picked
        valid = set(taxonomy.valid_tuples)
        out = [SceneTuple(*combo) for combo in itertools.product(*(chosen[a] for a in axes))]
        out = [t for t in out if t in valid]
        if not out:
            raise SceneSimError("scenarios.grid: no valid tuple in the grid (check the axes' applies_to)")
        return out


class RunSettings(_Strict):
    """How each episode runs."""

    reps: int = Field(default=1, ge=1, le=10_000)
    max_turns: int = Field(default=8, ge=1, le=200)
    seed: int = Field(default=0, ge=0)
    concurrency: int = Field(default=32, ge=1, le=4096)
    min_post_sanction_turns: int | None = Field(default=None, ge=0, le=200)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    cache: Literal["read-write", "read-only", "off"] = "read-write"
    repair_window: int = Field(default=3, ge=0, le=200)
    #: "each": one model call per persona prompt (SCENE); "joint": one call for
    #: the personas still to act in a tick, up to the first who acts
    persona_calls: Literal["each", "joint"] = "each"


class Budget(_Strict):
    """Spend limit: no new episode starts once the projected spend would pass ``usd``."""

    usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class SweepSpec(_Strict):
    """A parsed, validated experiment spec."""

    name: str = "sweep"
    description: str = ""
    subjects: tuple[ModelString, ...] = Field(min_length=1)
    personas: ModelString = "scripted"
    orchestrator: ModelString = "scripted"
    judge: str | None = "scripted"
    #: LLM judges: label with the per-category classifier of SCENE section 5.1
    classifier: bool = False
    scenarios: ScenarioSource = ScenarioSource()
    run: RunSettings = RunSettings()
    limits: dict[str, dict[str, float | int]] = Field(default_factory=dict)
    budget: Budget = Budget()

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("subjects must be distinct")
        return v

    @field_validator("judge")
    @classmethod
    def _judge(cls, v: str | None) -> str | None:
        return None if v in (None, "", "none") else _model_string(v)

    @model_validator(mode="after")
    def _classifier_needs_llm_judge(self) -> SweepSpec:
        if self.classifier and (self.judge is None or self.judge.startswith("scripted")):
            raise ValueError(f"classifier: needs an LLM judge, not '{self.judge or 'none'}'")
        return self

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: dict[str, dict[str, float | int]]) -> dict[str, dict[str, float | int]]:
        allowed = {"max_connections", "rpm", "tpm", "timeout_s", "max_attempts"}
        whole = {"max_connections", "max_attempts"}
        for key, opts in v.items():
            unknown = set(opts) - allowed
            if unknown:
                raise ValueError(f"limits.{key}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
            for name, value in opts.items():
                if isinstance(value, bool) or not value > 0 or value == float("inf"):
                    raise ValueError(f"limits.{key}.{name}: must be a positive number, got {value!r}")
                if name in whole and value != int(value):
                    raise ValueError(f"limits.{key}.{name}: must be a whole number, got {value!r}")
        return v

    def fingerprint(self) -> str:
        """A hash of everything that changes which episodes are planned or how they run."""
        data = self.model_dump(mode="json", exclude={"description", "budget", "limits"})
        data["run"].pop("concurrency", None)
        data["run"].pop("cache", None)
        if not data.get("classifier"):  # runs started before the key existed keep their fingerprint
            data.pop("classifier", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a TOML spec.

    Raises:
        SceneSimError: one line naming the file and the field at fault.

    """
    p = Path(path)
    try:
        raw: dict[str, Any] = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneSimError(f"{p}: spec file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SceneSimError(f"{p}: invalid TOML: {exc}") from None
    if raw.get("run", {}).get("cache", "read-write") not in CACHE_MODES:
        raise SceneSimError(f"{p}: run.cache: must be one of {', '.join(CACHE_MODES)}")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] != "value_error" and isinstance(value, int | float | str) and not isinstance(value, bool):
            msg += f", got {value!r}"
        raise SceneSimError(f"{p}: {loc + ': ' if loc else ''}{msg}") from None
    except SceneSimError as exc:
        raise SceneSimError(f"{p}: {exc}") from None
