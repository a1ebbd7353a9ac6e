"""A person as the subject: ``scene-sim play``.

The player takes the subject's seat in a SCENE episode. The chat is printed
live (rich) from the episode's events, showing only what the subject may
see: messages, reactions and the player's own silences, never a persona's
hidden script, a judge label or the norm. Whenever the subject is prompted
the player types one command:

* a plain line sends it as a message (``//text`` sends ``/text``);
* ``/react <turn_id> <emoji>`` reacts to a message (``/react 5 +1``; a few
  aliases such as ``+1``, ``heart``, ``lol``, ``eyes`` are understood);
* ``/pass`` stays silent (a no-op);
* ``/quit`` (or end of input, Ctrl-D) leaves the chat;
* ``/help`` prints the commands again.

A bad command prints a one-line hint and asks again; nothing the player
types can crash the episode. Quitting answers the pending prompt with a
no-op (``meta.quit`` set) and ends the episode with reason ``error`` and
error text ``quit by player``: the honest reason, since the episode did not
run to any of the runtime's own ends.

Input is read in a daemon thread, so the event loop keeps running (model
personas keep talking to their backends) while the player types. The
episode is logged like any other, with ``models.subject = "human"``, into a
normal run directory (:func:`scene_sim.studies.scene.runner.run_episode`), so human
baselines are judged and analysed exactly as models are.

Run it as ``scene-sim play --scenario ID`` or ``python -m scene_sim.studies.scene.play``.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import functools
import importlib.util
import io
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.text import Text

from scene_sim.actions import MAX_MESSAGE_CHARS, Action, Message, NoOp, React
from scene_sim.events import EventHandler
from scene_sim.studies.scene.agents import Decision, Subject, SubjectView
from scene_sim.world import ChatTurn

if TYPE_CHECKING:
    from scene_sim.studies.scene.runner import RunOutcome

__all__ = [
    "EMOJI_ALIASES",
    "HELP",
    "HUMAN_MODEL",
    "QUIT_ERROR",
    "AsyncLineReader",
    "Command",
    "HumanSubject",
    "PlayerChat",
    "add_play_arguments",
    "main",
    "parse_command",
    "play_episode",
    "run_play",
]

#: The subject model string of a person.
HUMAN_MODEL = "human"
#: ``episode_end.error`` when the player quits (the end reason is ``error``).
QUIT_ERROR = "quit by player"
#: The one-line help shown at the start, on ``/help`` and after a bad command.
HELP = "type a message and press Enter · /react <turn> <emoji> · /pass to stay silent · /quit to leave · /help"
#: Words accepted in place of an emoji in ``/react``.
EMOJI_ALIASES = {
    "+1": "👍",
    "thumbsup": "👍",
    "-1": "👎",
    "heart": "❤️",
    "lol": "😂",
    "joy": "😂",
    "pray": "🙏",
    "thanks": "🙏",
    "fire": "🔥",
    "eyes": "👀",
    "skull": "💀",
    "eyeroll": "🙄",
    "grimace": "😬",
    "zip": "🤐",
    "think": "🤔",
    "clap": "👏",
    "tada": "🎉",
}
_MAX_EMOJI_CHARS = 16
_REASONS = {
    "after_action": "someone just posted; your turn",
    "floor_open": "nobody else said anything this round; the floor is open",
}
#: Why an episode ended, in the player's words (the log's reason names are for the analysis).
_END_WORDS = {
    "max_turns": "the last round has been played",
    "subject_silent": "you stayed silent three rounds in a row",
    "post_sanction": "the group has reacted to you and the scene is complete",
    "fidelity_fail": "a persona gave the hidden norm away, so the scene was stopped",
    "error": "a model call failed",
    "budget": "the run's budget was reached",
}


def end_words(reason: str | None) -> str:
    """The player-facing sentence for an end reason (never the internal name)."""
    return _END_WORDS.get(str(reason), "the scene has ended")


# Actor colours as in scene_sim.studies.scene.display (the player is bold white).
_PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_red")


# -- reading input without blocking the loop -------------------------------------------------
class AsyncLineReader:
    """Reads lines from a blocking text stream without blocking the event loop.

    Each :meth:`readline` hands one blocking read to a daemon thread and
    awaits its result; at most one read is in flight (a cancelled wait leaves
    it pending and the next call picks it up), so no two threads ever read
    the stream. A stream with a real file descriptor (a terminal or a pipe)
    is read with ``os.read`` so the blocked thread holds no Python-level lock
    and cannot stall interpreter shutdown.

    Args:
        stream: the text stream (``sys.stdin`` by default).

    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self._fd: int | None = None
        if not isinstance(self.stream, io.StringIO):
            try:
                self._fd = self.stream.fileno()
            except (AttributeError, OSError, ValueError):
                self._fd = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._eof = False
        self._pending: asyncio.Future[str | None] | None = None

    async def readline(self) -> str | None:
        """The next line without its line ending, or None at end of input."""
        if self._eof:
            return None
        loop = asyncio.get_running_loop()
        fut = self._pending
        if fut is None or fut.get_loop() is not loop:
            fut = loop.create_future()
            self._pending = fut
            threading.Thread(target=self._worker, args=(loop, fut), name="scene-sim-play-input", daemon=True).start()
        line = await asyncio.shield(fut)
        self._pending = None
        if line is None:
            self._eof = True
        return line

    def _worker(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[str | None]) -> None:
        try:
            line = self._blocking_readline()
        except (OSError, ValueError):  # a closed stream reads as end of input
            line = None

        def deliver() -> None:
            if not fut.done():
                fut.set_result(line)

        with contextlib.suppress(RuntimeError):  # the loop is gone; nobody is waiting
            loop.call_soon_threadsafe(deliver)

    def _blocking_readline(self) -> str | None:
        if self._fd is None:
            line = self.stream.readline()
            return line.rstrip("\r\n") if line else None
        while "\n" not in self._buffer:
            chunk = os.read(self._fd, 4096)
            if not chunk:
                rest = self._buffer + self._decoder.decode(b"", final=True)
                self._buffer = ""
                return rest.rstrip("\r") if rest else None
            self._buffer += self._decoder.decode(chunk)
        line, _, self._buffer = self._buffer.partition("\n")
        return line.rstrip("\r")


