"""Valid model answers for every NormGenesis prompt, keyed by the request's schema name (test helper)."""

from __future__ import annotations

import re
from typing import Any

from scene_sim.studies.normgenesis.policies import LINES, speakers

_LANG = re.compile(r'language with code "(\w+)"')
_TYPE = re.compile(r"(?:Dialogue type|Intended dialogue type): (\w+)")
_N = re.compile(r"Dialogue \((\d+) turns\)")

_SIT = {
    "en": ("Two colleagues meet in the office kitchen after a long meeting.", "One of them has to reply to a remark."),
    "ko": ("두 동료가 긴 회의가 끝난 뒤 사무실 탕비실에서 만난다.", "한 사람이 상대의 말에 대답해야 한다."),
    "zh": ("两个同事开完长会后在茶水间碰面。", "其中一人需要回应对方的话。"),
}


def lang_of(text: str) -> str:
    m = _LANG.search(text)
    return m.group(1) if m else "en"


def answer(schema_name: str, system: str, user: str) -> dict[str, Any]:
    """A valid answer to a NormGenesis request."""
    lang = lang_of(system + user)
    if schema_name in ("normgenesis_situation", "normgenesis_refine"):
        scenario, situation = _SIT.get(lang, _SIT["en"])
        return {"scenario": scenario, "situation": situation}
    if schema_name == "normgenesis_rq":
        return {"norm_alignment": 5, "linguistic_quality": 4, "semantic_fidelity": 5}
    kind = _TYPE.search(user) or _TYPE.search(system)
    kind_s = kind.group(1) if kind else "adherence"
    if schema_name == "normgenesis_dialogue":
        a, b = speakers(lang)
        t = {k: v.format(topic="x") for k, v in LINES.get(lang, LINES["en"]).items()}
        if kind_s == "adherence":
            acts = ["open", "agree", "follow", "empathize", "suggest", "ack"]
        elif kind_s == "violation":
            acts = ["open", "slip", "sanction_q", "slip2", "sanction", "slip2"]
        else:
            acts = ["open", "slip", "sanction", "apology", "question", "justify"]
        return {"turns": [{"speaker": (a, b)[i % 2], "text": t[act]} for i, act in enumerate(acts)]}
    if schema_name == "normgenesis_annotate":
        n = int(_N.search(user).group(1))  # type: ignore[union-attr]
        labels = []
        after = ["CRT", "APO", "QUE", "JUS", "ACK", "SUG", "THX"] if kind_s == "v2r" else ["AGR", "THX", "EMP", "ACK"]
        for i in range(n):
            if i == 0:
                labels.append({"adherence": "not_relevant", "reaction": "NR", "justification": "opens"})
            elif i == 1 and kind_s != "adherence":
                labels.append({"adherence": "violates", "reaction": "DIS", "justification": "dismissive"})
            else:
                labels.append({"adherence": "adheres", "reaction": after[(i - 2) % len(after)], "justification": "ok"})
        dq = dict.fromkeys(
            ("consistency", "naturalness", "relevance", "coherence", "emotion_appropriateness", "norm_appropriateness"),
            4,
        )
        return {"turns": labels, "dq": dq}
    # a speaker in agents mode: the chat action
    return {
        "action": "message",
        "content": LINES.get(lang, LINES["en"])["agree"].format(topic="x"),
        "target_turn_id": None,
    }
