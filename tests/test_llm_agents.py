"""The language-model path of the agents, with in-process backends (no network).

These backends implement the real Backend interface and run behind the real
managed wrapper; they answer like a model would, good and bad.
"""

from __future__ import annotations

import asyncio
import json

from scene_sim.backends import Backend, BackendError, Capabilities, GenerateRequest, GenerateResponse, Usage
from scene_sim.context import RunContext
from scene_sim.studies.scene import SceneModel

from .eventlog_rules import check_episode


class ChattyModel(Backend):
    """Answers every action request with a message; every third answer is malformed."""

    provider = "test"

    def __init__(self) -> None:
        super().__init__("chatty")
        self.calls = 0
        self.seen: list[GenerateRequest] = []

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        self.calls += 1
        self.seen.append(request)
        if request.schema_name == "routing":
            order = request.schema["properties"]["order"]["items"]["enum"]
            return GenerateResponse(json.dumps({"order": order[::-1], "terminate": False}), usage=Usage(100, 10))
        if self.calls % 3 == 0:
            return GenerateResponse("I think I'd say hi!", usage=Usage(100, 5))  # not JSON: re-queried
        text = json.dumps(
            {"action": "message", "content": f"message {self.calls}", "target_turn_id": None, "sanction": False}
        )
        return GenerateResponse(text, usage=Usage(120, 12, cached_tokens=80))


class ReactingModel(Backend):
    """Reacts to the latest message it can see in the transcript; sometimes to a turn that does not exist."""

    provider = "test"

    def __init__(self) -> None:
        super().__init__("reacting")
        self.calls = 0

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        self.calls += 1
        transcript = request.messages[0]["content"]
        ids = [int(x) for x in __import__("re").findall(r"\[t(\d+)\] [^\n]*?: ", transcript)]
        target = 999 if self.calls % 4 == 0 else ids[-1]
        return GenerateResponse(json.dumps({"action": "react", "content": "👍", "target_turn_id": target}))


class BrokenModel(Backend):
    provider = "test"

    def __init__(self, kind: str = "fatal") -> None:
        super().__init__("broken")
        self.kind = kind

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        raise BackendError("401 invalid x-api-key", kind=self.kind, status=401)


def _episode(bank, context, **kw) -> SceneModel:
    m = SceneModel(scenario=kw.pop("scenario", next(iter(bank))), context=context, **kw)
    asyncio.run(m.arun())
    return m


def test_llm_personas_orchestrator_and_subject_follow_the_rules(bank):
    ctx = RunContext(cache_mode="off")
    model = ChattyModel()
    ctx.add("test/chatty", model)
    sc = next(iter(bank))
    m = _episode(
        bank, ctx, scenario=sc, subject="test/chatty", personas="test/chatty", orchestrator="test/chatty", max_turns=3
    )
    assert m.end_reason == "max_turns"
    personas = {c.name for c in sc.scaffold.channel.cast}
    assert check_episode(m.log.events, personas=personas, subject=sc.scaffold.subject.name, max_turns=3) == []
    calls = [e for e in m.log.events if e["kind"] == "model_call"]
    assert len(calls) == model.calls
    assert all(c["error"] is None and c["input_tokens"] > 0 for c in calls)
    # malformed answers are re-queried with the error, logged as 'requery' prompts
    requeries = [e for e in m.log.events if e["kind"] == "prompt" and e["reason"] == "requery"]
    assert requeries and "not a valid action" in requeries[0]["messages"][-1]["content"]
    # the orchestrator's reversed order is what the personas followed
    route = next(e for e in m.log.events if e["kind"] == "route")
    assert route["order"] == [c.name for c in sc.scaffold.channel.cast][::-1]
    # accounting per role reaches the run's summary
    summary = ctx.accounting()
    assert summary and "subject" in json.dumps(summary)


def test_invalid_reactions_are_requeried_then_become_logged_noops(bank):
    ctx = RunContext(cache_mode="off")
    ctx.add("test/reacting", ReactingModel())
    sc = next(s for s in bank if s.tuple.event != "standup")
    m = _episode(bank, ctx, scenario=sc, subject="test/reacting", max_turns=4)
    reacts = [
        e for e in m.log.events if e["kind"] == "action" and e["actor"] == m.subject_name and e["action"] == "react"
    ]
    assert reacts and all(m.world.get(e["target_turn_id"]).kind == "message" for e in reacts)
    requeries = [e for e in m.log.events if e["kind"] == "prompt" and e["reason"] == "requery"]
    assert any("does not exist" in r["messages"][-1]["content"] for r in requeries)