# -- commands ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """What one typed line means.

    Attributes:
        kind: ``message``, ``react``, ``pass``, ``quit``, ``help`` or ``invalid``.
        action: the action to post (message, react, pass).
        hint: for ``invalid``, the one-line reason shown to the player.

    """

    kind: Literal["message", "react", "pass", "quit", "help", "invalid"]
    action: Action | None = None
    hint: str = ""


def parse_command(line: str | None, turns: Sequence[ChatTurn], *, reactions: bool = True) -> Command:
    """Interpret one typed line against the visible chat.

    Args:
        line: the line (None: end of input, which quits).
        turns: the chat turns the subject can see (to validate reaction targets).
        reactions: whether this chat supports reactions.

    Returns:
        The command; never raises.

    """
    if line is None:
        return Command("quit")
    text = line.strip()
    if not text:
        return Command("invalid", hint="empty line: type a message, or /pass to stay silent")
    if text.startswith("//"):
        text = text[1:]
    elif text.startswith("/"):
        word, _, rest = text[1:].partition(" ")
        word = word.lower()
        if word in ("pass", "noop", "no-op", "skip", "silent"):
            return Command("pass", NoOp())
        if word in ("quit", "exit", "q"):
            return Command("quit")
        if word in ("help", "h", "?"):
            return Command("help")
        if word in ("react", "r"):
            return _parse_react(rest.split(), turns, reactions)
        return Command("invalid", hint=f"unknown command /{word}; to send a message starting with '/', type '//'")
    if len(text) > MAX_MESSAGE_CHARS:
        return Command("invalid", hint=f"message too long ({len(text)} characters; at most {MAX_MESSAGE_CHARS})")
    return Command("message", Message(text))


def _parse_react(args: list[str], turns: Sequence[ChatTurn], reactions: bool) -> Command:
    usage = "usage: /react <turn_id> <emoji>, e.g. /react 5 👍"
    if not reactions:
        return Command("invalid", hint="this chat has no reactions; send a message or /pass")
    if len(args) != 2:
        return Command("invalid", hint=usage)
    raw_id, emoji = args
    try:
        turn_id = int(raw_id.lstrip("t"))
    except ValueError:
        return Command("invalid", hint=f"'{raw_id}' is not a turn id; {usage}")
    target = next((t for t in turns if t.turn_id == turn_id), None)
    if target is None:
        last = max((t.turn_id for t in turns), default=0)
        return Command("invalid", hint=f"there is no turn t{turn_id} (the chat has t1..t{last})")
    if target.kind != "message":
        return Command("invalid", hint=f"t{turn_id} is a reaction; react to a message")
    emoji = EMOJI_ALIASES.get(emoji.lower(), emoji)
    if len(emoji) > _MAX_EMOJI_CHARS or emoji.isalnum():
        return Command("invalid", hint=f"'{emoji}' is not an emoji (try 👍 or an alias: {', '.join(EMOJI_ALIASES)})")
    return Command("react", React(content=emoji, target_turn_id=turn_id))


# -- the live chat, as the player sees it -------------------------------------------------------------
class PlayerChat(EventHandler):
    """Prints the chat live for the player (pass it as ``on_event``).

    Only subject-visible facts are printed: the briefing, messages,
    reactions, rounds and the player's own silences. Persona no-ops, hidden
    script tags, labels and the norm are never shown.

    Args:
        console: where to print (default: stdout).

    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.subject: HumanSubject | None = None
        self.me = ""
        self._colours: dict[str, str] = {}
        self._messages: dict[int, tuple[str, str]] = {}

    def attach(self, subject: HumanSubject) -> None:
        """Bind the player's subject agent (for the briefing)."""
        self.subject = subject
        self.me = subject.name

    def on_episode_start(self, event: dict[str, Any]) -> None:
        """The player's briefing."""
        self._briefing()

    def on_turn_start(self, event: dict[str, Any]) -> None:
        """A rule line per round."""
        self.console.rule(f"round {event.get('turn')}", style="grey50")

    def on_action(self, event: dict[str, Any]) -> None:
        """What the player may see of an action."""
        self._action(event)

    def on_episode_end(self, event: dict[str, Any]) -> None:
        """How the episode ended, in words."""
        if event.get("error") == QUIT_ERROR:
            self.console.print(Text("you left the chat; the episode is over.", style="bold"))
        else:
            self.console.print(Text(f"the episode is over: {end_words(event.get('reason'))}.", style="bold"))

    def _name(self, actor: str) -> Text:
        if actor == self.me:
            return Text("you", style="bold white")
        if actor not in self._colours:
            self._colours[actor] = _PALETTE[len(self._colours) % len(_PALETTE)]
        return Text(actor, style=self._colours[actor])

    def _briefing(self) -> None:
        if self.subject is None:
            return
        view = self.subject.observe("turn")
        c = self.console
        c.rule("scene-sim play", style="bold")
        c.print(Text.assemble(("You are ", ""), (view.name, "bold"), (f": {view.bio}", "")))
        if view.private_knowledge:
            c.print(Text.assemble(("What you know: ", "bold"), view.private_knowledge))
        c.print(Text.assemble(("Chat: ", "bold"), view.channel))
        for member in view.cast:
            c.print(Text.assemble("  ", self._name(member.name), f": {member.bio_oneline}"))
        if not view.reactions:
            c.print(Text("This chat has no emoji reactions.", style="italic"))
        c.print(Text(HELP, style="grey50"))

    def _action(self, e: dict[str, Any]) -> None:
        actor = str(e.get("actor", ""))
        tid = e.get("turn_id")
        line = Text()
        line.append(f"[t{tid}] " if tid else "      ", style="grey50")
        action = e.get("action")
        if action == "no-op":
            meta = e.get("meta") if isinstance(e.get("meta"), dict) else {}
            if actor != self.me or meta.get("quit"):
                return  # silence is invisible in a chat; quitting is announced at the end
            line.append("you stayed silent", style="grey42 italic")
        elif action == "react":
            target = e.get("target_turn_id")
            line.append_text(self._name(actor))
            line.append(f" reacted {e.get('content', '')} to t{target}")
            quoted = self._messages.get(int(target)) if isinstance(target, int) else None
            if quoted:
                snippet = quoted[1] if len(quoted[1]) <= 40 else quoted[1][:39] + "…"
                line.append(f'  ({quoted[0]}: "{snippet}")', style="grey50")
        else:
            content = str(e.get("content", ""))
            if isinstance(tid, int):
                self._messages[tid] = (actor, content)
            line.append_text(self._name(actor))
            line.append(f": {content}")
        self.console.print(line)

    def ask(self, reason: str) -> None:
        """Print the prompt line for a subject prompt with ``reason``."""
        why = _REASONS.get(reason, "your turn")
        self.console.print(Text(why, style="grey50"))
        self.prompt()

    def prompt(self) -> None:
        """Print the input prompt (no newline)."""
        self.console.print(Text(f"{self.me or 'you'} › ", style="bold"), end="")
        with contextlib.suppress(OSError, ValueError):
            self.console.file.flush()

    def hint(self, text: str) -> None:
        """Print a one-line hint after a bad command."""
        self.console.print(Text(f"  {text}", style="yellow"))


