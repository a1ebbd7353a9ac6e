"""The episode runtime: rules read off the event log, hidden fields, Mesa interop."""

from __future__ import annotations

import asyncio
import json
import re

import mesa
import pytest

from scene_sim.errors import SceneSimError
from scene_sim.studies.scene import SceneModel
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


def _hidden_strings(sc, taxonomy) -> list[str]:
    norm = taxonomy.norm(sc.tuple.norm)
    out = [sc.tuple.norm, norm.norm_text, *norm.compliance_signals, *norm.breach_signals]
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
                assert not re.search(r"\b" + re.escape(sc.tuple.norm) + r"\b", text)
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
