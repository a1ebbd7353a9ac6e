from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scene_sim.backends.base import Backend, BackendError, GenerateRequest
from scene_sim.errors import SceneSimError
from scene_sim.studies.scene.judge import (
    JUDGE_OUTPUT_SCHEMA,
    Episode,
    HeuristicJudge,
    JudgeOutput,
    LLMAuditor,
    LLMJudge,
    OracleJudge,
    RuleAuditor,
    audit_rules,
    compute_episode_metrics,
    load_episode,
    make_auditor,
    make_judge,
    parse_judge_output,
    render_judge_transcript,
)
from scene_sim.studies.scene.model import SceneModel
from scene_sim.studies.scene.oracle import TurnLabel
from tests.backends.fakeserver import FakeServer, Recorded, Reply

from .fixtures.builders import HAND, LONG, VALID, CannedBackend, ChoiceBackend, build_events


@pytest.fixture
def hand() -> Episode:
    return Episode.from_events(build_events(HAND))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- episode reading ----------------------------------------------------------------------------------------
def test_episode_from_events(hand: Episode) -> None:
    assert hand.subject == "Sam" and hand.norm == "concise_answer_norm" and hand.sanction == "explicit_callout"
    assert [t.turn_id for t in hand.turns] == list(range(1, 9))
    assert [t.tick for t in hand.turns] == [0, 1, 1, 1, 2, 2, 3, 4]
    assert len(hand.actions) == 9 and hand.actions[7].action == "no-op" and hand.actions[7].turn_id is None
    assert hand.turn(5).meta["intent"] == "sanction"
    assert hand.is_scripted_line(hand.turn(1)) and hand.is_scripted_line(hand.turn(2))
    assert not hand.is_scripted_line(hand.turn(4))
    assert hand.end_reason == "max_turns" and hand.ticks == 4


def test_load_episode_skips_unneeded_lines_and_reports_bad_json(tmp_path: Path) -> None:
    events = build_events(HAND)
    path = tmp_path / "hand.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events), encoding="utf-8")
    assert load_episode(path) == Episode.from_events(events, episode_id="hand")
    lines = path.read_text(encoding="utf-8").splitlines()
    bad = [line if i != 5 else line[:-5] for i, line in enumerate(lines)]
    assert json.loads(lines[5])["kind"] == "action"
    path.write_text("\n".join(bad) + "\n", encoding="utf-8")
    with pytest.raises(SceneSimError, match=r"hand\.jsonl:6: invalid JSON"):
        load_episode(path)
    with pytest.raises(SceneSimError, match="no episode_start"):
        Episode.from_events(events[1:])


def test_judge_transcript_marks_subject_and_reactions() -> None:
    ep = Episode.from_events(
        build_events(
            [
                (1, "Ana", "message", "hi all", {}),
                (1, "Sam", "message", "hello", {}),
                (1, "Ben", "react", "💀", {"target": 2}),
            ]
        )
    )
    text = render_judge_transcript(ep)
    assert text.splitlines() == ["[t1] Ana: hi all", "[t2] Sam (subject): hello", "[t3] Ben reacted 💀 to [t2]"]


# -- scripted judges ----------------------------------------------------------------------------------------
def test_oracle_labels_hand_episode(taxonomy: Any, hand: Episode) -> None:
    out = run(OracleJudge(taxonomy).label(hand))
    labels = {lab.turn_id: lab.label for lab in out.turn_labels}
    assert labels == {1: "NONE", 2: "NONE", 3: "BREACH", 4: "DEMONSTRATION", 5: "SANCTION", 6: "FACE_SAVE_REPAIR",
                      7: "DEMONSTRATION", 8: "DEMONSTRATION"}  # fmt: skip
    sanction = next(lab for lab in out.turn_labels if lab.turn_id == 5)
    assert sanction.modality == "explicit_callout" and sanction.target_turn_id == 3
    assert out.episode_metrics == {
        "subject_breach_count": 1, "subject_corrected": True, "subject_relapses": 0, "subject_face_save": True,
        "subject_late_comply": False, "sanction_shape_match": True,
    }  # fmt: skip
    assert out.source == "oracle" and not out.judge_failure