# -- the subject agent ------------------------------------------------------------------------------
class HumanSubject(Subject):
    """The subject played by a person typing commands (see the module docstring).

    Args:
        model: the episode.
        name: the subject's actor name.
        llm: unused (a person needs no backend).
        model_string: ``human``.
        reader: where the player's lines come from.
        chat: the live display (also told about prompts and hints).

    """

    def __init__(
        self,
        model: Any,
        name: str,
        *,
        llm: Any = None,
        model_string: str = HUMAN_MODEL,
        reader: AsyncLineReader,
        chat: PlayerChat,
    ) -> None:
        super().__init__(model, name, llm=None, model_string=model_string)
        self.reader = reader
        self.chat = chat
        self.quitting = False
        chat.attach(self)

    async def decide(self, view: SubjectView, system: str, messages: list[dict[str, str]]) -> Decision:
        """Ask the player until a valid command arrives."""
        self.chat.ask(view.reason)
        while True:
            line = await self.reader.readline()
            if line is None:
                self.chat.console.print()
            cmd = parse_command(line, view.turns, reactions=view.reactions)
            if cmd.kind == "quit":
                self.quitting = True
                return Decision(NoOp(), {"quit": True, "by": "eof" if line is None else "command"})
            if cmd.kind == "help":
                self.chat.hint(HELP)
            elif cmd.kind == "invalid" or cmd.action is None:
                self.chat.hint(f"{cmd.hint} (/help lists the commands)" if cmd.hint else HELP)
            else:
                problem = None if isinstance(cmd.action, NoOp) else self.model.world.validate(self.name, cmd.action)
                if problem is None:
                    return Decision(cmd.action, {"input": cmd.kind})
                self.chat.hint(problem)
            self.chat.prompt()

    def on_posted(self, turn: ChatTurn | None, decision: Decision) -> None:
        """End the episode (reason ``error``, :data:`QUIT_ERROR`) once the quitting no-op is logged."""
        if self.quitting:
            from scene_sim.studies.scene.model import EpisodeError

            raise EpisodeError(QUIT_ERROR)


