"""Checks of the runtime rules, read off an episode's event log only.

Used by the runtime tests for every bank scenario and several subjects; it
knows nothing of the implementation, only the contract in DESIGN.md.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from scene_sim.events import END_REASONS, parse_event

#: The contract's number (DESIGN.md), written here, not imported: the checker must catch a changed constant.
SILENT_TICKS_TO_END = 3
#: End reasons that may cut a tick short (a prompt without its answer, a tick without its floor_open).
CUT_SHORT = ("error", "budget")


def check_episode(events: list[dict[str, Any]], *, personas: set[str], subject: str, max_turns: int) -> list[str]:
    """Every violation of the contract's runtime rules in ``events``."""
    bad: list[str] = []
    for e in events:
        parse_event(e)  # each line is a valid typed event
    if [e["seq"] for e in events] != list(range(len(events))):
        bad.append("seq is not 0,1,2,... in file order")
    if events[0]["kind"] != "episode_start" or events[0]["turn"] != 0:
        bad.append("the first event is not episode_start at turn 0")
    if events[-1]["kind"] != "episode_end" or events[-1]["reason"] not in END_REASONS:
        bad.append("the last event is not episode_end with a contract reason")
    if sum(e["kind"] == "episode_end" for e in events) != 1:
        bad.append("not exactly one episode_end")
    turns = [e["turn"] for e in events]
    if turns != sorted(turns):
        bad.append("turn decreases")
    turn0 = [e for e in events if e["turn"] == 0]
    if any(e["kind"] == "prompt" for e in turn0):
        bad.append("a prompt before the first tick")
    start = events[0]

    # chat turn ids: consecutive over non-no-op actions; reactions target earlier messages
    posted = [e for e in events if e["kind"] == "action" and e["action"] != "no-op"]
    if [e["turn_id"] for e in posted] != list(range(1, len(posted) + 1)):
        bad.append("chat turn ids are not 1,2,3,... over messages and reactions")
    kinds = {e["turn_id"]: e["action"] for e in posted}
    for e in posted:
        if e["action"] == "react" and not (
            kinds.get(e["target_turn_id"]) == "message" and e["target_turn_id"] < e["turn_id"]
        ):
            bad.append(f"reaction t{e['turn_id']} does not target an earlier message")
    if not start.get("reactions", True) and any(e["action"] == "react" for e in posted):
        bad.append("a reaction in a chat without reactions")

    # every prompt is answered by exactly one action of the same actor, next
    acts = [e for e in events if e["kind"] in ("prompt", "action")]
    for i, e in enumerate(acts):
        if e["kind"] == "prompt" and e["role"] in ("persona", "subject") and e["reason"] != "requery":
            nxt = next((a for a in acts[i + 1 :] if a["kind"] == "action" or a.get("reason") != "requery"), None)
            if nxt is None and events[-1]["reason"] in CUT_SHORT:
                continue  # the call of the last prompt failed or was refused: the episode ended there
            allowed = set(e.get("actors") or [e["actor"]])  # a joint persona call answers for several
            if nxt is None or nxt["kind"] != "action" or nxt["actor"] not in allowed:
                bad.append(f"prompt seq {e['seq']} for {e['actor']} is not answered by its action")

    # after every non-silent persona action in a tick, the subject is prompted (after_action) before anyone else acts
    seq_events = [e for e in events if e["kind"] in ("prompt", "action") and e["turn"] >= 1]
    for i, e in enumerate(seq_events):
        if e["kind"] == "action" and e["actor"] in personas and e["action"] != "no-op":
            nxt = next((x for x in seq_events[i + 1 :] if x["kind"] == "prompt"), None)
            if nxt is None:
                if events[-1]["reason"] != "fidelity_fail":
                    bad.append(f"no subject prompt after persona action seq {e['seq']}")
                continue
            if not (nxt["actor"] == subject and nxt["reason"] == "after_action"):
                bad.append(f"after persona action seq {e['seq']} the next prompt is {nxt['actor']}/{nxt['reason']}")

    # per tick: all personas silent -> exactly one floor_open prompt; otherwise none
    by_tick: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["turn"] >= 1:
            by_tick[e["turn"]].append(e)
    for tick, evs in by_tick.items():
        persona_acts = [e for e in evs if e["kind"] == "action" and e["actor"] in personas and e["action"] != "no-op"]
        floor = [e for e in evs if e["kind"] == "prompt" and e["reason"] == "floor_open"]
        if not persona_acts and len(floor) != 1 and events[-1]["reason"] not in CUT_SHORT:
            bad.append(f"tick {tick}: all personas silent but {len(floor)} floor_open prompts")
        if persona_acts and floor:
            bad.append(f"tick {tick}: floor_open prompt although a persona acted")
        if floor and floor[0]["actor"] != subject:
            bad.append(f"tick {tick}: floor_open prompt for {floor[0]['actor']}")

    # precedent: a persona breach and its sanction complete before the subject's first action
    subject_actions = [e for e in events if e["kind"] == "action" and e["actor"] == subject]
    first_subject_seq = subject_actions[0]["seq"] if subject_actions else len(events)
    if start["tuple"]["precedent"] == 1:
        pre = [e for e in events if e["kind"] == "action" and (e.get("meta") or {}).get("script") == "precedent"]
        if not pre or any(e["seq"] > first_subject_seq for e in pre) or len({e["actor"] for e in pre}) < 2:
            bad.append("precedent sub-script missing or not complete before the subject's first action")
    elif any((e.get("meta") or {}).get("script") == "precedent" for e in events):
        bad.append("precedent lines in a precedent-0 episode")

    # end reasons
    end = events[-1]
    last_tick = max((e["turn"] for e in events if e["kind"] == "turn_start"), default=0)
    if end["reason"] == "max_turns" and last_tick != max_turns:
        bad.append(f"max_turns end after tick {last_tick}, not {max_turns}")
    if last_tick > max_turns:
        bad.append("more ticks than max_turns")
    # subject_silent <=> three consecutive all-silent ticks whose floor_open prompts got subject no-ops
    streak, silent_at = 0, None
    for tick in sorted(by_tick):
        evs = by_tick[tick]
        persona_acted = any(
            e["kind"] == "action" and e["actor"] in personas and e["action"] != "no-op" for e in evs
        ) or any(e["kind"] == "action" and (e.get("meta") or {}).get("script") for e in evs)
        floor = next((e for e in evs if e["kind"] == "prompt" and e["reason"] == "floor_open"), None)
        answer = next((a for a in evs if a["kind"] == "action" and a["seq"] > floor["seq"]), None) if floor else None
        silent = not persona_acted and answer is not None and answer["action"] == "no-op"
        streak = streak + 1 if silent else 0
        if streak >= SILENT_TICKS_TO_END and silent_at is None:
            silent_at = tick
    if end["reason"] == "subject_silent" and silent_at != last_tick:
        bad.append(f"subject_silent without {SILENT_TICKS_TO_END} consecutive all-silent ticks answered by no-ops")
    if silent_at is not None and not (end["reason"] == "subject_silent" and end["turn"] == silent_at):
        bad.append(
            f"{SILENT_TICKS_TO_END} consecutive all-silent ticks answered by no-ops ended at tick {silent_at}, "
            f"but the episode went on to end with {end['reason']} at tick {end['turn']}"
        )
    return bad