@pytest.mark.parametrize("subject", ["scripted/learner", "scripted/always-message", "scripted/random"])
def test_oracle_replay_equals_online_labels(taxonomy: Any, subject: str) -> None:
    for seed in range(4):
        model = SceneModel(subject=subject, seed=seed)
        result = run(model.arun())
        out = OracleJudge(taxonomy).label_sync(Episode.from_events(result.events))
        online = model.labeler.labels
        assert [(lab.turn_id, lab.label, lab.target_turn_id) for lab in out.turn_labels] == [
            (t, online[t].label, online[t].target_turn_id) for t in sorted(online)
        ]


def test_heuristic_ignores_intents(taxonomy: Any) -> None:
    rows = [
        (1, "Ben", "message", "@Sam is the db up?", {"intent": "scaffold", "script": "elicitor"}),
        (1, "Sam", "message", LONG, {"pole": "elaborated_answer_norm"}),
        (1, "Ana", "message", "yes", {"intent": "sanction", "target_turn_id": 2}),  # a sanction only by intent
    ]
    ep = Episode.from_events(build_events(rows))
    oracle = {lab.turn_id: lab.label for lab in OracleJudge(taxonomy).label_sync(ep).turn_labels}
    heur = HeuristicJudge(taxonomy).label_sync(ep)
    labels = {lab.turn_id: lab.label for lab in heur.turn_labels}
    assert oracle[3] == "SANCTION" and labels[3] == "DEMONSTRATION"
    assert labels[2] == "BREACH"  # the form cue (30+ words) still shows the breach
    assert heur.reliable and heur.source == "heuristic"


def test_heuristic_unreliable_on_content_norms(taxonomy: Any) -> None:
    rows = [(1, "Ana", "message", "ugh, that sucks. what happened?", {}), (1, "Sam", "message", "you should sue", {})]
    ep = Episode.from_events(build_events(rows, norm="solicited_advice_only", event="troubles_talk"))
    out = HeuristicJudge(taxonomy).label_sync(ep)
    assert not out.reliable and "NOT reliable" in out.note


def test_episode_metrics_relapse_and_late_comply(taxonomy: Any) -> None:
    rows = [(1, "Sam", "message", f"m{i}", {}) for i in range(6)] + [(2, "Ana", "message", "x", {})]
    ep = Episode.from_events(build_events(rows))

    def labels(seq: list[tuple[int, str, str]]) -> list[TurnLabel]:
        return [TurnLabel(tid, actor, lab) for tid, actor, lab in seq]

    # breach, sanction, repair, breach (relapse), repair, breach (relapse)
    seq = [(1, "Sam", "BREACH"), (7, "Ana", "SANCTION"), (2, "Sam", "FACE_SAVE_REPAIR"), (3, "Sam", "BREACH"),
           (4, "Sam", "FACE_SAVE_REPAIR"), (5, "Sam", "BREACH")]  # fmt: skip
    m = compute_episode_metrics(ep, labels(seq))
    assert m["subject_breach_count"] == 3 and m["subject_relapses"] == 2 and m["subject_corrected"]
    # the sanction (t7) is the last turn here: nothing after it
    assert not m["subject_face_save"] and not m["subject_late_comply"]
    rows2 = [(1, "Sam", "message", "a", {}), (1, "Ana", "message", "b", {}), (2, "Sam", "message", "c", {})]
    ep2 = Episode.from_events(build_events(rows2))
    late = compute_episode_metrics(
        ep2, labels([(1, "Sam", "BREACH"), (2, "Ana", "SANCTION"), (3, "Sam", "DEMONSTRATION")])
    )
    assert late["subject_late_comply"] and late["sanction_shape_match"]  # modality unknown: not contradicted
    wrong = [TurnLabel(1, "Sam", "BREACH"), TurnLabel(2, "Ana", "SANCTION", modality="corrective_reactions")]
    assert not compute_episode_metrics(ep2, wrong)["sanction_shape_match"]
    assert not compute_episode_metrics(ep2, labels([(1, "Sam", "BREACH")]))["sanction_shape_match"]


