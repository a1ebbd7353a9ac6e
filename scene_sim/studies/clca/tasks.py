"""Generic two-person social tasks: the shipped bank and a loader for Sotopia's profile JSON.

``builtin`` is ``worlds/clca/tasks.json``: ``{"tasks": [{id, setting,
participants: [{name, age, gender, occupation, goal, secret}] x2}]}``.
A user's own file in that shape works the same way. Sotopia's data (its
``EnvironmentProfile`` and ``AgentProfile`` records, exported as JSON) is
read from a file ``{"environments": [...], "agents": [...]}``: each
environment's ``scenario`` becomes the setting and its two ``agent_goals``
the goals; the agents are paired in file order (environment i gets agents
2i and 2i+1, wrapping round), their ``secret`` kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scene_sim._resources import content_dir
from scene_sim.errors import SceneSimError
from scene_sim.studies.clca.cultures import read_json, validation_line
from scene_sim.studies.clca.records import Task

__all__ = ["builtin_tasks_path", "load_tasks"]

_TAG = re.compile(r"</?[a-z_]+>")


def builtin_tasks_path() -> Path:
    """The shipped bank."""
    return content_dir("worlds") / "clca" / "tasks.json"


def load_tasks(source: str | Path = "builtin", *, limit: int | None = None) -> list[Task]:
    """Load tasks from ``builtin`` or a file (our format or Sotopia's).

    Raises:
        SceneSimError: naming the file and the bad field.

    """
    file = builtin_tasks_path() if str(source) == "builtin" else Path(source)
    data = read_json(file)
    if isinstance(data, dict) and "environments" in data:
        tasks = _from_sotopia(file, data)
    else:
        items = data.get("tasks") if isinstance(data, dict) else data
        if not isinstance(items, list) or not items:
            raise SceneSimError(f"{file}: tasks: expected a non-empty list of tasks (or Sotopia's 'environments')")
        tasks = []
        for i, item in enumerate(items):
            try:
                tasks.append(Task.model_validate(item))
            except ValidationError as exc:
                raise SceneSimError(validation_line(file, exc, f"tasks[{i}]")) from None
    seen: set[str] = set()
    for i, task in enumerate(tasks):
        if task.id in seen:
            raise SceneSimError(f"{file}: tasks[{i}].id: duplicate task id '{task.id}'")
        seen.add(task.id)
    if limit is not None:
        if limit < 1:
            raise SceneSimError(f"--limit must be at least 1, got {limit}")
        tasks = tasks[:limit]
    return tasks


def _clean(text: Any) -> str:
    # Sotopia wraps hidden parts of goals in tags such as <extra_info>; keep the text, drop the tags
    return _TAG.sub("", str(text or "")).strip()


def _from_sotopia(file: Path, data: dict[str, Any]) -> list[Task]:
    envs, agents = data.get("environments"), data.get("agents")
    if not isinstance(envs, list) or not envs:
        raise SceneSimError(f"{file}: environments: expected a non-empty list of Sotopia environment profiles")
    if not isinstance(agents, list) or len(agents) < 2:
        raise SceneSimError(f"{file}: agents: expected a list of at least two Sotopia agent profiles")
    people = []
    for j, a in enumerate(agents):
        if not isinstance(a, dict):
            raise SceneSimError(f"{file}: agents[{j}]: expected an object")
        for key in ("first_name", "age", "gender", "occupation"):
            if key not in a:
                raise SceneSimError(f"{file}: agents[{j}].{key}: field required")
        people.append(a)
    tasks: list[Task] = []
    for i, env in enumerate(envs):
        if not isinstance(env, dict):
            raise SceneSimError(f"{file}: environments[{i}]: expected an object")
        goals = env.get("agent_goals")
        if not isinstance(goals, list) or len(goals) != 2:
            raise SceneSimError(f"{file}: environments[{i}].agent_goals: expected exactly two goals")
        if not str(env.get("scenario") or "").strip():
            raise SceneSimError(f"{file}: environments[{i}].scenario: field required")
        pair = (people[(2 * i) % len(people)], people[(2 * i + 1) % len(people)])
        parts = [
            {
                "name": f"{p['first_name']} {p.get('last_name', '')}".strip(),
                "age": p["age"],
                "gender": p["gender"],
                "occupation": p["occupation"],
                "goal": _clean(goal),
                "secret": _clean(p.get("secret")) or "None",
            }
            for p, goal in zip(pair, goals, strict=True)
        ]
        raw = {"id": str(env.get("pk") or env.get("codename") or f"env{i}"), "setting": _clean(env["scenario"])}
        try:
            tasks.append(Task.model_validate({**raw, "participants": parts}))
        except ValidationError as exc:
            raise SceneSimError(validation_line(file, exc, f"environments[{i}]")) from None
    return tasks
