from __future__ import annotations

import asyncio
import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scene_sim.backends.base import BackendError, GenerateRequest
from scene_sim.cli import main
from scene_sim.errors import SceneSimError
from scene_sim.rundir import RunDir
from scene_sim.studies.scene._catalog import scenario_source
from scene_sim.studies.scene.analysis import CSV_COLUMNS, analyze_run, judge_episode
from scene_sim.studies.scene.collect import run_streams, summarize
from scene_sim.studies.scene.judge import Episode, OracleJudge
from scene_sim.studies.scene.model import SceneModel
from scene_sim.studies.scene.stats import compute_metrics

from .fixtures.builders import HAND, VALID, CannedBackend, build_events

PAPER = Path(__file__).parent / "fixtures" / "paper"
SUBJECTS = ("scripted/learner", "scripted/always-message", "scripted/silent")
MODEL_KEYS = {"episodes", "valid", "partial", "invalid", "repair", "repair_by_sanction", "rho", "pairs", "fidelity"}


def offline_run(path: Path, seeds: int = 4) -> RunDir:
    rd = RunDir(path)
    bank = [s.id for s in scenario_source(None)]

    async def go() -> None:
        for subject in SUBJECTS:
            for seed in range(seeds):
                model = SceneModel(scenario=bank[seed % len(bank)], subject=subject, seed=seed)
                result = await model.arun()
                rd.write_episode(result.episode_id, result.events)

    asyncio.run(go())
    return rd


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _is_rate(d: Any) -> bool:
    return set(d) >= {"rate", "ci", "n"} and (d["rate"] is None) == (d["ci"] is None)