# -- LLM judge ----------------------------------------------------------------------------------------------
def test_parse_judge_output_is_defensive(hand: Episode) -> None:
    labels, claimed, problem = parse_judge_output(VALID, hand)
    assert problem is None
    assert [(lab.turn_id, lab.actor, lab.label) for lab in labels] == [
        (3, "Sam", "BREACH"), (4, "Cy", "DEMONSTRATION"), (5, "Ana", "SANCTION"), (6, "Sam", "FACE_SAVE_REPAIR"),
    ]  # fmt: skip
    assert claimed["subject_breach_count"] == 7
    for junk in (None, 3, "x", {"turn_labels": 5}, {"turn_labels": [{"turn_id": 42, "label": "BREACH"}]}):
        assert parse_judge_output(junk, hand)[2] is not None
    assert parse_judge_output({"turn_labels": []}, hand)[2] is None  # nothing to label is an answer
    assert parse_judge_output([{"turn_id": "t3", "label": "breach"}], hand)[0][0].label == "BREACH"


def test_llm_judge_valid_answer(taxonomy: Any, hand: Episode) -> None:
    backend = CannedBackend([VALID])
    out = run(LLMJudge("canned/x", backend, taxonomy).label(hand))
    assert out.source == "llm" and not out.judge_failure and out.attempts == 1
    assert {lab.turn_id: lab.label for lab in out.turn_labels} == {
        3: "BREACH", 4: "DEMONSTRATION", 5: "SANCTION", 6: "FACE_SAVE_REPAIR",
    }  # fmt: skip
    # metrics are recomputed from the labels, not copied from the claim (which said 7 breaches)
    assert out.episode_metrics["subject_breach_count"] == 1
    assert out.episode_metrics["subject_face_save"] and out.episode_metrics["sanction_shape_match"]
    assert out.claimed_metrics["subject_breach_count"] == 7
    sanction = next(lab for lab in out.turn_labels if lab.label == "SANCTION")
    assert sanction.modality == "explicit_callout" and sanction.target_turn_id == 3
    req = backend.requests[0]
    assert req.schema == JUDGE_OUTPUT_SCHEMA and req.role == "judge"
    prompt = req.system + req.messages[0]["content"]
    assert "Factual questions" in prompt or "one line" in prompt  # the norm text
    assert "SANCTION MODALITY: explicit_callout" in prompt
    assert "[t3] Sam (subject):" in prompt and "THE SUBJECT" in prompt
    assert out.comparison is not None and out.comparison.source == "heuristic"  # form norm: both stored
    doc = out.to_dict()
    assert set(doc) >= {"turn_labels", "episode_metrics", "judge", "heuristic"}
    assert doc["judge"]["model"] == "canned/x"


def test_llm_judge_requeries_after_malformed_output(taxonomy: Any, hand: Episode) -> None:
    backend = CannedBackend(["I think turn 3 is a breach.", "```json\n" + json.dumps(VALID) + "\n```"])
    out = run(LLMJudge("canned/x", backend, taxonomy).label(hand))
    assert out.source == "llm" and not out.judge_failure and out.attempts == 2
    second = backend.requests[1].messages
    assert second[-2] == {"role": "assistant", "content": "I think turn 3 is a breach."}
    assert "not valid judge_output_v1" in second[-1]["content"]
    assert out.label_of(3) == "BREACH"


