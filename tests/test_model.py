"""The episode runtime: rules read off the event log, hidden fields, Mesa interop."""

from __future__ import annotations

import asyncio
import json
import re

import mesa
import pytest

from scene_sim.actions import Message, NoOp
from scene_sim.agents import Decision
from scene_sim.backends.base import Backend, BackendError, GenerateRequest, GenerateResponse
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.studies.scene import SceneModel
from scene_sim.studies.scene.agents import ScriptedPersona
from scene_sim.studies.scene.model import SILENT_PROMPTS_TO_END
from scene_sim.studies.scene.scenario import parse_line

from .eventlog_rules import check_episode

SUBJECTS = [
    "scripted/learner",
    "scripted/always-message",
    "scripted/always-react",
    "scripted/silent",
    "scripted/random",
]


def _run(**kw) -> SceneModel:
    m = SceneModel(**kw)
    asyncio.run(m.arun())
    return m


@pytest.mark.parametrize("subject", SUBJECTS)
def test_runtime_rules_hold_for_every_bank_scenario(bank, subject):
    for i, sc in enumerate(bank):
        for seed in (i, i + 1000):
            m = _run(scenario=sc, subject=subject, seed=seed)
            personas = {c.name for c in sc.scaffold.channel.cast}
            problems = check_episode(m.log.events, personas=personas, subject=sc.scaffold.subject.name, max_turns=8)
            assert problems == [], (sc.id, subject, seed, problems[:5])


def test_the_rule_checker_catches_violations(bank):
    sc = next(iter(bank))
    m = _run(scenario=sc, subject="scripted/random", seed=3)
    events = [dict(e) for e in m.log.events]
    personas = {c.name for c in sc.scaffold.channel.cast}
    subject = sc.scaffold.subject.name
    # drop the subject's prompt (and its answer) after the first persona action of tick 2
    i = next(
        k
        for k, e in enumerate(events)
        if e["kind"] == "action" and e["turn"] >= 2 and e["actor"] in personas and e["action"] != "no-op"
    )
    del events[i + 1 : i + 3]
    for k, e in enumerate(events):
        e["seq"] = k
    assert any("next prompt" in p for p in check_episode(events, personas=personas, subject=subject, max_turns=8))


def test_silent_subject_ends_after_three_all_silent_prompts(bank):
    ends = set()
    for sc in bank:
        for seed in range(3):
            m = _run(scenario=sc, subject="scripted/silent", seed=seed, max_turns=30)
            ends.add(m.end_reason)
            personas = {c.name for c in sc.scaffold.channel.cast}
            problems = check_episode(m.log.events, personas=personas, subject=m.subject_name, max_turns=30)
            assert problems == [], (sc.id, seed, problems[:3])
            if m.end_reason == "subject_silent":
                floors = [e for e in m.log.events if e["kind"] == "prompt" and e["reason"] == "floor_open"]
                assert len(floors) >= 3
    assert "subject_silent" in ends


def test_post_sanction_rule_ends_the_episode(bank):
    reasons = []
    for sc in bank:
        m = _run(scenario=sc, subject="scripted/always-message", seed=1, min_post_sanction_turns=2)
        reasons.append(m.end_reason)
        if m.end_reason == "post_sanction":
            first_sanction_tick = m.streams["sanctions"][0]["tick"]
            subject_prompts = [
                e
                for e in m.log.events
                if e["kind"] == "prompt" and e["actor"] == m.subject_name and e["turn"] >= first_sanction_tick
            ]
            assert len(subject_prompts) >= 2
    assert "post_sanction" in reasons


def _hidden_ids(sc, taxonomy) -> list[str]:
    """Hidden ids a subject prompt must never hold as words: the norm, its partner pole, the sanction modality."""
    return [sc.tuple.norm, taxonomy.norm(sc.tuple.norm).pole_partner, sc.tuple.sanction]


def _hidden_strings(sc, taxonomy) -> list[str]:
    norm = taxonomy.norm(sc.tuple.norm)
    partner = taxonomy.norm(norm.pole_partner)
    sanction = taxonomy.sanctions[sc.tuple.sanction]
    criteria = sc.hidden.fidelity_criteria
    out = [sc.tuple.norm, norm.norm_text, *norm.compliance_signals, *norm.breach_signals]
    out += [partner.id, partner.norm_text, *partner.compliance_signals, *partner.breach_signals]
    out += [sanction.id, sanction.description, "fidelity_criteria", *type(criteria).model_fields]
    out += [json.dumps(criteria.model_dump()), str(criteria)]
    subject = sc.scaffold.subject.name
    for p in sc.hidden.personas:
        out.append(p.outline)
        for line in (*p.sanction_lines, *(p.precedent_lines_or_null or ()), *p.in_register_lines):
            parsed = parse_line(line, subject)
            if "{echo}" not in line:
                out.append(parsed.content)
    # short lines ('yes', '14%') occur naturally; test what identifies a hidden field
    return [s for s in out if len(s) >= 12]


