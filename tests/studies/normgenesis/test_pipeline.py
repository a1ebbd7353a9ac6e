from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest

from scene_sim.backends.base import Backend, Capabilities, GenerateRequest, GenerateResponse
from scene_sim.context import RunContext
from scene_sim.events import iter_event_dicts
from scene_sim.studies.normgenesis.norms import load_bank
from scene_sim.studies.normgenesis.pipeline import GenerateConfig, generate, plan_items
from scene_sim.studies.normgenesis.records import DialogueRecord, RejectedRecord

from .answers import answer

HANGUL = re.compile(r"[\uac00-\ud7a3]")
HANZI = re.compile(r"[\u4e00-\u9fff]")


def cfg(out: Path, **kw: Any) -> GenerateConfig:
    base: dict[str, Any] = {"encoder": "hash", "quiet": True, "index_cache": out.parent / "index"}
    return GenerateConfig(out=out, **{**base, **kw})


def records(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def read(name: str) -> list[dict[str, Any]]:
        path = out / name
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []

    return read("dialogues.jsonl"), read("rejected.jsonl")


def assert_exactly_once(out: Path, c: GenerateConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    made, rejected = records(out)
    ids = Counter(r["id"] for r in made + rejected)
    assert set(ids) == {it.id for it in plan_items(load_bank(), c)}
    assert all(n == 1 for n in ids.values()), [k for k, n in ids.items() if n > 1]
    for r in made:
        DialogueRecord.model_validate(r)
    for r in rejected:
        assert RejectedRecord.model_validate(r).reason
    return made, rejected


async def test_scripted_run_every_language_exactly_once_and_resumable(tmp_path: Path) -> None:
    out = tmp_path / "run"
    c = cfg(out)
    first = await generate(c)
    assert first.planned == 108 and first.dialogues == 108 and first.rejected == 0
    made, _ = assert_exactly_once(out, c)
    by_lang = {lang: [r for r in made if r["lang"] == lang] for lang in ("en", "ko", "zh")}
    assert all(len(v) == 36 for v in by_lang.values())
    assert all(HANGUL.search(t["text"]) for r in by_lang["ko"] for t in r["turns"])
    assert all(HANZI.search(t["text"]) and not HANGUL.search(t["text"]) for r in by_lang["zh"] for t in r["turns"])
    assert all(HANGUL.search(r["situation"]) for r in by_lang["ko"])
    for r in made:
        ref = r["refinement"]
        assert 0 <= ref["rounds"] <= 3 and len(ref["scores"]) == ref["rounds"] + 1
        assert [s["round"] for s in ref["scores"]] == list(range(ref["rounds"] + 1))
        passed = [min(s["norm_alignment"], s["linguistic_quality"], s["semantic_fidelity"]) >= 4 for s in ref["scores"]]
        assert passed[-1] and not any(passed[:-1])  # stops at the first round that meets the threshold
        assert r["exemplar_ids"] and r["exemplar_ids"][0] == f"ex-{r['lang']}-{r['category']}-1"
        violates = [i for i, t in enumerate(r["turns"]) if t["adherence"] == "violates"]
        assert bool(violates) == (r["type"] != "adherence")
    # the types of one scenario share its situation and refinement
    groups: dict[str, set[str]] = {}
    for r in made:
        groups.setdefault(r["id"].rsplit("-", 1)[0], set()).add(json.dumps([r["situation"], r["refinement"]]))
    assert all(len(v) == 1 for v in groups.values())
    before = (out / "dialogues.jsonl").read_bytes()
    again = await generate(c)
    assert again.skipped == 108 and again.summary.done == 0 and not again.index_built  # index from the disk cache
    assert (out / "dialogues.jsonl").read_bytes() == before
    spec = json.loads((out / "run.json").read_text(encoding="utf-8"))["spec"]
    assert spec["threshold"] == 4 and spec["max_rounds"] == 3


async def test_same_seed_same_dialogues_other_seed_differs(tmp_path: Path) -> None:
    a = await generate(cfg(tmp_path / "a", langs=("ko",), seed=3))
    b = await generate(cfg(tmp_path / "b", langs=("ko",), seed=3))
    c = await generate(cfg(tmp_path / "c", langs=("ko",), seed=4))
    assert a.dialogues == b.dialogues == c.dialogues == 36
    ra, rb, rc = (sorted(records(tmp_path / x)[0], key=lambda r: r["id"]) for x in "abc")
    assert ra == rb
    assert [r["turns"] for r in ra] != [r["turns"] for r in rc] or [r["refinement"] for r in ra] != [
        r["refinement"] for r in rc
    ]


async def test_refinement_budget_spent_goes_to_rejected_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "run"
    c = cfg(out, langs=("zh",), categories=("apology", "thanks"), threshold=5, max_rounds=0)
    result = await generate(c)
    _, rejected = assert_exactly_once(out, c)
    assert result.dialogues == 0 and len(rejected) == 6
    assert all(r["stage"] == "refine" and "RQ below 5 after 0 round(s)" in r["reason"] for r in rejected)


async def test_agents_mode_writes_the_same_record_with_a_seeded_slip(tmp_path: Path) -> None:
    out = tmp_path / "agents"
    c = cfg(out, langs=("ko", "zh"), categories=("request", "respect"), mode="agents", seed=5)
    result = await generate(c)
    assert result.dialogues == 12
    made, _ = assert_exactly_once(out, c)
    gen = await generate(cfg(tmp_path / "gen", langs=("ko", "zh"), categories=("request", "respect"), seed=5))
    assert gen.dialogues == 12
    by_id = {r["id"]: r for r in records(tmp_path / "gen")[0]}
    for r in made:
        assert r["mode"] == "agents" and set(r) == set(by_id[r["id"]])
        assert r["turns"] == by_id[r["id"]]["turns"]  # scripted speakers play the generator's plan
        events = list(iter_event_dicts(out / "episodes" / f"{r['id']}.jsonl"))
        start = events[0]
        assert start["kind"] == "episode_start" and start["type"] == r["type"]
        slip = start["slip_turn"]
        violates = [i + 1 for i, t in enumerate(r["turns"]) if t["adherence"] == "violates"]
        assert (slip is None) == (r["type"] == "adherence")
        if slip is not None:
            assert violates[0] == slip and slip in (2, 4)
            assert r["turns"][slip]["reaction"] in ("CRT", "QUE")  # the other notices and sanctions
            assert r["turns"][slip]["speaker"] != r["turns"][slip - 1]["speaker"]
        assert [e["actor"] for e in events if e["kind"] == "action"] == [t["speaker"] for t in r["turns"]]


class FlakyBackend(Backend):
    """Valid answers, except: every ``raise_every``-th call raises, every 3rd is prose, every 7th leaks the norm."""

    provider: ClassVar[str] = "custom"
    capabilities: ClassVar[Capabilities] = Capabilities(structured_output=True, scores_choices=False)

    def __init__(self, raise_every: int) -> None:
        super().__init__("flaky")
        self.calls = 0
        self.raise_every = raise_every

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        self.calls += 1
        if self.calls % self.raise_every == 0:
            raise RuntimeError("connection reset by peer")
        if self.calls % 3 == 0:
            return GenerateResponse(text="Sure! Here is a lovely dialogue for you.")
        user = request.messages[0]["content"]
        data = answer(request.schema_name, request.system or "", user)
        if self.calls % 7 == 0 and "scenario" in data:
            norm = re.search(r"Norm \(do not quote it\): (.+)", user)
            data = {**data, "situation": norm.group(1) if norm else "the norm is violated here"}
        return GenerateResponse(text=json.dumps(data, ensure_ascii=False))


@pytest.mark.parametrize("mode", ["generator", "agents"])
async def test_fault_injecting_model_every_item_exactly_once(tmp_path: Path, mode: str) -> None:
    context = RunContext(cache_mode="off")
    # an agents-mode episode makes a call per turn, and one provider failure ends it: fewer of those there
    backend = FlakyBackend(5 if mode == "generator" else 41)
    context.add("custom/flaky", backend, max_attempts=1)
    out = tmp_path / "run"
    c = cfg(out, langs=("en", "ko", "zh"), categories=("apology", "greeting"), model="custom/flaky", mode=mode,
            concurrency=4)  # fmt: skip
    try:
        result = await generate(c, context=context)
    finally:
        await context.aclose()
    made, rejected = assert_exactly_once(out, c)
    assert result.summary.failed == 0 and backend.calls > 18
    assert made, "some items survive the faults"
    assert rejected and all(r["stage"] in ("situation", "refine", "rq", "dialogue", "annotate") for r in rejected)
    assert any("connection reset" in r["reason"] or "attempts" in r["reason"] for r in rejected)
    for r in made:
        assert r["mode"] == mode
    # resume retries nothing that is already in either file
    calls = backend.calls
    context2 = RunContext(cache_mode="off")
    context2.add("custom/flaky", backend, max_attempts=1)
    try:
        again = await generate(c, context=context2)
    finally:
        await context2.aclose()
    assert again.summary.done == 0 and backend.calls == calls


class RecordingBackend(Backend):
    """Valid answers; the RQ judge marks every first draft 3 on linguistic quality; ``leak`` quotes the norm."""

    provider: ClassVar[str] = "custom"
    capabilities: ClassVar[Capabilities] = Capabilities(structured_output=True, scores_choices=False)

    def __init__(self, leak: bool = False) -> None:
        super().__init__("recording")
        self.requests: list[GenerateRequest] = []
        self.leak = leak

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        self.requests.append(request)
        user = request.messages[0]["content"]
        data = answer(request.schema_name, request.system or "", user)
        if request.schema_name == "normgenesis_rq" and "First draft" in user:
            first = user.split("First draft:")[1].split("Current version:")
            data = {**data, "linguistic_quality": 3 if first[0].strip() == first[1].strip() else 5}
        if request.schema_name == "normgenesis_refine":
            data = {**data, "situation": data["situation"] + " 주변은 조용하다."}
        if self.leak and request.schema_name == "normgenesis_situation":
            norm = re.search(r"Norm \(do not quote it\): (.+)", user)
            data = {**data, "situation": norm.group(1) if norm else ""}
        return GenerateResponse(text=json.dumps(data, ensure_ascii=False))


async def _run_custom(tmp_path: Path, backend: Backend, **kw: Any) -> tuple[GenerateConfig, Path]:
    context = RunContext(cache_mode="off")
    context.add("custom/rec", backend, max_attempts=1)
    out = tmp_path / "run"
    c = cfg(out, langs=("ko",), categories=("apology",), model="custom/rec", **kw)
    try:
        await generate(c, context=context)
    finally:
        await context.aclose()
    return c, out


async def test_llm_refinement_round_uses_the_retrieved_exemplars_as_system_message(tmp_path: Path) -> None:
    backend = RecordingBackend()
    c, out = await _run_custom(tmp_path, backend)
    made, rejected = assert_exactly_once(out, c)
    assert len(made) == 3 and not rejected
    ref = made[0]["refinement"]
    assert ref["rounds"] == 1 and [s["linguistic_quality"] for s in ref["scores"]] == [3, 5]
    refines = [r for r in backend.requests if r.schema_name == "normgenesis_refine"]
    assert len(refines) == 1  # one scenario, shared by its three types
    assert made[0]["exemplar_ids"][0] == "ex-ko-apology-1"
    assert all(f"[{i}]" in (refines[0].system or "") for i in made[0]["exemplar_ids"])
    assert refines[0].temperature == 0.8
    assert all(
        r.temperature == 0.0 for r in backend.requests if r.schema_name in ("normgenesis_rq", "normgenesis_annotate")
    )


async def test_a_leaking_situation_is_requeried_then_rejected_with_the_reason(tmp_path: Path) -> None:
    backend = RecordingBackend(leak=True)
    c, out = await _run_custom(tmp_path, backend)
    made, rejected = assert_exactly_once(out, c)
    assert not made and len(rejected) == 3
    assert all(r["stage"] == "situation" and "leaks the norm" in r["reason"] for r in rejected)
    asks = [r for r in backend.requests if r.schema_name == "normgenesis_situation"]
    assert len(asks) == 3  # the first ask and two bounded re-queries, for the one shared scenario
    assert "leaks the norm" in asks[-1].messages[-1]["content"]  # the re-query tells the model why