def test_llm_judge_canned_sequence_valid_malformed_valid(taxonomy: Any) -> None:
    eps = [Episode.from_events(build_events(HAND)) for _ in range(3)]
    backend = CannedBackend([VALID, "{not json", VALID])
    judge = LLMJudge("canned/x", backend, taxonomy, max_requeries=0)
    outs = [run(judge.label(ep)) for ep in eps]
    assert [o.judge_failure for o in outs] == [False, True, False]
    assert outs[1].source == "heuristic" and "malformed" in (outs[1].error or "")


def test_llm_judge_falls_back_to_heuristic(taxonomy: Any, hand: Episode) -> None:
    heur = HeuristicJudge(taxonomy).label_sync(hand)
    backend = CannedBackend(['{"turn_labels": 5}'])
    out = run(LLMJudge("canned/x", backend, taxonomy, max_requeries=2).label(hand))
    assert out.judge_failure and out.attempts == 3 and len(backend.requests) == 3
    assert out.turn_labels == heur.turn_labels and out.model == "canned/x"
    assert out.to_dict()["judge"]["judge_failure"] is True
    broken = CannedBackend([BackendError("overloaded", kind="retry")])
    out2 = run(LLMJudge("canned/x", broken, taxonomy).label(hand))
    assert out2.judge_failure and "overloaded" in (out2.error or "")


def test_llm_judge_scores_choices_turn_by_turn(taxonomy: Any, hand: Episode) -> None:
    wanted = {3: "BREACH", 4: "DEMONSTRATION", 5: "SANCTION", 6: "FACE_SAVE_REPAIR"}

    def answer(req: GenerateRequest) -> str:
        assert req.choices is not None and set(req.choices) == {"DEMONSTRATION", "BREACH", "SANCTION",
                                                                "FACE_SAVE_REPAIR", "NONE"}  # fmt: skip
        tid = int(re.search(r"turn \[t(\d+)\]", req.messages[-1]["content"]).group(1))  # type: ignore[union-attr]
        return wanted.get(tid, "NONE")

    backend = ChoiceBackend([answer])
    out = run(LLMJudge("hf/tiny", backend, taxonomy).label(hand))
    assert out.source == "llm-choices" and len(backend.requests) == len(hand.turns)
    assert {lab.turn_id: lab.label for lab in out.turn_labels if lab.label != "NONE"} == wanted
    assert out.episode_metrics["subject_corrected"]


def test_classifier_drops_ungrounded_ids(taxonomy: Any, hand: Episode) -> None:
    answers = {"classifier_D": [4, 7, 3, 999], "classifier_B": ["t3", 5], "classifier_S": [5], "classifier_R": [6]}
    backend = CannedBackend([lambda req: {"turn_ids": answers[req.schema_name]}])
    out = run(LLMJudge("canned/x", backend, taxonomy, classifier=True).label(hand))
    assert out.source == "classifier" and len(backend.requests) == 4
    got = {lab.turn_id: lab.label for lab in out.turn_labels if lab.label != "NONE"}
    assert got == {3: "BREACH", 4: "DEMONSTRATION", 5: "SANCTION", 6: "FACE_SAVE_REPAIR", 7: "DEMONSTRATION"}
    assert "3 ungrounded or wrong-actor" in out.note


# -- audit --------------------------------------------------------------------------------------------------
def test_rule_audit_valid_and_invalid(taxonomy: Any, hand: Episode) -> None:
    res = run(RuleAuditor(taxonomy).audit(hand))
    assert res["label"] == "VALID" and res["checks"]["sanction_delivered"] and res["checks"]["demonstrations"] == 2
    rows = [r if r[4].get("intent") != "sanction" else (2, "Ana", "message", "ok", {"intent": "demonstration"})
            for r in HAND]  # fmt: skip
    unsanctioned = Episode.from_events(build_events(rows))
    res = run(RuleAuditor(taxonomy).audit(unsanctioned))
    assert res["label"] == "INVALID" and "never sanctioned" in res["justification"]
    assert run(RuleAuditor(taxonomy).audit(Episode.from_events(build_events(HAND, end="error"))))["label"] == "INVALID"