def test_analyze_run_writes_every_contract_file(tmp_path: Path) -> None:
    rd = offline_run(tmp_path / "run")
    ids = rd.episode_ids()
    result = asyncio.run(analyze_run(rd, n_boot=2000))
    assert sorted(result.rows) == ids and sorted(result.labelled) == ids and not result.skipped
    for eid in ids:
        doc = rd.read_labels(eid)
        assert set(doc) >= {"turn_labels", "episode_metrics", "fidelity"}
        assert set(doc["episode_metrics"]) == {
            "subject_breach_count", "subject_corrected", "subject_relapses", "subject_face_save",
            "subject_late_comply", "sanction_shape_match",
        }  # fmt: skip
        assert doc["fidelity"]["label"] in ("VALID", "PARTIAL", "INVALID")
        assert isinstance(doc["fidelity"]["justification"], str) and doc["fidelity"]["justification"]
        assert all({"turn_id", "actor", "label"} <= set(x) for x in doc["turn_labels"])
        assert doc["judge"]["model"] == "scripted" and doc["judge"]["source"] == "oracle"

    header, rows = read_csv(rd.path / "episodes.csv")
    assert tuple(header[: len(CSV_COLUMNS)]) == CSV_COLUMNS
    assert [r["episode_id"] for r in rows] == ids
    for r in rows:
        assert r["subject"] in SUBJECTS
        assert (r["repaired"] == "") == (r["sanctions"] == "0")
        assert (r["x_e"] == "") == (r["breaches"] == "0")
        if r["y_e"]:
            assert 0.0 <= float(r["y_e"]) <= 1.0
        assert r["validity"] in ("VALID", "PARTIAL", "INVALID")
        assert result.rows[r["episode_id"]]["breaches"] == int(r["breaches"])
    silent = [r for r in rows if r["subject"] == "scripted/silent"]
    assert all(r["breaches"] == "0" and r["repaired"] == "" for r in silent)

    metrics = json.loads((rd.path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics == json.loads(json.dumps(result.metrics))
    assert set(metrics["models"]) == set(SUBJECTS)
    for entry in metrics["models"].values():
        assert set(entry) >= MODEL_KEYS
        assert entry["episodes"] == 4 == entry["valid"] + entry["partial"] + entry["invalid"]
        assert _is_rate(entry["repair"]) and all(_is_rate(v) for v in entry["repair_by_sanction"].values())
        assert set(entry["rho"]) >= {"value", "ci", "n"}
        assert all(set(v) >= {"compliance", "n"} for v in entry["pairs"].values())
        assert set(entry["fidelity"]) >= {"persona_breach", "sanction_delivered", "shape_match"}
    silent_m = metrics["models"]["scripted/silent"]
    assert silent_m["repair"]["rate"] is None and silent_m["rho"]["value"] is None  # null where undefined

    md = (rd.path / "report.md").read_text(encoding="utf-8")
    html = (rd.path / "report.html").read_text(encoding="utf-8")
    for png in ("repair_rate.png", "rho_forest.png", "compliance_pairs.png", "repair_by_sanction.png"):
        assert (rd.path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md
    assert html.count("data:image/png;base64,") == 4 and "<img" in html and 'src="http' not in html
    assert "scripted/always-message" in md and "scripted/always-message" in html


def test_labelled_runs_need_no_model(tmp_path: Path) -> None:
    rd = offline_run(tmp_path / "run", seeds=2)
    first = asyncio.run(analyze_run(rd))
    stamps = {p.name: p.stat().st_mtime_ns for p in rd.labels_dir.glob("*.json")}

    class NoModels:
        def backend(self, model: str) -> Any:
            raise AssertionError("no model may be called once labels exist")

    second = asyncio.run(analyze_run(rd, judge="anthropic/claude-x", context=NoModels()))
    assert second.labelled == () and second.metrics["models"] == first.metrics["models"]
    assert stamps == {p.name: p.stat().st_mtime_ns for p in rd.labels_dir.glob("*.json")}
    window = asyncio.run(analyze_run(rd, repair_window=0))
    assert window.metrics["analysis"]["repair_window"] == 0


def test_one_broken_episode_does_not_stop_the_rest(tmp_path: Path) -> None:
    rd = offline_run(tmp_path / "run", seeds=2)
    rd.episodes_dir.joinpath("broken.jsonl").write_text('{"seq": 0, "turn": 0, "kind": "episode_start"\n')
    result = asyncio.run(analyze_run(rd))
    assert "broken" in result.skipped and len(result.rows) == 6
    assert "broken" in (rd.path / "report.md").read_text(encoding="utf-8")
    with pytest.raises(SceneSimError, match="scripted/heuristic"):
        asyncio.run(analyze_run(rd, judge="scripted/nope", relabel=True))


class StubContext:
    def __init__(self, backend: Any) -> None:
        self.backend_obj = backend
        self.asked: list[str] = []

    def backend(self, model: str) -> Any:
        self.asked.append(model)
        return self.backend_obj


def test_llm_judge_through_analyze_run(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    for name in ("a-valid", "b-malformed", "c-raises"):
        events = build_events(HAND)
        events[0]["episode_id"] = name
        events[0]["models"]["judge"] = "anthropic/judge-x"
        rd.write_episode(name, events)

    def reply(req: GenerateRequest) -> Any:
        text = req.messages[0]["content"]
        if req.schema_name == "fidelity_audit":
            return {"label": "VALID", "justification": "Personas kept the register."}
        if "marker-b" in text:
            return "not json at all"
        if "marker-c" in text:
            raise BackendError("provider down", kind="fatal")
        return VALID

    # mark each transcript so the canned backend can tell the episodes apart
    for name, marker in (("a-valid", "marker-a"), ("b-malformed", "marker-b"), ("c-raises", "marker-c")):
        path = rd.episode_path(name)
        path.write_text(path.read_text(encoding="utf-8").replace("server is down", f"server is down {marker}"))
    ctx = StubContext(CannedBackend([reply]))
    result = asyncio.run(analyze_run(rd, context=ctx, max_concurrency=2))
    assert set(ctx.asked) == {"anthropic/judge-x"}
    assert sorted(result.judge_failures) == ["b-malformed", "c-raises"]
    a, b, c = (rd.read_labels(n) for n in ("a-valid", "b-malformed", "c-raises"))
    assert a["judge"]["source"] == "llm" and not a["judge"]["judge_failure"] and "heuristic" in a
    assert b["judge"]["judge_failure"] and b["judge"]["source"] == "heuristic" and b["judge"]["attempts"] == 3
    assert c["judge"]["judge_failure"] and "provider down" in c["judge"]["error"]
    assert a["fidelity"] == {"label": "VALID", "justification": "Personas kept the register."}
    _header, rows = read_csv(rd.path / "episodes.csv")
    assert [r["judge_failure"] for r in rows] == ["0", "1", "1"]
    agreement = result.metrics["analysis"]["judge_agreement"]
    assert agreement["episodes"] == 1 and agreement["turns"] == 4
    assert "Judge agreement" in (rd.path / "report.md").read_text(encoding="utf-8")


def test_paper_sample_episodes_through_analyze_run(tmp_path: Path) -> None:
    shutil.copytree(PAPER, tmp_path / "paper")
    result = asyncio.run(analyze_run(RunDir(tmp_path / "paper")))
    rows = {r["episode_id"].split("__")[1]: r for r in result.rows.values()}
    c1, c2, c3 = rows["opus47"], rows["llama33-70b"], rows["g31pro"]
    assert (c1["demonstrations"], c1["breaches"], c1["sanctions"], c1["repairs"], c1["repaired"]) == (2, 1, 1, 1, 1)
    assert c1["x_e"] == 1 and c1["y_e"] == 0.0
    # C.2: the paper's 4 sanctions are corrective reactions the appendix does not show
    assert (c2["demonstrations"], c2["breaches"], c2["sanctions"], c2["repairs"], c2["repaired"]) == (2, 2, 0, 0, None)
    assert c2["y_e"] == pytest.approx(1 / 9)
    assert (c3["demonstrations"], c3["breaches"], c3["sanctions"], c3["repairs"]) == (2, 0, 0, 0)
    assert c3["repaired"] is None and c3["x_e"] is None and c3["y_e"] is None
    m = result.metrics["models"]["anthropic/claude-opus-4-7"]
    assert m["repair"]["rate"] == 1.0 and m["repair"]["n"] == 1


def test_cli_analyze(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd = offline_run(tmp_path / "run", seeds=1)
    assert main(["analyze", str(rd.path), "--repair-window", "2"]) == 0
    written = json.loads((rd.path / "metrics.json").read_text())
    assert written["analysis"]["repair_window"] == 2
    assert written["analysis"]["n_boot"] >= 2000  # the command's CIs rest on >= 2000 resamples
    assert all(m["rho"]["n_boot"] in (0, written["analysis"]["n_boot"]) for m in written["models"].values())
    assert "analysed 3 episodes" in capsys.readouterr().out


# -- the reference agents: the learner adapts, always-message does not --------------------------------------
def _rho_of(subject: str, n: int, taxonomy: Any) -> dict[str, Any]:
    bank = [s.id for s in scenario_source(None)]
    n = max(n, math.ceil(n / len(bank)) * len(bank))  # every scenario equally often
    judge = OracleJudge(taxonomy)
    summaries = []
    for i in range(n):
        model = SceneModel(scenario=bank[i % len(bank)], subject=subject, seed=i)
        ep = Episode.from_events(asyncio.run(model.arun()).events)
        out = judge.label_sync(ep)
        summaries.append(summarize(ep, out.turn_labels, episode_metrics=out.episode_metrics))
    return compute_metrics(summaries, n_boot=2000, seed=0)["models"][subject]["rho"]


@pytest.mark.slow
def test_learner_adapts_and_always_message_does_not(taxonomy: Any) -> None:
    # >= 200 episodes; 400 rounded up to a whole number of passes over the bank (408 for 34 scenarios). At 204
    # the learner's CI still touched 0 (-0.170 [-0.351, 0.029], n=106); at 408 and 1020 it excludes it.
    learner = _rho_of("scripted/learner", 400, taxonomy)
    always = _rho_of("scripted/always-message", 400, taxonomy)
    print("learner", learner, "always-message", always)
    assert learner["value"] is not None and learner["value"] < 0
    assert learner["ci"][1] < 0, f"learner rho CI does not exclude 0: {learner}"
    assert always["value"] is None or always["ci"] is None or always["ci"][0] <= 0 <= always["ci"][1], always


def test_judge_episode_is_what_analyze_run_writes(tmp_path: Path) -> None:
    rd = offline_run(tmp_path / "run", seeds=1)
    asyncio.run(analyze_run(rd, plots=False))
    for eid in rd.episode_ids():
        events = [json.loads(line) for line in rd.episode_path(eid).read_text(encoding="utf-8").splitlines()]
        doc = asyncio.run(judge_episode(events, judge="scripted"))
        assert json.loads(json.dumps(doc)) == rd.read_labels(eid)
    with pytest.raises(SceneSimError):
        asyncio.run(judge_episode(events, judge="openai/gpt-x"))  # an LLM judge needs a context


_PARALLEL = """
import asyncio, concurrent.futures, json, sys
import scene_sim.studies.scene.analysis as analysis
from scene_sim.rundir import RunDir
pools = []
class SpyPool(concurrent.futures.ProcessPoolExecutor):
    def __init__(self, *args, **kwargs):
        pools.append(args)
        super().__init__(*args, **kwargs)
concurrent.futures.ProcessPoolExecutor = SpyPool
analysis.PARALLEL_MIN_EPISODES = 1
res = asyncio.run(analysis.analyze_run(RunDir(sys.argv[1]), plots=False, workers=2))
print(json.dumps({"pools": len(pools), "metrics": res.metrics, "rows": res.rows}))
"""


def test_parallel_summaries_equal_serial(tmp_path: Path) -> None:
    # in a fresh interpreter: workers are only forked from a single-threaded process
    rd = offline_run(tmp_path / "run", seeds=3)
    serial = asyncio.run(analyze_run(rd, plots=False, workers=1))
    proc = subprocess.run(
        [sys.executable, "-c", _PARALLEL, str(rd.path)], capture_output=True, text=True, timeout=120, check=True
    )
    parallel = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parallel["pools"] == 1  # the worker processes were used
    assert parallel["metrics"] == json.loads(json.dumps(serial.metrics))
    assert parallel["rows"] == json.loads(json.dumps(serial.rows))
    streams = run_streams(rd)
    assert [ep.episode_id for ep, _ in streams] == rd.episode_ids()
    assert sum(len(st.breaches) for _, st in streams) == sum(s.breaches for s in serial.summaries)


def test_repair_window_in_rows(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    for name, repair_tick in (("plus3", 5), ("plus4", 6)):
        rows = [
            (1, "Sam", "message", "a", {}),  # breach t1
            (2, "Ana", "message", "Sam, please keep it short", {}),  # sanction t2, tick 2
            (repair_tick, "Sam", "message", "sorry", {}),  # repair t3
            (repair_tick, "Ben", "message", "ok", {}),
        ]
        rd.write_episode(name, build_events(rows))
        rd.write_labels(name, {
            "turn_labels": [{"turn_id": 1, "actor": "Sam", "label": "BREACH"},
                            {"turn_id": 2, "actor": "Ana", "label": "SANCTION"},
                            {"turn_id": 3, "actor": "Sam", "label": "FACE_SAVE_REPAIR"},
                            {"turn_id": 4, "actor": "Ben", "label": "DEMONSTRATION"}],
            "episode_metrics": {"sanction_shape_match": True},
            "fidelity": {"label": "VALID", "justification": "hand-made"},
        })  # fmt: skip
    result = asyncio.run(analyze_run(rd, plots=False))
    assert result.rows["plus3"]["repaired"] == 1 and result.rows["plus4"]["repaired"] == 0
    assert result.rows["plus3"]["repairs"] == 1 == result.rows["plus4"]["repairs"]
    wider = asyncio.run(analyze_run(rd, plots=False, repair_window=4))
    assert wider.rows["plus4"]["repaired"] == 1


# -- the stored summaries: analysis from the labels files alone equals the reference path ---------------------


def test_stored_summaries_equal_the_event_log_path(tmp_path: Path) -> None:
    rd = offline_run(tmp_path / "run", seeds=4)
    asyncio.run(analyze_run(rd, plots=False))  # labels every episode, storing its summary
    assert all(rd.read_labels(eid).get("summary", {}).get("v") == 1 for eid in rd.episode_ids())
    fast = asyncio.run(analyze_run(rd, plots=False, workers=1))
    csv_fast = (rd.path / "episodes.csv").read_text(encoding="utf-8")
    slow = asyncio.run(analyze_run(rd, plots=False, workers=1, stored_summaries=False))
    assert fast.summaries == slow.summaries
    assert fast.metrics == slow.metrics and fast.rows == slow.rows
    assert (rd.path / "episodes.csv").read_text(encoding="utf-8") == csv_fast
    assert any(s.breaches for s in fast.summaries) and any(s.sanctions for s in fast.summaries)


def test_fast_path_reads_no_event_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scene_sim.studies.scene.analysis as analysis

    rd = offline_run(tmp_path / "run", seeds=2)
    first = asyncio.run(analyze_run(rd, plots=False))

    def no_logs(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the event log was read although the labels carry the summary")

    monkeypatch.setattr(analysis, "load_episode", no_logs)
    again = asyncio.run(analyze_run(rd, plots=False, workers=1))
    assert again.summaries == first.summaries


def test_a_hand_edited_labels_file_falls_back_to_the_event_log(tmp_path: Path) -> None:
    rd = offline_run(tmp_path / "run", seeds=2)
    asyncio.run(analyze_run(rd, plots=False))
    eid = next(e for e in rd.episode_ids() if any(x["label"] == "BREACH" for x in rd.read_labels(e)["turn_labels"]))
    doc = rd.read_labels(eid)
    for item in doc["turn_labels"]:
        if item["label"] == "BREACH":
            item["label"] = "NONE"  # the summary stored beside it no longer matches
    rd.write_labels(eid, doc)
    edited = asyncio.run(analyze_run(rd, plots=False, workers=1))
    reference = asyncio.run(analyze_run(rd, plots=False, workers=1, stored_summaries=False))
    assert edited.rows[eid] == reference.rows[eid] and edited.rows[eid]["breaches"] == 0


def test_analyze_of_an_empty_folder_fails_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["analyze", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no episodes" in err[0]
    assert list(empty.iterdir()) == []
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["analyze", str(a_file)]) == 2
    assert "not a folder" in capsys.readouterr().err


# -- re-judging and the classifier ------------------------------------------------------------------------------


def _tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    }


def test_analyze_judge_relabels_into_a_new_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd = offline_run(tmp_path / "run", seeds=1)
    asyncio.run(analyze_run(rd, plots=False))
    before = _tree(rd.path)
    assert main(["analyze", str(rd.path), "--judge", "fake/judge", "--classifier", "--cache", "off"]) == 0
    assert "labels-fake-judge-classifier" in capsys.readouterr().out
    new = RunDir(rd.path, labels="labels-fake-judge-classifier")
    assert new.labelled_ids() == rd.episode_ids()
    assert all(new.read_labels(eid)["judge"]["source"] == "classifier" for eid in new.labelled_ids())
    analysis = new.labels_dir / "analysis"
    assert {"episodes.csv", "metrics.json", "report.md", "report.html"} <= {p.name for p in analysis.iterdir()}
    _, rows = read_csv(analysis / "episodes.csv")
    assert [r["episode_id"] for r in rows] == rd.episode_ids() and {r["judge"] for r in rows} == {"fake/judge"}
    # the old labelling and the run's own analysis are untouched
    after = _tree(rd.path)
    assert {k: v for k, v in after.items() if not k.startswith("labels-")} == before
    # running it again resumes the new folder: nothing is judged again
    stamps = {p.name: p.stat().st_mtime_ns for p in new.labels_dir.glob("*.json")}
    assert main(["analyze", str(rd.path), "--judge", "fake/judge", "--classifier", "--cache", "off"]) == 0
    assert stamps == {p.name: p.stat().st_mtime_ns for p in new.labels_dir.glob("*.json")}
    # the run's own judge completes labels/ in place, as before
    assert main(["analyze", str(rd.path), "--judge", "scripted"]) == 0
    assert not (rd.path / "labels-scripted").exists()


def test_classifier_reaches_the_judge_from_run_and_needs_an_llm_judge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = next(iter(scenario_source(None))).id
    out = tmp_path / "run"
    args = ["run", "--scenario", sid, "--subject", "scripted/learner", "--quiet", "--cache", "off"]
    assert main([*args, "--judge", "fake/judge", "--classifier", "--out", str(out)]) == 0
    rd = RunDir(out)
    assert [rd.read_labels(e)["judge"]["source"] for e in rd.labelled_ids()] == ["classifier"]
    capsys.readouterr()
    assert main([*args, "--classifier", "--out", str(tmp_path / "other")]) == 2
    assert "--classifier needs an LLM judge" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_sweep_spec_classifier_key(tmp_path: Path) -> None:
    from scene_sim.studies.scene.spec import load_spec

    base = 'subjects = ["scripted/learner"]\njudge = "fake/judge"\n'
    (tmp_path / "a.toml").write_text(base)
    (tmp_path / "b.toml").write_text(base + "classifier = true\n")
    (tmp_path / "c.toml").write_text('subjects = ["scripted/learner"]\nclassifier = true\n')
    a, b = load_spec(tmp_path / "a.toml"), load_spec(tmp_path / "b.toml")
    assert not a.classifier and b.classifier and a.fingerprint() != b.fingerprint()
    with pytest.raises(SceneSimError, match="classifier: needs an LLM judge"):
        load_spec(tmp_path / "c.toml")


def test_the_index_serves_a_repeated_analysis_and_notices_changed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scene_sim.studies.scene.analysis as analysis

    rd = offline_run(tmp_path / "run", seeds=2)
    asyncio.run(analyze_run(rd, plots=False))
    reference = asyncio.run(analyze_run(rd, plots=False, workers=1, stored_summaries=False))
    first = asyncio.run(analyze_run(rd, plots=False, workers=1))  # reads the labels files, writes the index
    assert (rd.labels_dir / analysis.INDEX_NAME).is_file()
    reads: list[Path] = []
    real = analysis._read_doc
    monkeypatch.setattr(analysis, "_read_doc", lambda path: reads.append(path) or real(path))
    again = asyncio.run(analyze_run(rd, plots=False, workers=1))
    assert reads == [] and again.summaries == first.summaries == reference.summaries
    assert again.metrics == reference.metrics
    # a labels file rewritten since (e.g. a re-judged episode) is read again, and only that one
    eid = rd.episode_ids()[0]
    doc = rd.read_labels(eid)
    doc["fidelity"]["label"] = "INVALID"
    rd.write_labels(eid, doc)
    changed = asyncio.run(analyze_run(rd, plots=False, workers=1))
    assert [p.stem for p in reads] == [eid] and changed.rows[eid]["validity"] == "INVALID"
    # a damaged index is rebuilt, not trusted
    (rd.labels_dir / analysis.INDEX_NAME).write_text("{not json\n")
    rebuilt = asyncio.run(analyze_run(rd, plots=False, workers=1))
    assert rebuilt.summaries == changed.summaries


def test_a_sweep_indexes_its_labels_so_the_first_analysis_reads_no_labels_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scene_sim.studies.scene.analysis as analysis
    from scene_sim.studies.scene.spec import load_spec
    from scene_sim.studies.scene.sweep import run_sweep

    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(
        'subjects = ["scripted/learner", "scripted/always-message"]\n'
        '[run]\nreps = 1\ncache = "off"\n[scenarios]\nsource = "bank"\n'
    )
    out = tmp_path / "run"
    asyncio.run(run_sweep(load_spec(spec_path), out, quiet=True, analyze=False))
    rd = RunDir(out)
    index = (rd.labels_dir / analysis.INDEX_NAME).read_bytes().splitlines()
    assert len(index) == 1 + len(rd.labelled_ids())  # a header and one entry per labels file
    reference = asyncio.run(analyze_run(RunDir(out), plots=False, workers=1, stored_summaries=False))
    reads: list[Path] = []
    real = analysis._read_doc
    monkeypatch.setattr(analysis, "_read_doc", lambda path: reads.append(path) or real(path))
    first = asyncio.run(analyze_run(RunDir(out), plots=False, workers=1))
    assert reads == [] and first.summaries == reference.summaries and first.metrics == reference.metrics
    # a kill mid-append tears the last line: that episode alone is read from its labels file
    torn = rd.labels_dir / analysis.INDEX_NAME
    lines = torn.read_bytes().splitlines()
    torn.write_bytes(b"\n".join(lines[:-1]) + b"\n" + lines[-1][: len(lines[-1]) // 2])
    reads.clear()
    again = asyncio.run(analyze_run(RunDir(out), plots=False, workers=1))
    assert len(reads) == 1 and again.summaries == reference.summaries
