"""Scripted offline policies for every role (``--model scripted``): deterministic, seeded, multilingual.

The situation writer, the RQ judge, the refiner, the dialogue writer (and the
two speakers of ``agents`` mode), the annotator and the DQ judge all have an
offline policy here. Their Korean and Chinese text is real Hangul and Hanzi,
so every language runs the same mechanics offline. The scripted dialogue
writer carries each turn's intended labels as hidden meta; the scripted
annotator is an oracle that reads them (as SCENE's scripted judge reads what
its scripted actors intended).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from scene_sim.studies.normgenesis.norms import Norm
from scene_sim.studies.normgenesis.records import DQ_CRITERIA, DQScores, RQScores, Situation

__all__ = [
    "LINES",
    "SPEAKERS",
    "PlannedTurn",
    "plan_dialogue",
    "refine_situation",
    "rq_scores",
    "scripted_dq",
    "situation_for",
    "speakers",
]

#: The two speakers per language; the second one is the one who slips.
SPEAKERS = {"en": ("Alex", "Jordan"), "ko": ("민준", "지은"), "zh": ("李明", "王芳")}

#: Each act's line per language (``{topic}`` is the norm's topic).
LINES: dict[str, dict[str, str]] = {
    "en": {
        "open": "Do you have a minute to talk about {topic}?",
        "agree": "Of course, I was hoping we could talk about {topic}.",
        "follow": "Thanks, I appreciate you making the time.",
        "empathize": "I understand, {topic} has been on my mind too.",
        "suggest": "Maybe we can sort out the details together this week?",
        "ack": "Sounds good, let's do that.",
        "slip": "Honestly, {topic} is not my problem. Can we just skip this?",
        "slip2": "I don't see why I should bother with any of it.",
        "sanction": "That was quite dismissive. It isn't how we treat each other here.",
        "sanction_q": "Why would you say something like that?",
        "apology": "You're right, I'm sorry. That was rude of me.",
        "question": "Did something happen today?",
        "justify": "I've been under a lot of pressure and I took it out on you.",
        "empathy_r": "I can imagine how that must have felt for you.",
        "offer": "Let me make it up to you: I'll take care of it first thing tomorrow.",
        "accept": "Thank you, I appreciate that.",
        "accept_ack": "Okay, apology accepted.",
    },
    "ko": {
        "open": "{topic} 일로 잠깐 이야기 좀 할 수 있을까요?",
        "agree": "네, 물론이죠. 저도 {topic} 이야기를 하고 싶었어요.",
        "follow": "시간 내 주셔서 고마워요.",
        "empathize": "그 마음 충분히 이해해요. 저도 {topic} 때문에 신경이 많이 쓰였거든요.",
        "suggest": "이번 주에 같이 차근차근 정리해 보면 어떨까요?",
        "ack": "좋아요, 그렇게 해요.",
        "slip": "솔직히 {topic} 얘기는 제 알 바 아니에요. 그냥 넘어가죠.",
        "slip2": "제가 왜 그런 것까지 신경 써야 하죠?",
        "sanction": "방금 말씀은 좀 무례하시네요. 그렇게 말씀하시면 서운해요.",
        "sanction_q": "지금 그게 무슨 말씀이세요?",
        "apology": "제가 말이 심했어요. 정말 죄송합니다.",
        "question": "혹시 오늘 무슨 일 있으셨어요?",
        "justify": "요즘 일이 너무 많아서 예민했나 봐요. 그래도 그렇게 말하면 안 됐어요.",
        "empathy_r": "많이 당황하셨죠. 기분 상하셨을 거 알아요.",
        "offer": "제가 내일 아침에 직접 챙겨서 꼭 만회할게요.",
        "accept": "그렇게 말해 줘서 고마워요.",
        "accept_ack": "알겠어요, 사과 받아들일게요.",
    },
    "zh": {
        "open": "关于{topic}的事，能跟你聊几句吗？",
        "agree": "当然可以，我也正想跟你聊聊{topic}。",
        "follow": "谢谢你抽出时间。",
        "empathize": "我很理解你的心情，{topic}这件事我也一直放在心上。",
        "suggest": "这周我们一起慢慢理一理，好不好？",
        "ack": "好的，就这么办。",
        "slip": "说实话，{topic}跟我没关系，别烦我了。",
        "slip2": "我凭什么要管这些？",
        "sanction": "你这么说太不客气了，让人很寒心。",
        "sanction_q": "你这话是什么意思？",
        "apology": "是我说话太冲了，真对不起。",
        "question": "你最近是不是遇到什么事了？",
        "justify": "最近工作压力太大，我有点烦躁，但不该冲你发火。",
        "empathy_r": "我知道刚才那句话让你很难受。",
        "offer": "明天一早我亲自来处理，一定补上。",
        "accept": "谢谢你这么说。",
        "accept_ack": "好吧，我接受你的道歉。",
    },
}

# act -> (adherence, reaction, justification)
_LABELS = {
    "open": ("not_relevant", "NR", "Opens the topic; no norm is at stake yet."),
    "agree": ("adheres", "AGR", "Agrees to talk, cooperative and polite."),
    "follow": ("adheres", "THX", "Thanks the other for their time."),
    "empathize": ("adheres", "EMP", "Shows understanding of the other's concern."),
    "suggest": ("adheres", "SUG", "Proposes a way forward together."),
    "ack": ("adheres", "ACK", "Accepts the proposal."),
    "slip": ("violates", "DIS", "Dismisses the other's concern, against the norm."),
    "slip2": ("violates", "DIS", "Dismisses the matter again instead of repairing."),
    "sanction": ("adheres", "CRT", "Points out that the reply broke the norm."),
    "sanction_q": ("adheres", "QUE", "Questions the dismissive reply."),
    "apology": ("adheres", "APO", "Apologises for the dismissive reply."),
    "question": ("adheres", "QUE", "Asks what caused the behaviour."),
    "justify": ("adheres", "JUS", "Explains the behaviour while owning it."),
    "empathy_r": ("adheres", "EMP", "Acknowledges the hurt it caused."),
    "offer": ("adheres", "SUG", "Offers to make up for it (compensation)."),
    "accept": ("adheres", "THX", "Thanks the other for the repair."),
    "accept_ack": ("adheres", "ACK", "Accepts the apology."),
}

# The repair after the sanction, per language: (speaker index, act). Speaker 1 is the violator.
_REPAIRS: dict[str, list[list[tuple[int, str]]]] = {
    "en": [
        [(1, "apology"), (0, "question"), (1, "justify"), (0, "accept_ack"), (1, "offer"), (0, "accept")],
        [(1, "apology"), (0, "question"), (1, "justify"), (0, "accept")],
    ],
    "ko": [
        [(1, "empathy_r"), (0, "accept_ack"), (1, "apology"), (0, "question"), (1, "offer"), (0, "accept")],
        [(1, "apology"), (0, "question"), (1, "justify"), (0, "accept_ack"), (1, "offer"), (0, "accept")],
    ],
    "zh": [
        [(1, "apology"), (0, "accept_ack"), (1, "offer"), (0, "accept")],
        [(1, "apology"), (0, "question"), (1, "justify"), (0, "accept_ack"), (1, "offer"), (0, "accept")],
    ],
}
_SINGLE_STEP = [(1, "apology"), (0, "accept_ack")]


@dataclass(frozen=True)
class PlannedTurn:
    """A scripted turn with its intended labels (hidden meta, read by the scripted annotator)."""

    speaker: int
    act: str
    text: str
    adherence: str
    reaction: str
    justification: str


def _seeded(seed: int, *parts: object) -> random.Random:
    return random.Random("|".join([str(seed), *map(str, parts)]))


def _lines(lang: str) -> dict[str, str]:
    return LINES.get(lang, LINES["en"])


def speakers(lang: str) -> tuple[str, str]:
    """The two speaker names for ``lang``."""
    return SPEAKERS.get(lang, SPEAKERS["en"])


def plan_dialogue(norm: Norm, kind: str, *, seed: int, item_id: str) -> list[PlannedTurn]:
    """The scripted dialogue of ``kind`` for ``norm``; the slip turn (2 or 4) is seeded."""
    rng = _seeded(seed, item_id, "dialogue")
    warm = [(0, "open")] + ([(1, "agree"), (0, "follow")] if rng.random() < 0.5 else [])
    if kind == "adherence":
        acts = [(0, "open"), (1, "agree"), (0, "follow"), (1, "empathize"), (0, "suggest"), (1, "ack")]
    elif kind == "violation":
        acts = [*warm, (1, "slip"), (0, "sanction_q"), (1, "slip2"), (0, "sanction")]
    else:
        repairs = _REPAIRS.get(norm.lang, _REPAIRS["en"])
        repair = _SINGLE_STEP if rng.random() < 0.1 else repairs[rng.randrange(len(repairs))]
        acts = [*warm, (1, "slip"), (0, "sanction"), *repair]
    table = _lines(norm.lang)
    out = []
    for who, act in acts:
        adherence, reaction, why = _LABELS[act]
        out.append(PlannedTurn(who, act, table[act].format(topic=norm.topic), adherence, reaction, why))
    return out


_SITUATION = {
    "en": "The conversation turns to {topic}, and one of them has to respond as the moment calls for.",
    "ko": "대화가 {topic} 이야기로 이어지고, 한 사람이 상황에 맞게 반응해야 한다.",
    "zh": "两人聊到了{topic}，其中一人需要做出得体的回应。",
}
_POLISH = {
    "en": " Others nearby can hear them.",
    "ko": " 주변 사람들도 두 사람의 대화를 듣고 있다.",
    "zh": " 周围的人也能听到他们的对话。",
}


def situation_for(norm: Norm, index: int) -> Situation:
    """The scripted first draft of scenario ``index`` for ``norm``."""
    text = _SITUATION.get(norm.lang, _SITUATION["en"]).format(topic=norm.topic)
    return Situation(scenario=norm.setting, situation=text)


def refine_situation(norm: Norm, current: Situation) -> Situation:
    """The scripted refinement: adds one sentence of context (once)."""
    polish = _POLISH.get(norm.lang, _POLISH["en"])
    if current.situation.endswith(polish):
        return current
    return Situation(scenario=current.scenario, situation=current.situation + polish)


def rq_scores(seed: int, scenario_id: str, round_: int) -> RQScores:
    """Scripted RQ scores: most first drafts fall short on linguistic quality, and refinement fixes it."""
    u = _seeded(seed, scenario_id, "rq").random()
    needs = 0 if u < 0.15 else 2 if u < 0.30 else 1  # refinement rounds this scenario needs
    lq = (4 if needs == 0 else 5) if round_ >= needs else 3
    return RQScores(round=round_, norm_alignment=4 if round_ == 0 else 5, linguistic_quality=lq, semantic_fidelity=5)


def scripted_dq(seed: int, item_id: str) -> DQScores:
    """Scripted dialogue-quality scores (4 or 5 each, seeded)."""
    rng = _seeded(seed, item_id, "dq")
    return DQScores(**{c: 4 + (rng.random() < 0.6) for c in DQ_CRITERIA})