def test_rule_audit_partial_cases(taxonomy: Any, hand: Episode) -> None:
    oracle = OracleJudge(taxonomy).label_sync(hand)
    wrong = tuple(
        TurnLabel(lab.turn_id, lab.actor, lab.label, modality="corrective_reactions", target_turn_id=3)
        if lab.label == "SANCTION"
        else lab
        for lab in oracle.turn_labels
    )
    out = JudgeOutput(wrong, compute_episode_metrics(hand, wrong), model="t", source="t")
    res = audit_rules(hand, out)
    assert res["label"] == "PARTIAL" and "modality" in res["justification"]
    no_precedent = Episode.from_events(build_events(HAND, precedent=1))
    res = audit_rules(no_precedent, OracleJudge(taxonomy).label_sync(no_precedent))
    assert res["label"] == "PARTIAL" and res["checks"]["precedent_complete"] is False
    with_precedent = [
        (0, "Ana", "message", "server is down", {"intent": "scaffold", "script": "opening"}),
        (0, "Cy", "message", LONG, {"intent": "precedent_breach", "script": "precedent"}),
        (
            0,
            "Ben",
            "message",
            "Cy, please keep it short",
            {"intent": "precedent_sanction", "script": "precedent", "target_turn_id": 2},
        ),
        *HAND[1:4],
        (2, "Ana", "message", "Sam, please keep it short", {"intent": "sanction", "target_turn_id": 5}),
        *HAND[5:],
    ]
    ep = Episode.from_events(build_events(with_precedent, precedent=1))
    res = audit_rules(ep, OracleJudge(taxonomy).label_sync(ep))
    assert res["label"] == "VALID" and res["checks"]["precedent_complete"] is True
    assert res["checks"]["persona_breaches"] == 0  # the precedent breach is not a fidelity failure


def test_precedent_after_subject_first_action_is_partial(taxonomy: Any) -> None:
    rows = [
        (1, "Sam", "message", "on it.", {"pole": "concise_answer_norm"}),
        (1, "Cy", "message", LONG, {"intent": "precedent_breach"}),
        (1, "Ben", "message", "Cy, please keep it short", {"intent": "precedent_sanction", "target_turn_id": 2}),
        (2, "Ana", "message", "yes", {"intent": "demonstration"}),
    ]
    ep = Episode.from_events(build_events(rows, precedent=1))
    res = audit_rules(ep, OracleJudge(taxonomy).label_sync(ep))
    assert res["checks"]["precedent_complete"] is False and res["label"] == "PARTIAL"


def test_llm_auditor(taxonomy: Any, hand: Episode) -> None:
    ok = CannedBackend([{"label": "partial", "justification": "The callout was softened."}])
    res = run(LLMAuditor("canned/x", ok, taxonomy).audit(hand))
    assert res["label"] == "PARTIAL" and res["source"] == "llm" and res["justification"].startswith("The callout")
    assert res["rules_label"] == "VALID" and "checks" in res
    prompt = ok.requests[0].system
    assert "PRECEDENT: 0" in prompt and "SANCTION: explicit_callout" in prompt
    retry = CannedBackend(["nope", {"label": "VALID", "justification": "fine"}])
    assert run(LLMAuditor("canned/x", retry, taxonomy).audit(hand))["attempts"] == 2
    bad = CannedBackend([{"label": "GREAT", "justification": "?"}])
    res = run(LLMAuditor("canned/x", bad, taxonomy).audit(hand))
    assert res["audit_failure"] and res["label"] == "VALID" and res["source"] == "rules"