@pytest.mark.parametrize("subject", ["scripted/learner", "scripted/random"])
def test_no_hidden_field_reaches_a_subject_prompt(bank, taxonomy, subject):
    for i, sc in enumerate(bank):
        m = _run(scenario=sc, subject=subject, seed=i)
        hidden = _hidden_strings(sc, taxonomy)
        sent: list[str] = []
        subject_prompts = 0
        for e in m.log.events:
            if e["kind"] == "action" and e["action"] != "no-op":
                sent.append(e["content"])
            if e["kind"] == "prompt" and e["actor"] == m.subject_name:
                subject_prompts += 1
                text = "\n".join(msg["content"] for msg in e["messages"])
                for line in sorted(sent, key=len, reverse=True):
                    text = text.replace(line, "")  # chat turns the personas actually sent are fair game
                leaked = [h for h in hidden if h in text]
                assert not leaked, (sc.id, leaked)
                for word in _hidden_ids(sc, taxonomy):
                    assert not re.search(r"\b" + re.escape(word) + r"\b", text), (sc.id, word)
                demonstrator = sc.hidden.precedent_demonstrator
                if demonstrator:
                    # the demonstrator is a participant: named in the roster ("- Name: ...") and the
                    # transcript ("[t3] Name: ..."), and nowhere else (that would single them out)
                    rest = [ln for ln in text.splitlines() if not ln.startswith(("[t", "- "))]
                    assert not any(re.search(r"\b" + re.escape(demonstrator) + r"\b", ln) for ln in rest), (
                        sc.id,
                        demonstrator,
                    )
        assert subject_prompts > 0


def test_same_seed_same_episode_and_step_matches_arun(bank):
    sc = list(bank)[-1]
    a = _run(scenario=sc, subject="scripted/learner", seed=11)
    b = _run(scenario=sc, subject="scripted/learner", seed=11)
    c = SceneModel(scenario=sc, subject="scripted/learner", seed=11)
    c.run_model()
    strip = lambda m: [{k: v for k, v in e.items()} for e in m.log.events]  # noqa: E731
    assert strip(a) == strip(b) == strip(c)
    d = _run(scenario=sc, subject="scripted/learner", seed=12)
    assert strip(d) != strip(a)


def test_step_refuses_to_run_inside_an_event_loop(bank):
    m = SceneModel(scenario=next(iter(bank)), subject="scripted/learner", seed=0)

    async def inner():
        with pytest.raises(SceneSimError, match=r"await model\.astep"):
            m.step()

    asyncio.run(inner())


def test_datacollector_tables_hold_the_streams(bank):
    for seed in range(20):
        m = _run(scenario=list(bank)[seed % len(bank)], subject="scripted/always-message", seed=seed)
        if m.streams["breaches"] and m.streams["sanctions"]:
            break
    df = m.datacollector.get_table_dataframe("breaches")
    assert list(df["turn_id"]) == [r["turn_id"] for r in m.streams["breaches"]]
    sanctions = m.datacollector.get_table_dataframe("sanctions")
    assert len(sanctions) == len(m.streams["sanctions"]) > 0
    breach_ids = set(df["turn_id"])
    assert set(sanctions["target_turn_id"]) <= breach_ids
    mv = m.datacollector.get_model_vars_dataframe()
    assert len(mv) == m.tick
    assert mv["end_reason"].iloc[-1] == m.end_reason


def test_batch_run_returns_rows(bank):
    ids = list(bank.ids)[:2]
    rows = mesa.batch_run(
        SceneModel,
        parameters={"scenario": ids, "subject": ["scripted/learner", "scripted/always-message"], "seed": [0, 1]},
        max_steps=50,
        number_processes=1,
        display_progress=False,
    )
    assert len(rows) == len(ids) * 4
    for r in rows:
        assert r["end_reason"] in ("max_turns", "subject_silent")
        assert r["scenario"] in ids
        assert r["breaches"] >= 0 and r["tick"] >= 1


@pytest.mark.slow
def test_batch_run_in_parallel_processes(bank):
    rows = mesa.batch_run(
        SceneModel,
        parameters={"scenario": list(bank.ids)[:2], "subject": "scripted/learner", "seed": [0, 1]},
        number_processes=2,
        max_steps=50,
        display_progress=False,
    )
    assert len(rows) == 2 * min(2, len(bank)) and all(r["end_reason"] for r in rows)


