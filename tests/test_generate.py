"""The two-stage scenario generator, with offline canned generator backends."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import scene_sim.studies.scene.generate as gen
from scene_sim.backends.base import Backend, BackendError, GenerateRequest, GenerateResponse
from scene_sim.errors import SceneSimError
from scene_sim.studies.scene.checks import lint_scenario
from scene_sim.studies.scene.generate import (
    REJECTION_REASONS,
    generate_scenarios,
    hidden_schema,
    plan_scenarios,
    scaffold_schema,
)
from scene_sim.studies.scene.scenario import Scenario, load_scenarios
from scene_sim.studies.scene.taxonomy import SceneTuple

# Bank scenarios whose (event, elicitor) pair is unique among these picks, so a
# norm-blind stage-1 request identifies one of them. Both precedent values,
# every sanction modality, an event without reactions (standup).
PICKS = [
    "bug_report__concise_answer_norm__address_explicit__silent_ignore__p1",
    "event_planning__concise_answer_norm__open_query__corrective_reactions__p0",
    "exam_results__phatic_reaction_norm__open_query__mocking_imitation__p1",
    "artefact_share__phatic_reaction_norm__noticeable_absence__corrective_reactions__p1",
    "exam_results__instrumental_support_default__noticeable_absence__silent_ignore__p0",
    "event_planning__formal_address__false_assertion__explicit_callout__p0",
    "advice_request__elaborated_answer_norm__address_by_role__off_record_sanction__p1",
    "standup__elaborated_answer_norm__open_query__explicit_callout__p0",
    "relationship_drama__bystander_intervention_norm__private_holding__topic_shift_repair__p0",
]
MODEL = "canned/test"


@pytest.fixture(scope="module")
def picks(bank) -> list[Scenario]:
    return [bank.get(i) for i in PICKS]


def use_tuples(monkeypatch: pytest.MonkeyPatch, tuples: list[SceneTuple]) -> None:
    """Make the sampler return ``tuples`` (first n of them)."""
    monkeypatch.setattr(gen, "sample_tuples", lambda taxonomy, n, seed=0: list(tuples[:n]))


def scaffold_output(s: Scenario) -> dict[str, Any]:
    """What a good stage-1 answer for the bank scenario ``s`` looks like."""
    sc = s.scaffold
    return {
        "channel": {
            "description": sc.channel.description,
            "cast": [{"name": c.name, "bio_oneline": c.bio_oneline} for c in sc.channel.cast],
        },
        "subject": sc.subject.model_dump(),
        "transcript": {
            "opening_turns": [{"actor": t.actor, "content": t.content} for t in sc.transcript.opening_turns],
            "elicitor_turn": {
                "actor": sc.transcript.elicitor_turn.actor,
                "content": sc.transcript.elicitor_turn.content,
            },
        },
    }


def hidden_output(s: Scenario, precedent: int | None = None) -> dict[str, Any]:
    """What a good stage-2 answer for ``s`` looks like (optionally for the other precedent value)."""
    precedent = s.tuple.precedent if precedent is None else precedent
    out: dict[str, Any] = {"personas": [], "fidelity_criteria": s.hidden.fidelity_criteria.model_dump()}
    if precedent:
        out["precedent_demonstrator"] = s.hidden.precedent_demonstrator
    for p in s.hidden.personas:
        entry = {
            "name": p.name,
            "outline": p.outline,
            "in_register_lines": list(p.in_register_lines),
            "sanction_lines": list(p.sanction_lines),
        }
        if precedent:
            entry["precedent_lines_or_null"] = list(p.precedent_lines_or_null or [])
        out["personas"].append(entry)
    return out


Hook = Callable[[Scenario, GenerateRequest, int], Any]


class Canned(Backend):
    """An offline generator: answers each stage from the bank scenario the request is about.

    ``scaffold`` / ``hidden`` hooks get (bank scenario, request, attempt index
    from 0 for that scenario and stage) and return a str (sent as is), a
    JSON value (dumped), or ``GenerateResponse``. Default: the good answer.
    """

    provider = "canned"

    def __init__(self, scenarios: list[Scenario], *, scaffold: Hook | None = None, hidden: Hook | None = None) -> None:
        super().__init__("test")
        self.by_pair = {(s.tuple.event, s.tuple.elicitor): s for s in scenarios}
        self.scenarios = scenarios
        self.scaffold_hook = scaffold
        self.hidden_hook = hidden
        self.requests: list[GenerateRequest] = []
        self.attempts: Counter[tuple[str, str]] = Counter()

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        self.requests.append(request)
        user = request.messages[0]["content"]
        if request.schema_name == "scaffold":
            event = re.search(r"^EVENT: (\w+)", user, re.M)[1]
            elicitor = re.search(r"^ELICITOR: (\w+)", user, re.M)[1]
            s = self.by_pair[(event, elicitor)]
            n = self.attempts[("scaffold", s.id)]
            self.attempts[("scaffold", s.id)] += 1
            out = self.scaffold_hook(s, request, n) if self.scaffold_hook else scaffold_output(s)
        else:
            s = next(
                x
                for x in self.scenarios
                if json.dumps(x.scaffold.channel.description, ensure_ascii=False)[1:-1] in user
            )
            precedent = int(re.search(r"^PRECEDENT: (\d)", user, re.M)[1])
            n = self.attempts[("hidden", s.id)]
            self.attempts[("hidden", s.id)] += 1
            out = self.hidden_hook(s, request, n) if self.hidden_hook else hidden_output(s, precedent)
        if isinstance(out, GenerateResponse):
            return out
        text = out if isinstance(out, str) else json.dumps(out, ensure_ascii=False)
        return GenerateResponse(text=text, model=MODEL)

    def stage_requests(self, stage: str) -> list[GenerateRequest]:
        return [r for r in self.requests if r.schema_name == stage]


async def run(tmp_path: Path, backend: Backend, n: int, name: str = "out.jsonl", **kw: Any) -> Any:
    kw.setdefault("progress", False)
    return await generate_scenarios(tmp_path / name, tuples=n, model=MODEL, backend=backend, **kw)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- planning --------------------------------------------------------------------------


def test_same_seed_same_tuples_and_ids(taxonomy):
    a = plan_scenarios(taxonomy, 12, reps=2, seed=7)
    b = plan_scenarios(taxonomy, 12, reps=2, seed=7)
    assert a == b and [p.id for p in a] == [p.id for p in b]
    assert len({p.id for p in a}) == 24
    for p in a:
        t = p.tuple
        assert p.id == f"gen__{t.event}__{t.norm}__{t.elicitor}__{t.sanction}__p{t.precedent}__s7r{p.rep}"
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", p.id) and len(p.id) <= 120
        taxonomy.check_tuple(t)
    assert [p.rep for p in a[:4]] == [0, 1, 0, 1]
    # greedy sampler: a bigger plan extends a smaller one
    assert [p.id for p in plan_scenarios(taxonomy, 5, reps=2, seed=7)] == [p.id for p in a[:10]]
    assert [p.tuple for p in plan_scenarios(taxonomy, 12, seed=8)] != [p.tuple for p in a[::2]]


def test_bad_arguments_are_one_line_errors(taxonomy, tmp_path):
    with pytest.raises(SceneSimError, match="--tuples"):
        plan_scenarios(taxonomy, 0)
    with pytest.raises(SceneSimError, match="--reps"):
        plan_scenarios(taxonomy, 3, reps=0)
    with pytest.raises(SceneSimError, match="longer than"):
        plan_scenarios(taxonomy, 3, seed=10**80)


async def test_output_must_be_jsonl(tmp_path, picks):
    with pytest.raises(SceneSimError, match=r"\.jsonl"):
        await generate_scenarios(tmp_path / "x.json", tuples=1, model=MODEL, backend=Canned(picks), progress=False)


# -- the happy path --------------------------------------------------------------------


async def test_valid_outputs_are_written_and_load(tmp_path, monkeypatch, picks, taxonomy):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    backend = Canned(picks)
    summary = await run(tmp_path, backend, len(picks), seed=3)
    assert (summary.planned, summary.written, summary.rejected, summary.skipped_existing) == (
        len(picks),
        len(picks),
        0,
        0,
    )
    assert summary.rejections_by_reason == {} and summary.calls == 2 * len(picks)

    loaded = load_scenarios(tmp_path / "out.jsonl", taxonomy=taxonomy)
    assert sorted(loaded.ids) == sorted(p.id for p in plan_scenarios(taxonomy, len(picks), seed=3))
    by_tuple = {s.scene_tuple: s for s in picks}
    for s in loaded:
        original = by_tuple[s.scene_tuple]
        assert s.id.startswith("gen__") and s.id.endswith("__s3r0")
        assert s.source == f"generated:{MODEL}"
        assert s.scaffold == original.scaffold
        assert {p.name: p for p in s.hidden.personas} == {p.name: p for p in original.hidden.personas}
        assert s.hidden.precedent_demonstrator == original.hidden.precedent_demonstrator
        assert lint_scenario(s, taxonomy) == []


async def test_stage_one_is_norm_blind_and_stage_two_sees_the_frozen_scaffold(tmp_path, monkeypatch, picks, taxonomy):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    backend = Canned(picks)
    await run(tmp_path, backend, len(picks))
    for r in backend.stage_requests("scaffold"):
        prompt = (r.system or "") + "\n".join(m["content"] for m in r.messages)
        for norm in taxonomy.norms.values():
            assert norm.id not in prompt and norm.norm_text not in prompt
        for sanction in taxonomy.sanctions:
            assert sanction not in prompt
        assert "PRECEDENT" not in prompt
        assert r.schema == scaffold_schema() and r.role == "generator"
    for s in picks:
        [r] = [
            r
            for r in backend.stage_requests("hidden_spec")
            if s.scaffold.subject.private_knowledge in r.messages[0]["content"]
        ]
        user = r.messages[0]["content"]
        assert f"NORM: {s.tuple.norm}" in user and taxonomy.norm(s.tuple.norm).norm_text in user
        assert f"SANCTION: {s.tuple.sanction}" in user and f"PRECEDENT: {s.tuple.precedent}" in user
        assert r.schema is not None and s.tuple.sanction in (r.system or "")


async def test_reps_are_distinct_replicates(tmp_path, monkeypatch, picks, taxonomy):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    backend = Canned(picks)
    summary = await run(tmp_path, backend, 2, reps=2)
    assert summary.written == 4
    ids = [r["id"] for r in records(tmp_path / "out.jsonl")]
    assert sorted(i[-2:] for i in ids) == ["r0", "r0", "r1", "r1"]
    for stage in ("scaffold", "hidden_spec"):
        assert sorted(r.replicate for r in backend.stage_requests(stage)) == [0, 0, 1, 1]
    load_scenarios(tmp_path / "out.jsonl", taxonomy=taxonomy)


async def test_tuples_sharing_event_and_elicitor_share_one_stage_one_call(tmp_path, monkeypatch, picks):
    s = picks[0]  # precedent 1
    other = SceneTuple(s.tuple.event, s.tuple.norm, s.tuple.elicitor, s.tuple.sanction, 0)
    use_tuples(monkeypatch, [s.scene_tuple, other])
    backend = Canned(picks)
    summary = await run(tmp_path, backend, 2)
    assert summary.written == 2
    assert len(backend.stage_requests("scaffold")) == 1 and len(backend.stage_requests("hidden_spec")) == 2
    assert summary.calls == 3


# -- rejections ------------------------------------------------------------------------


def leaky(s: Scenario, request: GenerateRequest, n: int) -> Any:
    out = scaffold_output(s)
    out["channel"]["description"] += " The group rules: keep it friendly."
    return out


async def test_leaking_scaffold_is_regenerated_then_rejected(tmp_path, monkeypatch, picks):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    backend = Canned(picks, scaffold=leaky)
    summary = await run(tmp_path, backend, 1, max_attempts=3)
    assert (summary.written, summary.rejected) == (0, 1)
    assert summary.rejections_by_reason == {"leak": 3} and summary.rejected_by_reason == {"leak": 1}
    assert [r.final for r in summary.rejections] == [False, False, True]
    assert backend.stage_requests("hidden_spec") == []
    assert not (tmp_path / "out.jsonl").exists()  # nothing written: no empty file left behind
    first, second, third = backend.stage_requests("scaffold")
    assert len(first.messages) == 1 and len(second.messages) == 3
    assert "'rules'" in second.messages[-1]["content"] and "attempt 1 of 3" in second.messages[-1]["content"]
    assert "attempt 2 of 3" in third.messages[-1]["content"]
    assert second.messages != third.messages  # every attempt is its own cache entry
    assert {r.replicate for r in (first, second, third)} == {0}


async def test_leak_then_clean_scaffold_is_accepted(tmp_path, monkeypatch, picks, taxonomy):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    backend = Canned(picks, scaffold=lambda s, r, n: leaky(s, r, n) if n == 0 else scaffold_output(s))
    summary = await run(tmp_path, backend, 1)
    assert (summary.written, summary.rejected, summary.rejections_by_reason) == (1, 0, {"leak": 1})
    [s] = load_scenarios(tmp_path / "out.jsonl", taxonomy=taxonomy)
    assert s.scaffold == picks[0].scaffold


async def test_norm_key_terms_count_as_leaks(tmp_path, monkeypatch, picks):
    s = picks[0]  # concise_answer_norm; its partner's key terms count too
    use_tuples(monkeypatch, [s.scene_tuple])

    def hook(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = scaffold_output(s)
        out["transcript"]["opening_turns"][0]["content"] = "can you elaborate on the spike"
        return out

    summary = await run(tmp_path, Canned(picks, scaffold=hook), 1, max_attempts=1)
    assert summary.rejected_by_reason == {"leak": 1} and "elaborate" in summary.rejections[0].detail


async def test_unparseable_and_schema_broken_outputs(tmp_path, monkeypatch, picks):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    answers = ["Sure! Here is a lovely chat opening.", {"channel": {"description": "x"}}]
    backend = Canned(picks, scaffold=lambda s, r, n: answers[n] if n < 2 else scaffold_output(s))
    summary = await run(tmp_path, backend, 1)
    assert summary.written == 1 and summary.rejections_by_reason == {"parse": 1, "schema": 1}

    backend = Canned(picks, scaffold=lambda s, r, n: "not json at all {")
    summary = await run(tmp_path, backend, 1, name="b.jsonl", max_attempts=2)
    assert (summary.rejected, summary.rejected_by_reason) == (1, {"parse": 1})

    def counts_wrong(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = scaffold_output(s)
        out["transcript"]["opening_turns"] = out["transcript"]["opening_turns"][:2]
        return out

    summary = await run(tmp_path, Canned(picks, scaffold=counts_wrong), 1, name="c.jsonl", max_attempts=1)
    assert summary.rejected_by_reason == {"schema": 1} and "opening_turns" in summary.rejections[0].detail

    summary = await run(
        tmp_path, Canned(picks, hidden=lambda s, r, n: {"personas": "three"}), 1, name="d.jsonl", max_attempts=1
    )
    assert summary.rejected_by_reason == {"schema": 1}


async def test_names_and_cast_checks(tmp_path, monkeypatch, picks):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])

    def dup(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = scaffold_output(s)
        out["channel"]["cast"][1]["name"] = out["channel"]["cast"][0]["name"]
        return out

    def subject_in_cast(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = scaffold_output(s)
        out["subject"]["name"] = out["channel"]["cast"][0]["name"]
        return out

    def stranger(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = scaffold_output(s)
        out["transcript"]["elicitor_turn"]["actor"] = "Zebedee"
        return out

    def hidden_renamed(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = hidden_output(s)
        out["personas"][0]["name"] = "Zebedee"
        return out

    def hidden_twice(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = hidden_output(s)
        out["personas"][1] = dict(out["personas"][0])
        return out

    cases = [
        ({"scaffold": dup}, "names"),
        ({"scaffold": subject_in_cast}, "names"),
        ({"scaffold": stranger}, "cast"),
        ({"hidden": hidden_renamed}, "cast"),
        ({"hidden": hidden_twice}, "names"),
    ]
    for i, (hooks, reason) in enumerate(cases):
        summary = await run(tmp_path, Canned(picks, **hooks), 1, name=f"{i}.jsonl", max_attempts=2)
        assert (summary.written, summary.rejected_by_reason) == (0, {reason: 1}), (i, summary.rejections)
        assert summary.rejections_by_reason == {reason: 2}


async def test_stage_two_cannot_edit_the_scaffold(tmp_path, monkeypatch, picks, taxonomy):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])

    def edited(s: Scenario, r: GenerateRequest, n: int) -> Any:
        scaffold = s.scaffold.model_dump(mode="json")
        scaffold["channel"]["description"] = "A totally different channel."
        return {"scaffold": scaffold, "tuple": s.tuple.model_dump(), "hidden": hidden_output(s)}

    summary = await run(tmp_path, Canned(picks, hidden=edited), 1)
    assert (summary.written, summary.rejections_by_reason) == (0, {"scaffold_edit": 3})

    def flat_edit(s: Scenario, r: GenerateRequest, n: int) -> Any:
        return {**hidden_output(s), "subject": {**s.scaffold.subject.model_dump(), "bio_oneline": "someone else"}}

    summary = await run(tmp_path, Canned(picks, hidden=flat_edit), 1, name="flat.jsonl", max_attempts=1)
    assert summary.rejected_by_reason == {"scaffold_edit": 1}

    def edit_then_echo(s: Scenario, r: GenerateRequest, n: int) -> Any:
        if n == 0:
            return edited(s, r, n)
        # an identical echo (modulo whitespace) of the frozen scaffold is fine
        scaffold = s.scaffold.model_dump(mode="json")
        scaffold["channel"]["description"] = "  " + scaffold["channel"]["description"] + "\n"
        return {"scaffold": scaffold, "hidden": hidden_output(s)}

    summary = await run(tmp_path, Canned(picks, hidden=edit_then_echo), 1, name="ok.jsonl")
    assert (summary.written, summary.rejections_by_reason) == (1, {"scaffold_edit": 1})
    [s] = load_scenarios(tmp_path / "ok.jsonl", taxonomy=taxonomy)
    assert s.scaffold == picks[0].scaffold  # the frozen scaffold, never stage 2's


async def test_precedent_mismatch_is_rejected(tmp_path, monkeypatch, picks):
    p1, p0 = picks[0], picks[1]
    assert (p1.tuple.precedent, p0.tuple.precedent) == (1, 0)
    use_tuples(monkeypatch, [p1.scene_tuple])
    summary = await run(tmp_path, Canned(picks, hidden=lambda s, r, n: hidden_output(s, 0)), 1, max_attempts=2)
    assert summary.rejections_by_reason == {"precedent": 2} and summary.rejected == 1

    use_tuples(monkeypatch, [p0.scene_tuple])
    donor = hidden_output(p1)

    def with_precedent(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = hidden_output(s, 1)
        out["precedent_demonstrator"] = out["personas"][0]["name"]
        out["personas"][0]["precedent_lines_or_null"] = donor["personas"][2]["precedent_lines_or_null"]
        out["personas"][1]["precedent_lines_or_null"] = ["react:🙄"]
        return out

    summary = await run(tmp_path, Canned(picks, hidden=with_precedent), 1, name="b.jsonl", max_attempts=1)
    assert summary.rejected_by_reason == {"precedent": 1}


async def test_wrong_modality_sanction_lines_are_rejected(tmp_path, monkeypatch, picks):
    corrective = picks[1]  # corrective_reactions: reactions, no text
    silent = picks[4]  # silent_ignore: no reply naming the subject
    assert corrective.tuple.sanction == "corrective_reactions" and silent.tuple.sanction == "silent_ignore"

    def texting(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = hidden_output(s)
        for p in out["personas"]:
            if p["sanction_lines"]:
                p["sanction_lines"] = ["lol what was that"]
        return out

    def naming(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = hidden_output(s)
        out["personas"][0]["sanction_lines"] = ["{subject} that was way off, keep it short please"]
        return out

    for i, (s, hook) in enumerate([(corrective, texting), (silent, naming)]):
        use_tuples(monkeypatch, [s.scene_tuple])
        summary = await run(tmp_path, Canned(picks, hidden=hook), 1, name=f"{i}.jsonl", max_attempts=2)
        assert summary.rejections_by_reason == {"sanction_modality": 2}, summary.rejections
        assert "does not read as" in summary.rejections[0].detail

    use_tuples(monkeypatch, [corrective.scene_tuple])

    def no_sanctions(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = hidden_output(s)
        for p in out["personas"]:
            p["sanction_lines"] = []
        return out

    summary = await run(tmp_path, Canned(picks, hidden=no_sanctions), 1, name="none.jsonl", max_attempts=1)
    assert summary.rejected_by_reason == {"sanction_modality": 1}


async def test_reactions_in_a_chat_without_reactions_are_rejected(tmp_path, monkeypatch, picks):
    standup = picks[7]
    assert standup.tuple.event == "standup"
    use_tuples(monkeypatch, [standup.scene_tuple])

    def reacting(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = hidden_output(s)
        out["personas"][0]["in_register_lines"].append("react:👍")
        return out

    summary = await run(tmp_path, Canned(picks, hidden=reacting), 1, max_attempts=1)
    assert summary.rejected_by_reason == {"demonstration": 1} and "no emoji reactions" in summary.rejections[0].detail


async def test_in_register_breaches_are_rejected(tmp_path, monkeypatch, picks):
    s = picks[0]  # concise_answer_norm
    use_tuples(monkeypatch, [s.scene_tuple])
    long = " ".join(["so basically the whole checkout path depends on the validator and"] * 4)

    def rambling(s: Scenario, r: GenerateRequest, n: int) -> Any:
        out = hidden_output(s)
        out["personas"][0]["in_register_lines"] = [long]
        return out

    summary = await run(tmp_path, Canned(picks, hidden=rambling), 1, max_attempts=1)
    assert summary.rejected_by_reason == {"demonstration": 1}
    assert "reads as a breach" in summary.rejections[0].detail


# -- nothing crashes -------------------------------------------------------------------

GARBAGE: list[Any] = [
    "",
    "   ",
    "null",
    "[]",
    "42",
    '"a string"',
    "{",
    '```json\n{"channel": 3}\n```',
    "\x00\x01\x02",
    "🙃" * 500,
    "x" * 20000,
    {"channel": None, "transcript": [], "subject": 7},
    {"channel": {"description": "", "cast": [{"name": None}]}},
    {"channel": {"description": "d", "cast": [{"name": "A", "bio_oneline": "b"}] * 3}},
    {"personas": [{"name": 1, "outline": []}], "fidelity_criteria": "x"},
    {"personas": [], "precedent_demonstrator": {"a": 1}},
    {"hidden": "nope", "scaffold": None},
    {"hidden": {"personas": None}},
    {"scaffold": [1, 2, 3]},
    {"a": {"b": {"c": {"d": [[[[[]]]]]}}}},
    [{"channel": 1}],
]


def garbage(rng: random.Random) -> Hook:
    def hook(s: Scenario, r: GenerateRequest, n: int) -> Any:
        item = rng.choice(GARBAGE)
        if rng.random() < 0.3 and not isinstance(item, str):  # a structured-output provider's parsed object
            return GenerateResponse(text="", parsed=item, model=MODEL)
        return item

    return hook


async def test_garbage_never_crashes(tmp_path, monkeypatch, picks):
    rng = random.Random(0)
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    for i, hooks in enumerate([{"scaffold": garbage(rng)}, {"hidden": garbage(rng)}]):
        summary = await run(tmp_path, Canned(picks, **hooks), len(picks), name=f"{i}.jsonl", max_attempts=3)
        assert (summary.written, summary.rejected) == (0, len(picks))
        assert set(summary.rejections_by_reason) <= set(REJECTION_REASONS) - {"error"}, summary.rejections
        assert sum(summary.rejections_by_reason.values()) == 3 * len(picks)


class Garbage(Backend):
    provider = "garbage"

    def __init__(self) -> None:
        super().__init__("x")
        self.rng = random.Random(1)
        self.calls = 0

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        self.calls += 1
        item = self.rng.choice(GARBAGE)
        return GenerateResponse(text=item if isinstance(item, str) else json.dumps(item), model="garbage/x")


async def test_garbage_with_the_real_sampler(tmp_path, taxonomy):
    backend = Garbage()
    summary = await run(tmp_path, backend, 10, seed=5, max_attempts=2)
    assert (summary.planned, summary.written, summary.rejected) == (10, 0, 10)
    assert "error" not in summary.rejections_by_reason
    assert summary.calls == backend.calls <= 20
    assert not (tmp_path / "out.jsonl").exists()  # nothing written: no empty file left behind


class Failing(Backend):
    provider = "failing"

    def __init__(self, exc: BaseException) -> None:
        super().__init__("x")
        self.exc = exc

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        raise self.exc


async def test_backend_errors(tmp_path, monkeypatch, picks):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    for i, exc in enumerate([BackendError("overloaded", kind="retry"), RuntimeError("sdk hiccup")]):
        summary = await run(tmp_path, Failing(exc), 3, name=f"{i}.jsonl")
        assert (summary.rejected, summary.rejected_by_reason) == (3, {"backend": 3})
    with pytest.raises(SceneSimError, match="invalid api key"):
        await run(tmp_path, Failing(BackendError("invalid api key", kind="fatal")), 3, name="f.jsonl")


# -- resume ----------------------------------------------------------------------------


async def test_resume_after_a_crash_with_a_torn_last_line(tmp_path, monkeypatch, picks, taxonomy):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    out = tmp_path / "out.jsonl"
    first = await run(tmp_path, Canned(picks), 5)
    assert first.written == 5
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [json.loads(x)["id"] for x in lines[:2]]
    out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2], encoding="utf-8")  # crash mid-write

    backend = Canned(picks)
    summary = await run(tmp_path, backend, 5)
    assert (summary.skipped_existing, summary.written, summary.rejected) == (2, 3, 0)
    assert len(backend.stage_requests("scaffold")) == 3  # finished ids cost nothing
    ids = [r["id"] for r in records(out)]
    assert ids[:2] == kept and sorted(ids) == sorted(p.id for p in plan_scenarios(taxonomy, 5))
    assert len(load_scenarios(out, taxonomy=taxonomy)) == 5

    again = Canned(picks)
    summary = await run(tmp_path, again, 5)
    assert (summary.skipped_existing, summary.written, summary.calls) == (5, 0, 0) and again.requests == []

    more = await run(tmp_path, Canned(picks), 7)  # a bigger plan extends the file
    assert (more.skipped_existing, more.written) == (5, 2)
    assert len(load_scenarios(out, taxonomy=taxonomy)) == 7


async def test_unterminated_complete_last_line_is_kept(tmp_path, monkeypatch, picks):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    out = tmp_path / "out.jsonl"
    await run(tmp_path, Canned(picks), 2)
    out.write_text(out.read_text(encoding="utf-8").rstrip("\n"), encoding="utf-8")
    summary = await run(tmp_path, Canned(picks), 3)
    assert (summary.skipped_existing, summary.written) == (2, 1)
    assert len(records(out)) == 3


async def test_a_corrupt_line_before_the_end_is_an_error(tmp_path, monkeypatch, picks):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    out = tmp_path / "out.jsonl"
    await run(tmp_path, Canned(picks), 2)
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("{not json\n" + "".join(lines), encoding="utf-8")
    with pytest.raises(SceneSimError, match=r"out\.jsonl:1: not a scenario line"):
        await run(tmp_path, Canned(picks), 3)


async def test_the_response_cache_reproduces_a_run_without_provider_calls(tmp_path, monkeypatch, picks):
    from scene_sim.backends import ManagedBackend, ResponseCache

    use_tuples(monkeypatch, [s.scene_tuple for s in picks])

    def hook(s: Scenario, r: GenerateRequest, n: int) -> Any:  # every first attempt leaks: regenerations too
        return leaky(s, r, n) if len(r.messages) == 1 else scaffold_output(s)

    results = []
    for name in ("a.jsonl", "b.jsonl"):
        inner = Canned(picks, scaffold=hook)
        managed = ManagedBackend(inner, cache=ResponseCache("read-write", tmp_path / "cache"), owns_cache=True)
        try:
            summary = await run(tmp_path, managed, 4, name=name, reps=2)
        finally:
            await managed.aclose()
        results.append((summary, inner))
    (first, inner1), (second, inner2) = results
    assert first.written == second.written == 8 and first.cache_hits == 0
    assert inner1.requests and inner2.requests == []
    assert second.calls == second.cache_hits == first.calls
    assert first.rejections_by_reason == second.rejections_by_reason == {"leak": 8}
    a = {r["id"]: r for r in records(tmp_path / "a.jsonl")}
    b = {r["id"]: r for r in records(tmp_path / "b.jsonl")}
    assert a == b


# -- schemas and prompts ---------------------------------------------------------------


def _walk(schema: Any) -> list[dict[str, Any]]:
    out = []
    if isinstance(schema, dict):
        out.append(schema)
        for v in schema.values():
            out += _walk(v)
    elif isinstance(schema, list):
        for v in schema:
            out += _walk(v)
    return out


@pytest.mark.parametrize(
    "schema",
    [
        scaffold_schema(),
        hidden_schema(["A", "B", "C"], precedent=0),
        hidden_schema(["A", "B", "C", "D"], precedent=1, sanction_line_enum=["react:💀", "react:🙄"]),
    ],
)
def test_provider_schemas_suit_strict_modes(schema):
    text = json.dumps(schema)
    assert "$ref" not in text and '"null"' not in text and "nullable" not in text and "anyOf" not in text
    for node in _walk(schema):
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert node["required"] == list(node["properties"])


def test_good_answers_fit_the_provider_schemas(picks):
    def fits(value: Any, schema: dict[str, Any]) -> bool:
        kind = schema["type"]
        if "enum" in schema and value not in schema["enum"]:
            return False
        if kind == "object":
            return (
                isinstance(value, dict)
                and set(value) == set(schema["properties"])
                and all(fits(value[k], s) for k, s in schema["properties"].items())
            )
        if kind == "array":
            return isinstance(value, list) and all(fits(v, schema["items"]) for v in value)
        return isinstance(value, {"string": str, "integer": int}[kind])

    for s in picks:
        assert fits(scaffold_output(s), scaffold_schema())
        cast = [c.name for c in s.scaffold.channel.cast]
        assert fits(hidden_output(s), hidden_schema(cast, precedent=s.tuple.precedent))


async def test_a_failed_run_leaves_no_empty_file_behind(tmp_path, monkeypatch, picks):
    use_tuples(monkeypatch, [s.scene_tuple for s in picks])
    summary = await run(tmp_path, Failing(BackendError("overloaded", kind="retry")), 3, name="none.jsonl")
    assert summary.written == 0 and not (tmp_path / "none.jsonl").exists()
    with pytest.raises(SceneSimError, match="invalid api key"):
        await run(tmp_path, Failing(BackendError("invalid api key", kind="fatal")), 3, name="fatal.jsonl")
    assert not (tmp_path / "fatal.jsonl").exists()
    # a file the user had before is never removed, even when this run adds nothing to it
    (tmp_path / "mine.jsonl").write_text("")
    await run(tmp_path, Failing(BackendError("overloaded", kind="retry")), 3, name="mine.jsonl")
    assert (tmp_path / "mine.jsonl").exists()