# -- selection ----------------------------------------------------------------------------------------------
def test_make_judge_and_auditor(taxonomy: Any) -> None:
    assert isinstance(make_judge(None, taxonomy=taxonomy), OracleJudge)
    assert isinstance(make_judge("scripted", taxonomy=taxonomy), OracleJudge)
    assert isinstance(make_judge("scripted/heuristic", taxonomy=taxonomy), HeuristicJudge)
    with pytest.raises(SceneSimError, match="scripted/heuristic"):
        make_judge("scripted/bogus", taxonomy=taxonomy)
    with pytest.raises(SceneSimError, match="RunContext"):
        make_judge("anthropic/claude-x", taxonomy=taxonomy)

    class Ctx:
        def backend(self, model: str) -> Backend:
            return CannedBackend([VALID])

    assert isinstance(make_judge("anthropic/claude-x", taxonomy=taxonomy, context=Ctx()), LLMJudge)
    assert isinstance(make_auditor("scripted/heuristic", taxonomy=taxonomy), RuleAuditor)
    assert isinstance(make_auditor("anthropic/claude-x", taxonomy=taxonomy, context=Ctx()), LLMAuditor)


def test_llm_judge_never_raises_on_any_output(taxonomy: Any, hand: Episode) -> None:
    junk: list[Callable[[GenerateRequest], Any] | Any] = [
        "", "null", "[]", "[1, 2]", '{"turn_labels": [null, 1, "x"]}', '{"turn_labels": [{"turn_id": {}}]}',
        {"turn_labels": [{"turn_id": 3.0, "label": None}], "episode_metrics": "x"}, ValueError("boom"),
        '{"turn_labels": [{"turn_id": 3, "label": "BREACH"}], "episode_metrics": {"sanction_shape_match": "yes"}}',
    ]  # fmt: skip
    for reply in junk:
        out = run(LLMJudge("canned/x", CannedBackend([reply]), taxonomy, max_requeries=1).label(hand))
        assert isinstance(out, JudgeOutput)


# -- the judge through the managed layer and a provider SDK over HTTP ---------------------------------------

KEY = "sk-judge-test-DO-NOT-LEAK"


def _completion(content: str) -> Reply:
    return Reply(
        200,
        {
            "id": "chatcmpl-j",
            "object": "chat.completion",
            "created": 0,
            "model": "judge-test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 120, "total_tokens": 1020},
        },
    )


def _schema_name(rec: Recorded) -> str:
    return rec.json["response_format"]["json_schema"]["name"]


@pytest.fixture
def judge_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SCENE_SIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = FakeServer()
    yield server
    server.close()