def test_bad_inputs_give_one_line_errors(bank):
    with pytest.raises(SceneSimError, match=r"unknown scenario 'bug_report__concise' \(did you mean"):
        SceneModel(scenario="bug_report__concise", subject="scripted/learner")
    with pytest.raises(SceneSimError, match="valid providers: anthropic, google, openai, hf, local, scripted"):
        SceneModel(scenario=next(iter(bank)), subject="antropic/claude")
    with pytest.raises(SceneSimError, match=r"unknown subject policy 'scripted/lerner' \(did you mean 'learner'"):
        SceneModel(scenario=next(iter(bank)), subject="scripted/lerner")


def test_event_log_roundtrips_as_json(bank):
    m = _run(scenario=next(iter(bank)), subject="scripted/random", seed=5)
    lines = m.log.to_jsonl().splitlines()
    assert [json.loads(x) for x in lines] == m.log.events


def test_finished_models_are_freed_and_agent_ids_are_unique(bank):
    import gc

    sc = next(iter(bank))
    m = _run(scenario=sc, subject="scripted/learner", seed=1)
    ids = [a.unique_id for a in m.agents]
    assert len(ids) == len(set(ids)) == 1 + len(sc.scaffold.channel.cast) + 1
    import weakref

    refs = [weakref.ref(m.world), weakref.ref(m.subject), weakref.ref(m.log)]
    m.dispose()
    del m
    gc.collect()
    # Mesa 3.3 keeps each model as a key of its class-level id counters (an empty shell after
    # dispose); what an episode holds (agents, chat, event log) is freed on every Mesa.
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("persona_calls", ["each", "joint"])
def test_dispose_frees_an_episode_without_the_garbage_collector(bank, persona_calls):
    import gc
    import weakref

    from scene_sim.context import RunContext

    sc = next(iter(bank))
    ctx = RunContext(cache_mode="off")  # model-driven personas: the joint mode builds its PersonaCast
    kwargs = {"personas": "fake/p", "context": ctx} if persona_calls == "joint" else {}
    gc.collect()
    gc.disable()
    try:
        m = SceneModel(scenario=sc, subject="scripted/learner", seed=3, persona_calls=persona_calls, **kwargs)
        result = asyncio.run(m.arun())
        refs = [weakref.ref(m.world), weakref.ref(m.subject), weakref.ref(m.log), weakref.ref(m.datacollector)]
        m.dispose()
        del m
        assert all(r() is None for r in refs)  # reference counting freed it: no cycle was left for the collector
        assert result.events[-1]["kind"] == "episode_end"  # the result outlives the model
    finally:
        gc.enable()


# -- every end reason, and the thresholds behind them -----------------------------------------------

P1 = "bug_report__concise_answer_norm__address_explicit__silent_ignore__p1"
README_SCENARIO = "achievement_announcement__phatic_reaction_norm__open_floor__mocking_imitation__p0"


class _SilentPersona(ScriptedPersona):
    async def decide(self, view, system, messages):
        return Decision(NoOp())


class _BlabbingPersona(ScriptedPersona):
    """States the hidden norm outright: the orchestrator's hard fail (B.5 c)."""

    async def decide(self, view, system, messages):
        norm = self.model.taxonomy.norm(self.model.scene.tuple.norm)
        return Decision(Message(f"fyi the rule here: {norm.norm_text}"), {"intent": "chatter"})


class _Unauthorised(Backend):
    provider = "broken"

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        raise BackendError("401 invalid api key", kind="fatal", status=401)


class _NoMoney:
    """A budget that refuses everything (the proxy interface a distributed executor implements)."""

    limit_usd = 0.0
    spent_usd = 0.0

    def try_reserve(self, usd_estimate: float) -> bool:
        return False

    def settle(self, reserved: float, actual: float) -> None:  # pragma: no cover - nothing is reserved
        raise AssertionError("nothing was reserved")


def _checked(m: SceneModel, max_turns: int = 8) -> SceneModel:
    personas = {c.name for c in m.scene.scaffold.channel.cast}
    problems = check_episode(m.log.events, personas=personas, subject=m.subject_name, max_turns=max_turns)
    assert problems == [], (m.end_reason, problems[:3])
    return m


def test_silent_end_comes_exactly_at_the_third_all_silent_tick():
    assert SILENT_PROMPTS_TO_END == 3  # the contract's number (DESIGN.md)
    m = _checked(
        _run(scenario=P1, subject="scripted/silent", seed=0, max_turns=30, agent_classes={"persona": _SilentPersona}),
        max_turns=30,
    )
    floors = [e for e in m.log.events if e["kind"] == "prompt" and e["reason"] == "floor_open"]
    # tick 1 carries the elicitor's turn; ticks 2, 3 and 4 are all silent, and the third ends it
    assert m.end_reason == "subject_silent" and m.tick == 4
    assert [e["turn"] for e in floors] == [2, 3, 4]