def test_a_model_that_never_answers_validly_gives_parse_failure_noops(bank):
    class Garbage(Backend):
        provider = "test"

        async def generate(self, request):
            return GenerateResponse('{"action": "shout", "content": 3}')

    ctx = RunContext(cache_mode="off")
    ctx.add("test/garbage", Garbage("garbage"))
    m = _episode(bank, ctx, subject="test/garbage", max_turns=2)
    subject_actions = [e for e in m.log.events if e["kind"] == "action" and e["actor"] == m.subject_name]
    assert subject_actions and all(e["action"] == "no-op" and e["parse_failure"] for e in subject_actions)
    assert m.end_reason in ("max_turns", "subject_silent")


def test_backend_failure_ends_the_episode_with_error_and_no_key(bank):
    ctx = RunContext(cache_mode="off")
    ctx.add("test/broken", BrokenModel())
    m = _episode(bank, ctx, subject="test/broken", max_turns=3)
    assert m.end_reason == "error"
    end = m.log.events[-1]
    assert end["kind"] == "episode_end" and "401" in end["error"]
    failed = [e for e in m.log.events if e["kind"] == "model_call" and e["error"]]
    assert len(failed) == 1 and failed[0]["attempts"] == 1


def test_local_style_backends_choose_from_closed_sets(bank):
    class Scorer(Backend):
        """Answers choices like a local model: always one of the options."""

        provider = "test"
        capabilities = Capabilities(structured_output=False, scores_choices=True)

        def __init__(self):
            super().__init__("scorer")
            self.n = 0

        async def generate(self, request):
            self.n += 1
            if request.choices is not None:
                return GenerateResponse(request.choices[self.n % len(request.choices)])
            return GenerateResponse('ok then, see you at 7"')

    ctx = RunContext(cache_mode="off")
    ctx.add("test/scorer", Scorer())
    sc = next(s for s in bank if s.tuple.event != "standup")
    m = _episode(
        bank, ctx, scenario=sc, subject="test/scorer", personas="test/scorer", orchestrator="test/scorer", max_turns=3
    )
    personas = {c.name for c in sc.scaffold.channel.cast}
    assert check_episode(m.log.events, personas=personas, subject=sc.scaffold.subject.name, max_turns=3) == []
    actions = [e for e in m.log.events if e["kind"] == "action" and e["turn"] >= 1 and not e["meta"].get("script")]
    assert not any(e["parse_failure"] for e in actions)
    assert {e["action"] for e in actions} >= {"message", "no-op"}
    assert all(e["content"] == "ok then, see you at 7" for e in actions if e["action"] == "message")


class CastModel(Backend):
    """Plays the whole cast: in each joint request the second listed member speaks; subjects pass."""

    provider = "test"

    def __init__(self) -> None:
        super().__init__("cast")
        self.requests: list[GenerateRequest] = []

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        self.requests.append(request)
        if request.schema_name == "cast_actions":
            names = request.schema["properties"]["actions"]["items"]["properties"]["actor"]["enum"]
            acts = [
                {"actor": n, "action": "no-op", "content": "", "target_turn_id": None, "sanction": False} for n in names
            ]
            if len(names) > 1:
                acts[1] = {**acts[1], "action": "message", "content": f"{names[1]} here"}
            return GenerateResponse(json.dumps({"actions": acts}))
        return GenerateResponse(json.dumps({"action": "no-op", "content": "", "target_turn_id": None}))


def test_joint_persona_calls_keep_the_rules_with_fewer_calls(bank):
    sc = next(iter(bank))
    counts = {}
    for mode in ("each", "joint"):
        ctx = RunContext(cache_mode="off")
        backend = CastModel()
        ctx.add("test/cast", backend)
        m = SceneModel(
            scenario=sc,
            subject="test/cast",
            personas="test/cast",
            orchestrator="scripted",
            context=ctx,
            seed=4,
            max_turns=4,
            persona_calls=mode,
        )
        asyncio.run(m.arun())
        personas = {c.name for c in sc.scaffold.channel.cast}
        assert check_episode(m.log.events, personas=personas, subject=sc.scaffold.subject.name, max_turns=4) == []
        counts[mode] = sum(e["kind"] == "model_call" for e in m.log.events)
        if mode == "joint":
            joint = [e for e in m.log.events if e["kind"] == "prompt" and e["actor"] == "cast"]
            assert joint and all(e["actors"] for e in joint)
            spoke = [
                e
                for e in m.log.events
                if e["kind"] == "action"
                and e["actor"] in personas
                and e["action"] == "message"
                and not e["meta"].get("script")
            ]
            assert spoke and all(e["content"] == f"{e['actor']} here" for e in spoke)
    assert counts["joint"] < counts["each"]