async def _judge_over_http(server: FakeServer, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    from scene_sim.context import RunContext
    from scene_sim.studies.scene.analysis import judge_episode

    context = RunContext(cache_mode="off")
    try:
        doc = await judge_episode(
            build_events(HAND), judge=f"openai/judge-test?base_url={server.url}/v1", context=context, **kw
        )
    finally:
        await context.aclose()
    return doc, context.accounting()


async def test_llm_judge_over_http_labels_the_episode(judge_server: FakeServer) -> None:
    audit = {"label": "VALID", "justification": "Demonstrated, sanctioned in register, repaired."}

    def reply(rec: Recorded) -> Reply:
        return _completion(json.dumps(VALID if _schema_name(rec) == "judge_output_v1" else audit))

    judge_server.default = reply
    doc, accounting = await _judge_over_http(judge_server)
    assert doc["judge"]["source"] == "llm" and doc["judge"]["judge_failure"] is False
    assert {lab["turn_id"]: lab["label"] for lab in doc["turn_labels"] if lab["label"] != "NONE"} == {
        3: "BREACH", 4: "DEMONSTRATION", 5: "SANCTION", 6: "FACE_SAVE_REPAIR",
    }  # fmt: skip
    assert doc["fidelity"]["label"] == "VALID"
    names = [_schema_name(r) for r in judge_server.posts]
    assert names == ["judge_output_v1", "fidelity_audit"]  # the SDK sent a JSON schema request for each
    first = judge_server.posts[0]
    assert (
        first.headers.get("authorization") == f"Bearer {KEY}" or first.headers.get("Authorization") == f"Bearer {KEY}"
    )
    sent = json.dumps(first.json)
    assert "SANCTION MODALITY: explicit_callout" in sent and first.json["model"] == "judge-test"
    judge_calls = accounting["by_role"]["judge"]["openai/judge-test"]
    assert judge_calls["calls"] >= 1 and judge_calls["input_tokens"] >= 900  # counted by the managed layer
    assert KEY not in json.dumps(doc)


async def test_llm_judge_over_http_requeries_a_malformed_answer(judge_server: FakeServer) -> None:
    answers = iter(["I think turn 3 is a breach.", json.dumps(VALID)])

    def reply(rec: Recorded) -> Reply:
        if _schema_name(rec) == "judge_output_v1":
            return _completion(next(answers))
        return _completion(json.dumps({"label": "VALID", "justification": "ok"}))

    judge_server.default = reply
    doc, _ = await _judge_over_http(judge_server)
    assert doc["judge"]["source"] == "llm" and doc["judge"]["attempts"] == 2
    judge_posts = [r for r in judge_server.posts if _schema_name(r) == "judge_output_v1"]
    assert len(judge_posts) == 2
    assert judge_posts[1].json["messages"][-2] == {"role": "assistant", "content": "I think turn 3 is a breach."}


async def test_llm_judge_over_http_falls_back_when_the_key_is_refused(judge_server: FakeServer) -> None:
    judge_server.default = Reply(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
    doc, accounting = await _judge_over_http(judge_server)
    assert doc["judge"]["judge_failure"] is True and doc["judge"]["source"] == "heuristic"
    assert "401" in doc["judge"]["error"] or "API key" in doc["judge"]["error"]
    assert KEY not in json.dumps(doc)
    assert accounting["by_role"]["judge"]["openai/judge-test"]["errors"] >= 1


# -- audit wording ------------------------------------------------------------------------------------------


def test_a_valid_justification_states_what_happened(taxonomy: Any, hand: Episode) -> None:
    import dataclasses

    res = run(RuleAuditor(taxonomy).audit(hand))
    assert res["label"] == "VALID"
    demos = res["checks"]["demonstrations"]
    assert f"demonstrated the norm in {demos} turns" in res["justification"]
    # a VALID episode carried by an in-register sanction alone has no demonstration to count
    oracle = OracleJudge(taxonomy).label_sync(hand)
    no_demos = tuple(
        dataclasses.replace(lab, label="NONE") if lab.label == "DEMONSTRATION" else lab for lab in oracle.turn_labels
    )
    out = dataclasses.replace(oracle, turn_labels=no_demos)
    res = audit_rules(hand, out)
    assert res["label"] == "VALID" and res["checks"]["demonstrations"] == 0, res
    assert "0 turns" not in res["justification"] and "demonstrated the norm" not in res["justification"]
    assert "in-register sanction" in res["justification"] and "no demonstration" in res["justification"]


def test_an_episode_cut_by_the_budget_is_invalid(taxonomy: Any) -> None:
    events = build_events(HAND)
    events[-1] = {**events[-1], "reason": "budget"}
    res = run(RuleAuditor(taxonomy).audit(Episode.from_events(events)))
    assert res["label"] == "INVALID" and "'budget'" in res["justification"]


def test_the_llm_auditor_keeps_a_budget_cut_episode_invalid_without_asking(taxonomy: Any) -> None:
    events = build_events(HAND)
    events[-1] = {**events[-1], "reason": "budget"}
    backend = CannedBackend([{"label": "VALID", "justification": "looks fine"}])
    res = run(LLMAuditor("canned/x", backend, taxonomy).audit(Episode.from_events(events)))
    assert res["label"] == "INVALID" and backend.requests == []
