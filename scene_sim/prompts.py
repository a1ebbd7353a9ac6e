"""Role prompt templates (``agents/*.md``) and their rendering.

A template has a ``=== system ===`` part (stable for the episode: role and
scenario) and a ``=== user ===`` part (the growing transcript last), with
``{{name}}`` placeholders. Users edit the files or point
``SCENE_SIM_AGENTS_DIR`` at a copy; a missing placeholder is an error, never
a silent blank.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from scene_sim._resources import content_dir
from scene_sim.errors import SceneSimError

__all__ = ["PromptTemplate", "load_template", "templates_dir"]

_PLACEHOLDER = re.compile(r"\{\{\s*([a-zA-Z_][\w]*)\s*\}\}")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def templates_dir() -> Path:
    """The folder role templates are read from."""
    override = os.environ.get("SCENE_SIM_AGENTS_DIR")
    return Path(override) if override else content_dir("agents")


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed role template."""

    name: str
    system: str
    user: str

    @cached_property
    def placeholders(self) -> set[str]:
        """Every placeholder the template uses."""
        return set(_PLACEHOLDER.findall(self.system)) | set(_PLACEHOLDER.findall(self.user))

    def render(self, **values: object) -> tuple[str, str]:
        """Fill the placeholders; returns ``(system, user)``.

        Raises:
            SceneSimError: when a placeholder has no value.

        """
        missing = self.placeholders - values.keys()
        if missing:
            raise SceneSimError(f"template '{self.name}' needs values for: {', '.join(sorted(missing))}")

        def fill(text: str) -> str:
            return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)

        return fill(self.system), fill(self.user)


@cache
def _load(path: Path) -> PromptTemplate:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SceneSimError(f"{path}: prompt template not found") from None
    text = _COMMENT.sub("", text)
    parts = re.split(r"^=== (system|user) ===[ \t]*$\n?", text, flags=re.MULTILINE)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    if "system" not in sections or "user" not in sections:
        raise SceneSimError(f"{path}: a template needs '=== system ===' and '=== user ===' sections")
    return PromptTemplate(path.stem, sections["system"].strip(), sections["user"].strip())


def load_template(name: str) -> PromptTemplate:
    """Load ``agents/<name>.md`` (cached)."""
    return _load_named(name, os.environ.get("SCENE_SIM_AGENTS_DIR"))


@cache
def _load_named(name: str, override: str | None) -> PromptTemplate:
    # every prompt renders a template: resolve the folder once per name and override
    return _load(templates_dir() / f"{name}.md")
