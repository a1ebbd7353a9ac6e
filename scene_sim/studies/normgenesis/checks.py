"""Shape, script and leak checks on model output (situations and dialogues).

A situation may not state the norm it is built to test (a *leak*): it must
not contain the norm's text, a long run of it, or the words "norm" /
"violation" in the item's language. Text must be in the item's script
(Hangul for ko, Han characters for zh, Latin letters for en).
"""

from __future__ import annotations

import re

from scene_sim.studies.normgenesis.records import Situation

__all__ = ["MAX_TURNS", "MIN_TURNS", "check_situation", "check_turn_lines", "in_script", "parse_lines"]

MIN_TURNS, MAX_TURNS = 4, 16
_MIN_CHARS, _MAX_CHARS = 8, 800
_SCRIPTS = {"ko": re.compile(r"[\uac00-\ud7a3]"), "zh": re.compile(r"[\u4e00-\u9fff]"), "en": re.compile(r"[A-Za-z]")}
_META_WORDS = {
    "en": ("social norm", "the norm", "violat"),
    "ko": ("규범", "위반"),
    "zh": ("规范", "违反", "违背"),
}
_LEAK_RUN = 18  # characters of the norm's text in a row that count as stating it


def in_script(text: str, lang: str) -> bool:
    """Whether at least a third of ``text``'s letters are in ``lang``'s script (unknown languages pass)."""
    pattern = _SCRIPTS.get(lang)
    if pattern is None:
        return True
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and len(pattern.findall(text)) * 3 >= len(letters)


def _longest_common_run(a: str, b: str) -> int:
    best = 0
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0] * (len(b) + 1)
        for j, cb in enumerate(b, 1):
            if ca == cb:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def check_situation(sit: Situation, *, lang: str, norm: str) -> str | None:
    """The problem with ``sit`` (None when it is fine)."""
    for field in ("scenario", "situation"):
        text = getattr(sit, field).strip()
        if not _MIN_CHARS <= len(text) <= _MAX_CHARS:
            return f"{field} must be {_MIN_CHARS}-{_MAX_CHARS} characters, got {len(text)}"
        if not in_script(text, lang):
            return f"{field} is not written in '{lang}'"
        lowered = text.lower()
        for word in _META_WORDS.get(lang, ()):
            if word in lowered:
                return f"{field} leaks the norm (mentions '{word}')"
        if _longest_common_run(lowered, norm.lower()) >= min(_LEAK_RUN, max(8, len(norm) // 2)):
            return f"{field} leaks the norm (copies its wording)"
    if sit.scenario.strip() == sit.situation.strip():
        return "situation repeats the scenario"
    return None


_LINE = re.compile(r"^\s*([^:：]{1,40})[:：]\s*(.+?)\s*$")


def parse_lines(text: str) -> list[tuple[str, str]]:
    """``Name: utterance`` lines (ASCII or full-width colon) to ``(speaker, text)`` pairs."""
    out = []
    for raw in text.splitlines():
        match = _LINE.match(raw)
        if match:
            out.append((match.group(1).strip().strip("*"), match.group(2)))
    return out


def check_turn_lines(turns: list[tuple[str, str]], *, lang: str) -> str | None:
    """The problem with a dialogue's ``(speaker, text)`` turns (None when fine)."""
    if not MIN_TURNS <= len(turns) <= MAX_TURNS:
        return f"a dialogue needs {MIN_TURNS}-{MAX_TURNS} turns, got {len(turns)}"
    if len({s for s, _ in turns}) != 2:
        return "a dialogue needs exactly two speakers"
    if not in_script(" ".join(t for _, t in turns), lang):
        return f"the dialogue is not written in '{lang}'"
    return None