@pytest.mark.parametrize("need", [1, 2])
def test_post_sanction_ends_at_the_first_tick_with_enough_opportunities(bank, need):
    exact = 0
    for sc in bank:
        m = _run(scenario=sc, subject="scripted/always-message", seed=1, min_post_sanction_turns=need)
        if m.end_reason != "post_sanction":
            continue
        _checked(m)
        sanction_turn = m.streams["sanctions"][0]["turn_id"]
        sanction_seq = next(e["seq"] for e in m.log.events if e["kind"] == "action" and e["turn_id"] == sanction_turn)
        by_tick: dict[int, int] = {}
        for e in m.log.events:
            if e["kind"] == "prompt" and e["actor"] == m.subject_name and e["seq"] > sanction_seq:
                by_tick[e["turn"]] = by_tick.get(e["turn"], 0) + 1
        seen, first_enough = 0, None
        for tick in range(1, m.tick + 1):
            seen += by_tick.get(tick, 0)
            if seen >= need and first_enough is None:
                first_enough = tick
                exact += seen == need
        assert first_enough == m.tick, (sc.id, by_tick)  # ">=": not a tick later
    assert exact > 0  # some episode reached exactly `need` opportunities, where ">" would have gone on


def test_fidelity_fail_when_a_persona_states_the_hidden_norm():
    m = _checked(_run(scenario=P1, subject="scripted/learner", seed=0, agent_classes={"persona": _BlabbingPersona}))
    assert m.end_reason == "fidelity_fail" and m.tick == 1
    assert m.log.events[-1] == {**m.log.events[-1], "kind": "episode_end", "reason": "fidelity_fail"}


async def test_error_when_the_subject_backend_fails_for_good():
    context = RunContext(cache_mode="off")
    context.add("custom/broken", _Unauthorised("m"), max_attempts=1)
    m = SceneModel(scenario=P1, subject="custom/broken", seed=0, context=context)
    await m.arun()
    await context.aclose()
    _checked(m)
    end = m.log.events[-1]
    assert m.end_reason == "error" and end["reason"] == "error" and "401" in end["error"]


async def test_budget_when_the_budget_refuses_the_subject_call():
    context = RunContext(cache_mode="off", budget=_NoMoney())
    context.add("custom/unbounded", _Unauthorised("m"))
    m = SceneModel(scenario=P1, subject="custom/unbounded", seed=0, context=context)
    await m.arun()
    await context.aclose()
    _checked(m)
    assert m.end_reason == "budget" and m.log.events[-1]["reason"] == "budget"


def test_every_end_reason_is_produced_somewhere():
    # the tests above produce subject_silent, post_sanction, fidelity_fail, error and budget; max_turns here
    m = _checked(_run(scenario=P1, subject="scripted/learner", seed=0, max_turns=2), max_turns=2)
    assert m.end_reason == "max_turns" and m.tick == 2


def test_the_readme_snippet_shows_a_breach_a_sanction_and_a_repair():
    # README's first Python snippet: the learner breaches this scenario (with every seed tried), is mocked, repairs
    for seed in (0, 1, 2, 7):
        m = _run(scenario=README_SCENARIO, subject="scripted/learner", seed=seed)
        assert len(m.datacollector.get_table_dataframe("breaches")) >= 1, seed
        assert len(m.datacollector.get_table_dataframe("sanctions")) >= 1, seed
        assert len(m.datacollector.get_table_dataframe("repairs")) >= 1, seed


# -- the typed events are the contract check ------------------------------------------------------

#: Per kind, the fields DESIGN.md's event log lists (besides seq, turn, kind).
CONTRACT_FIELDS = {
    "episode_start": ("episode_id", "scenario_id", "tuple", "subject", "models", "seed"),
    "prompt": ("actor", "role", "reason", "messages"),
    "model_call": (
        "actor",
        "model",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "latency_s",
        "attempts",
        "cache_hit",
        "error",
    ),
    "action": ("actor", "action", "content", "target_turn_id", "turn_id", "parse_failure"),
    "episode_end": ("reason",),
}


async def test_parse_event_requires_every_contract_field():
    from pydantic import ValidationError

    from scene_sim.events import parse_event

    context = RunContext(cache_mode="off")
    m = SceneModel(scenario=P1, subject="fake/contract", seed=3, context=context, max_turns=2)
    await m.arun()
    await context.aclose()
    seen = set()
    for event in m.log.events:
        parse_event(event)  # what is written today parses
        for name in CONTRACT_FIELDS.get(event["kind"], ()):
            seen.add(event["kind"])
            broken = {k: v for k, v in event.items() if k != name}
            with pytest.raises(ValidationError):
                parse_event(broken)
    assert seen == set(CONTRACT_FIELDS)
