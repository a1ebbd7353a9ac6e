"""A person as the subject: commands, the non-blocking reader, and a game through a pseudo-terminal."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from scene_sim.actions import Message, NoOp, React
from scene_sim.rundir import RunDir
from scene_sim.studies.scene._catalog import scenario_source, taxonomy_at
from scene_sim.studies.scene.play import QUIT_ERROR, AsyncLineReader, parse_command, play_episode
from scene_sim.world import ChatTurn

from .eventlog_rules import check_episode

SCENARIO = "bug_report__concise_answer_norm__address_explicit__silent_ignore__p1"
TURNS = (
    ChatTurn(1, "Kenji", "message", "5xx rate at 12%"),
    ChatTurn(2, "Priya", "react", "👀", target_turn_id=1),
    ChatTurn(3, "Marisol", "message", "rollback?"),
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


# -- commands --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "kind", "action"),
    [
        ("hello all", "message", Message("hello all")),
        ("  spaced out  ", "message", Message("spaced out")),
        ("//slash first", "message", Message("/slash first")),
        ("/react 3 👍", "react", React("👍", 3)),
        ("/react t1 +1", "react", React("👍", 1)),
        ("/r 1 heart", "react", React("❤️", 1)),
        ("/pass", "pass", NoOp()),
        ("/PASS", "pass", NoOp()),
        ("/quit", "quit", None),
        (None, "quit", None),
        ("/help", "help", None),
    ],
)
def test_commands(line, kind, action):
    cmd = parse_command(line, TURNS)
    assert cmd.kind == kind
    assert cmd.action == action


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("", "empty line"),
        ("   ", "empty line"),
        ("/react 99 👍", "no turn t99"),
        ("/react 2 👍", "is a reaction"),
        ("/react x 👍", "not a turn id"),
        ("/react 1", "usage"),
        ("/react 1 wow", "not an emoji"),
        ("/dance", "unknown command /dance"),
        ("x" * 2001, "too long"),
    ],
)
def test_bad_commands_give_a_one_line_hint(line, hint):
    cmd = parse_command(line, TURNS)
    assert cmd.kind == "invalid" and cmd.action is None
    assert hint in cmd.hint and "\n" not in cmd.hint


def test_no_reactions_in_a_chat_without_them():
    cmd = parse_command("/react 1 👍", TURNS, reactions=False)
    assert cmd.kind == "invalid" and "no reactions" in cmd.hint


def test_chat_text_is_never_rich_markup():
    from scene_sim.studies.scene.play import PlayerChat

    out = io.StringIO()
    chat = PlayerChat(Console(file=out, width=200, color_system=None))
    chat(
        {"kind": "action", "actor": "Kenji", "action": "message", "content": "[bold red]hi[/] [link=x]y", "turn_id": 1}
    )
    assert "[t1] Kenji: [bold red]hi[/] [link=x]y" in out.getvalue()


# -- the reader -----------------------------------------------------------------------------------------
async def test_reader_does_not_block_the_event_loop(loop_ticks):
    r, w = os.pipe()
    reader = AsyncLineReader(os.fdopen(r, "r", encoding="utf-8"))

    def write_later() -> None:
        time.sleep(0.3)
        os.write(w, b"first line\nsecond ")
        time.sleep(0.1)
        os.write(w, "line 👍\n".encode())
        os.write(w, b"no newline at the end")
        os.close(w)

    threading.Thread(target=write_later, daemon=True).start()
    async with loop_ticks(0.01) as ticks:
        assert await asyncio.wait_for(reader.readline(), 10) == "first line"
        assert ticks.count >= 5  # the loop kept running while the reader waited
    assert await asyncio.wait_for(reader.readline(), 10) == "second line 👍"
    assert await asyncio.wait_for(reader.readline(), 10) == "no newline at the end"
    assert await asyncio.wait_for(reader.readline(), 10) is None
    assert await reader.readline() is None


async def test_a_cancelled_read_is_picked_up_by_the_next_one():
    r, w = os.pipe()
    reader = AsyncLineReader(os.fdopen(r, "r", encoding="utf-8"))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readline(), 0.1)
    threads = threading.active_count()
    os.write(w, b"late\n")
    assert await asyncio.wait_for(reader.readline(), 10) == "late"
    assert threading.active_count() <= threads  # no second reader thread was started
    os.close(w)


# -- a game, in process ------------------------------------------------------------------------------------
def _subject_actions(rd: RunDir) -> tuple[list[dict], list[dict]]:
    (eid,) = rd.episode_ids()
    events = [json.loads(x) for x in rd.episode_path(eid).read_text(encoding="utf-8").splitlines()]
    subject = events[0]["subject"]
    return events, [e for e in events if e["kind"] == "action" and e["actor"] == subject]


def _check_log(events: list[dict], max_turns: int) -> None:
    start = events[0]
    assert start["models"]["subject"] == "human"
    assert [e["seq"] for e in events] == list(range(len(events)))
    sc = scenario_source().get(start["scenario_id"])
    personas = {c.name for c in sc.scaffold.channel.cast}
    assert check_episode(events, personas=personas, subject=start["subject"], max_turns=max_turns) == []
    # every subject prompt is answered by the subject's action, next
    for i, e in enumerate(events):
        if e["kind"] == "prompt" and e["role"] == "subject":
            nxt = next(x for x in events[i + 1 :] if x["kind"] in ("action", "prompt"))
            assert nxt["kind"] == "action" and nxt["actor"] == start["subject"], e["seq"]
    end = events[-1]
    assert end["kind"] == "episode_end" and end["reason"] == "error" and end["error"] == QUIT_ERROR


async def test_play_in_process_logs_a_normal_episode_and_hides_hidden_fields(tmp_path):
    typed = "hello all\n/react 1 👍\n/react 99 👍\n/nope\n\n/pass\n"  # then end of input
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    outcome = await play_episode(
        tmp_path / "run",
        scenario=SCENARIO,
        judge=None,
        cache_mode="off",
        stdin=io.StringIO(typed),
        console=console,
    )
    assert outcome.result.end_reason == "error"
    events, mine = _subject_actions(outcome.run_dir)
    assert [(a["action"], a["content"], a["target_turn_id"]) for a in mine] == [
        ("message", "hello all", None),
        ("react", "👍", 1),
        ("no-op", "", None),
        ("no-op", "", None),
    ]
    assert mine[-1]["meta"] == {"quit": True, "by": "eof"}
    _check_log(events, max_turns=8)
    run = json.loads((outcome.run_dir.path / "run.json").read_text())
    assert run["command"] == "play" and run["spec"]["models"]["subject"] == "human"

    shown = out.getvalue()
    assert "there is no turn t99" in shown and "unknown command /nope" in shown and "empty line" in shown
    assert "someone just posted; your turn" in shown and "you: hello all" in shown and "you reacted 👍 to t1" in shown
    # internal names (prompt reasons, end reasons) are for the analysis, not the player
    for name in ("after_action", "floor_open", "max_turns", "subject_silent", "post_sanction", "fidelity_fail"):
        assert name not in shown, name
    # the player sees what a subject sees, never the hidden side
    sc = scenario_source().get(SCENARIO)
    hidden = [taxonomy_at(None).norm(sc.tuple.norm).norm_text, *(p.outline for p in sc.hidden.personas)]
    for text in hidden:
        assert text not in shown
    for word in ("precedent", "opening", "elicitor", "DEMONSTRATION", "BREACH", "SANCTION", "intent"):
        assert word not in shown, word


# -- a game through a pseudo-terminal -------------------------------------------------------------------------
class _Pty:
    """A child process on a pseudo-terminal, with a tiny expect."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        import pty

        self.master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}
        env.pop("SCENE_SIM_DEBUG", None)
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True)
        os.close(slave)
        self.raw = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def _pump(self, timeout: float) -> str:
        """Read what is there: ``data``, ``idle`` (nothing within ``timeout``) or ``eof``."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return "idle"
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return "eof"
        if not chunk:
            return "eof"
        self.raw += chunk
        return "data"

    def expect_count(self, needle: str, count: int, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while self.text.count(needle) < count:
            state = self._pump(0.1)
            if time.monotonic() > end or state == "eof" or (state == "idle" and self.proc.poll() is not None):
                raise AssertionError(f"waiting for {count}x {needle!r}; output so far:\n{self.text[-3000:]}")

    def send(self, data: str | bytes) -> None:
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def finish(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while True:
            state = self._pump(0.1)
            if state == "eof" or (state == "idle" and self.proc.poll() is not None):
                break
            if time.monotonic() > end:
                self.proc.kill()
                raise AssertionError(f"the game did not end; output:\n{self.text[-3000:]}")
        rc = self.proc.wait(timeout=10)
        os.close(self.master)
        return rc


@pytest.mark.slow
def test_play_through_a_pseudo_terminal(tmp_path):
    if not hasattr(os, "openpty"):
        pytest.skip("needs a POSIX pseudo-terminal")
    out = tmp_path / "run"
    game = _Pty(
        [
            sys.executable,
            "-m",
            "scene_sim.studies.scene.play",
            "--scenario",
            SCENARIO,
            "--out",
            str(out),
            "--cache",
            "off",
        ],
        cwd=tmp_path,
    )
    prompt = "Julian › "
    try:
        game.expect_count(prompt, 1)
        assert "type a message and press Enter" in game.text  # the help line
        assert "someone just posted; your turn" in game.text and "after_action" not in game.text
        game.send("hello all\n")
        game.expect_count(prompt, 2)
        game.send("/react 1 👍\n")
        game.expect_count(prompt, 3)
        game.send("/react 99 👍\n")  # a bad command: a hint and the same prompt again
        game.expect_count(prompt, 4)
        assert "there is no turn t99" in game.text
        game.send("/pass\n")
        game.expect_count(prompt, 5)
        game.send(b"\x04")  # Ctrl-D at the start of a line: end of input, i.e. quit
        rc = game.finish()
    finally:
        if game.proc.poll() is None:
            game.proc.kill()
    text = game.text
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text and "Fatal Python error" not in text
    assert "you left the chat" in text and "run directory:" in text

    rd = RunDir(out)
    events, mine = _subject_actions(rd)
    assert [(a["action"], a["content"], a["target_turn_id"]) for a in mine] == [
        ("message", "hello all", None),
        ("react", "👍", 1),
        ("no-op", "", None),
        ("no-op", "", None),
    ]
    assert mine[-1]["meta"]["quit"] is True
    _check_log(events, max_turns=8)
    if importlib.util.find_spec("scene_sim.studies.scene.analysis") is not None:
        # judged and analysed like a model's episode
        (eid,) = rd.episode_ids()
        assert rd.label_path(eid).exists()
        assert "human" in json.loads((out / "metrics.json").read_text())["models"]


@pytest.mark.parametrize(("flag", "value"), [("--max-turns", "0"), ("--seed", "-1")])
def test_play_flags_are_range_checked(flag, value, capsys):
    from scene_sim.cli import main

    assert main(["play", "--scenario", "x", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be" in err and len(err.strip().splitlines()) == 1