# -- running ----------------------------------------------------------------------------------------------
def _analysis_available() -> bool:
    try:
        return importlib.util.find_spec("scene_sim.studies.scene.analysis") is not None
    except (ImportError, ValueError):
        return False


async def play_episode(
    out: str | Path,
    *,
    scenario: str,
    personas: str = "scripted",
    orchestrator: str = "scripted",
    judge: str | None = "scripted",
    seed: int = 0,
    max_turns: int = 8,
    scenarios: str | None = None,
    cache_mode: str = "read-write",
    stdin: IO[str] | None = None,
    console: Console | None = None,
) -> RunOutcome:
    """Play one episode as the subject and write it to the run directory ``out``.

    Args:
        out: the run directory.
        scenario: scenario id or path.
        personas: persona model string.
        orchestrator: orchestrator model string.
        judge: judge model string (None: do not judge).
        seed: episode seed.
        max_turns: orchestrator ticks.
        scenarios: scenario source to look ``scenario`` up in.
        cache_mode: response cache mode (for model personas).
        stdin: where the player's lines come from (default ``sys.stdin``).
        console: where the chat is printed (default stdout).

    Returns:
        The :class:`scene_sim.studies.scene.runner.RunOutcome`.

    """
    from scene_sim.studies.scene.runner import run_episode

    chat = PlayerChat(console)
    reader = AsyncLineReader(stdin)
    factory = functools.partial(HumanSubject, reader=reader, chat=chat)
    outcome = await run_episode(
        out,
        scenario=scenario,
        subject=HUMAN_MODEL,
        personas=personas,
        orchestrator=orchestrator,
        judge=judge,
        seed=seed,
        max_turns=max_turns,
        scenarios=scenarios,
        cache_mode=cache_mode,
        analyze=judge is not None and _analysis_available(),
        command="play",
        agent_classes={"subject": factory},
        on_event=chat,
    )
    last = outcome.result.events[-1] if outcome.result.events else {}
    why = "you left the chat" if last.get("error") == QUIT_ERROR else end_words(outcome.result.end_reason)
    chat.console.print(f"episode {outcome.result.episode_id} saved ({why})")
    chat.console.print(f"run directory: {outcome.run_dir.path}  (see it with: scene-sim view {outcome.run_dir.path})")
    return outcome


def add_play_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``play`` command's arguments to ``parser``."""
    from scene_sim.studies.scene._args import int_range

    parser.add_argument("--scenario", required=True, help="scenario id (see 'scene-sim scenarios') or path")
    parser.add_argument("--personas", default="scripted", help="model string for every persona (default: scripted)")
    parser.add_argument("--orchestrator", default="scripted", help="orchestrator model string (default: scripted)")
    parser.add_argument("--judge", default="scripted", help="judge model string, or 'none' (default: scripted)")
    parser.add_argument("--seed", type=int_range(0), default=0)
    parser.add_argument("--max-turns", type=int_range(1, 200), default=8)
    parser.add_argument("--scenarios", help="scenario source to look the id up in (default: the shipped bank)")
    parser.add_argument("--out", default=None, help="run directory (default: ./scene-sim-play-<date>-<time>)")
    parser.add_argument(
        "--cache",
        default="read-write",
        choices=("read-write", "read-only", "off"),
        help="response cache mode (default read-write; in $SCENE_SIM_CACHE_DIR)",
    )


def run_play(args: argparse.Namespace) -> int:
    """Run the ``play`` command for parsed ``args``; returns the exit status."""
    out = args.out or f"scene-sim-play-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    judge = None if str(args.judge).lower() == "none" else args.judge
    asyncio.run(
        play_episode(
            out,
            scenario=args.scenario,
            personas=args.personas,
            orchestrator=args.orchestrator,
            judge=judge,
            seed=args.seed,
            max_turns=args.max_turns,
            scenarios=args.scenarios,
            cache_mode=args.cache,
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scene_sim.studies.scene.play --scenario ID [--out DIR] ...``: the same as ``scene-sim play``."""
    from scene_sim.cli import main as cli_main

    return cli_main(["play", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
