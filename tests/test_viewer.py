"""The transcript viewer's content, read back from the HTML it writes."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from scene_sim.errors import SceneSimError
from scene_sim.events import read_events
from scene_sim.rundir import RunDir
from scene_sim.studies.scene._catalog import scenario_source, taxonomy_at
from scene_sim.studies.scene.viewer import DATA_ELEMENT_ID, collect_viewer_data, main, write_viewer

from .viewer_fixture import XSS, shared_run, shared_synthetic_viewer


class _Page(HTMLParser):
    """Collects the tags of a page and the text of its data element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.data_text = ""
        self.scripts: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self._in = "data" if a.get("id") == DATA_ELEMENT_ID else "code"
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "data":
            self.data_text += data
        if self._in is not None:
            self.scripts[-1] += data


def parse_page(path: Path) -> tuple[_Page, dict[str, Any]]:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page, json.loads(page.data_text)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    info = shared_run(tmp_path_factory.getbasetemp())
    path = write_viewer(info["run_dir"].path)
    page, data = parse_page(path)
    return {**info, "path": path, "page": page, "data": data}


def _strings(data: dict[str, Any]) -> list[str]:
    return data["strings"]


def _episode(data: dict[str, Any], episode_id: str) -> dict[str, Any]:
    return next(e for e in data["episodes"] if e["id"] == episode_id)


def test_writes_one_self_contained_file(built):
    path: Path = built["path"]
    assert path == built["run_dir"].path / "viewer.html"
    text = path.read_text(encoding="utf-8")
    page: _Page = built["page"]
    # no external resource of any kind
    for tag, attrs in page.tags:
        assert not attrs.get("src"), (tag, attrs)
        if tag == "link":
            raise AssertionError(f"external link tag {attrs}")
    assert not re.search(r"https?://", text), "the page must not reference the network"
    assert [t for t, _ in page.tags].count("script") == 2  # the data and the code, nothing else


def test_episode_count_and_metrics(built):
    data, rd = built["data"], built["run_dir"]
    assert [e["id"] for e in data["episodes"]] == rd.episode_ids()
    assert len(data["episodes"]) == 6
    metrics = json.loads((rd.path / "metrics.json").read_text())
    assert data["metrics"] == metrics["models"]
    assert set(data["metrics"]) == {"scripted/learner", "scripted/always-message"}


def test_actions_counts_and_labels_match_the_run_files(built):
    data, rd = built["data"], built["run_dir"]
    strings = _strings(data)
    kinds = ["message", "react", "no-op"]
    for eid in rd.episode_ids():
        ep = _episode(data, eid)
        events = [e.model_dump() for e in read_events(rd.episode_path(eid))]
        actions = [e for e in events if e["kind"] == "action"]
        n = [sum(a["action"] == k for a in actions) for k in kinds]
        assert ep["n"] == n, eid
        # the embedded chat is exactly the logged actions, in order
        decoded = [
            {
                "turn": a[0],
                "actor": strings[a[1]],
                "action": kinds[a[2]],
                "content": strings[a[3]],
                "turn_id": a[4],
                "target_turn_id": a[5],
            }
            for a in ep["a"]
        ]
        expected = [
            {k: a[k] for k in ("turn", "actor", "action", "content", "turn_id", "target_turn_id")} for a in actions
        ]
        assert decoded == expected, eid
        # labels: every turn label of labels/<id>.json, nothing else
        labels = rd.read_labels(eid)
        want = {int(x["turn_id"]): x["label"] for x in labels["turn_labels"]}
        got = {tid: strings[s] for tid, s in ep["l"]}
        assert got == want, eid
        assert ep["v"] == labels["fidelity"]["label"]
        start = events[0]
        assert ep["m"] == start["models"]["subject"]
        assert ep["sc"] == start["scenario_id"]
        assert ep["end"] == events[-1]["reason"]
        breach = any(x["label"] == "BREACH" and x.get("actor") == start["subject"] for x in labels["turn_labels"])
        assert ep["b"] == int(breach)
    # the fixture exercises reactions and no-ops
    assert sum(e["n"][1] for e in data["episodes"]) > 0
    assert sum(e["n"][2] for e in data["episodes"]) > 0


def test_hidden_facts_are_data_only_and_revealed_closed(built):
    data, page = built["data"], built["page"]
    tax = taxonomy_at(None)
    bank = scenario_source()
    for ep in data["episodes"]:
        norm = data["norms"][ep["t"][1]]
        assert norm["text"] == tax.norm(ep["t"][1]).norm_text
        sc = data["scenarios"][ep["sc"]]
        assert sc["personas"] == [[p.name, p.outline] for p in bank.get(ep["sc"]).hidden.personas]
    code = page.scripts[1]
    # the reveal control is a <details> created without the open attribute (closed by default) ...
    call = re.search(r'el\("details", \{[^}]*hidden-norm[^}]*\}', code)
    assert call is not None and "open" not in call.group(0)
    assert not re.search(r"hidden-norm[^\n]*\.open\s*=\s*true", code)
    # ... and no hidden text is in the page's markup: it lives only in the embedded data
    markup = built["path"].read_text(encoding="utf-8").split(f'id="{DATA_ELEMENT_ID}"')[0]
    for norm in data["norms"].values():
        assert norm["text"] not in markup


def test_chat_content_is_escaped(built):
    text = built["path"].read_text(encoding="utf-8")
    page, data = built["page"], built["data"]
    assert XSS in data["strings"]  # the probe survives the round trip intact ...
    assert "<script>alert" not in text  # ... but never appears as markup
    assert "<img" not in text and "<!-- <img" not in text
    assert "\\u003cscript>" in text or "\\u003cscript\\u003e" in text
    assert not any(tag == "img" for tag, _ in page.tags)
    # the script never writes data as markup
    code = page.scripts[1]
    assert "innerHTML" not in code and "outerHTML" not in code and "insertAdjacentHTML" not in code
    assert "document.write" not in code


def test_title_is_escaped(tmp_path, built):
    rd = built["run_dir"]
    odd = tmp_path / "<b>run&co"
    shutil.copytree(rd.path, odd)
    path = write_viewer(odd)
    text = path.read_text(encoding="utf-8")
    assert "<title>scene-sim · &lt;b&gt;run&amp;co · 6 episodes</title>" in text


def test_missing_metrics_and_unknown_scenario(tmp_path, built):
    rd = built["run_dir"]
    copy = RunDir(tmp_path / "copy")
    shutil.copytree(rd.path, copy.path)
    (copy.path / "metrics.json").unlink()
    (copy.path / "episodes.csv").unlink()
    eid = copy.episode_ids()[0]
    lines = copy.episode_path(eid).read_text(encoding="utf-8").splitlines()
    start = json.loads(lines[0])
    start["scenario_id"] = "no_such_scenario"
    lines[0] = json.dumps(start)
    copy.episode_path(eid).write_text("\n".join(lines) + "\n", encoding="utf-8")
    copy.label_path(copy.episode_ids()[1]).unlink()
    data = collect_viewer_data(copy.path)
    assert data["metrics"] is None
    assert sum(m["episodes"] for m in data["summary"].values()) == 6
    ep = _episode(data, eid)
    assert data["scenarios"]["no_such_scenario"] is None
    assert data["norms"][ep["t"][1]]["text"]  # the norm text still comes from the taxonomy
    unlabelled = _episode(data, copy.episode_ids()[1])
    assert unlabelled["v"] == "unlabelled" and unlabelled["b"] is None and unlabelled["l"] == []


def test_scenarios_from_the_runs_own_source(tmp_path, built):
    copy = RunDir(tmp_path / "copy")
    shutil.copytree(built["run_dir"].path, copy.path)
    eid = copy.episode_ids()[0]
    lines = copy.episode_path(eid).read_text(encoding="utf-8").splitlines()
    start = json.loads(lines[0])
    doc = scenario_source().get(start["scenario_id"]).model_dump(mode="json")
    doc["id"] = "custom_scenario"
    doc["hidden"]["personas"][0]["outline"] = "A custom outline only this run's source has."
    source = tmp_path / "custom.json"
    source.write_text(json.dumps(doc), encoding="utf-8")
    start["scenario_id"] = "custom_scenario"
    lines[0] = json.dumps(start)
    copy.episode_path(eid).write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = copy.read_run()
    for declared in (str(source), {"source": str(source), "ids": []}):  # run's spec, sweep's spec
        copy.write_run({**run, "spec": {**run["spec"], "scenarios": declared}})
        sc = collect_viewer_data(copy.path)["scenarios"]["custom_scenario"]
        assert sc["personas"][0][1] == "A custom outline only this run's source has."


def test_broken_episode_is_a_warning_not_a_crash(tmp_path, built):
    copy = RunDir(tmp_path / "copy")
    shutil.copytree(built["run_dir"].path, copy.path)
    eid = copy.episode_ids()[0]
    with copy.episode_path(eid).open("a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    broken_line = len(copy.episode_path(eid).read_text(encoding="utf-8").splitlines())
    data = collect_viewer_data(copy.path)
    assert len(data["episodes"]) == 5
    assert any(eid in w for w in data["warnings"])
    assert any(f"{eid}.jsonl:{broken_line}: invalid JSON" in w for w in data["warnings"])  # the line is named


def test_out_option_and_errors(tmp_path, built, capsys):
    out = tmp_path / "sub" / "v.html"
    assert main([str(built["run_dir"].path), "--out", str(out)]) == 0
    assert out.exists() and f"viewer: {out}" in capsys.readouterr().out
    assert write_viewer(built["run_dir"].path, tmp_path) == tmp_path / "viewer.html"
    with pytest.raises(SceneSimError, match="no such run directory"):
        write_viewer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneSimError, match="not a run directory"):
        write_viewer(tmp_path / "empty")
    assert main([str(tmp_path / "missing")]) == 2
    assert "scene-sim: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_six_thousand_episodes_stay_compact(tmp_path_factory):
    path = shared_synthetic_viewer(tmp_path_factory.getbasetemp())
    size = path.stat().st_size
    _, data = parse_page(path)
    assert len(data["episodes"]) == 6000
    text_bytes = sum(len(s.encode("utf-8")) for s in data["strings"])
    per_episode = (size - text_bytes) / 6000
    # the chat text is stored once; the structure costs about 1.5 kB per episode of ~40 actions
    assert per_episode < 2500, per_episode
    assert size < 20_000_000, size


def test_label_counts_never_exceed_the_chat_turns_beside_them(built, tmp_path):
    # a judge that labels a turn twice, or a turn id that is not in the chat, must not inflate the counts
    src: RunDir = built["run_dir"]
    run = tmp_path / "run"
    shutil.copytree(src.path, run)
    rd = RunDir(run)
    eid = rd.episode_ids()[0]
    doc = rd.read_labels(eid)
    labels = doc["turn_labels"]
    chat_turns = {lab["turn_id"] for lab in labels}
    first = labels[0]
    doc["turn_labels"] = [
        *labels,
        *[{**lab, "label": "DEMONSTRATION"} for lab in labels],  # every turn labelled again
        {**first, "turn_id": 999, "label": "DEMONSTRATION"},  # a turn that does not exist
    ]
    (run / "labels" / f"{eid}.json").write_text(json.dumps(doc))
    data = collect_viewer_data(run)
    ep = _episode(data, eid)
    ids = [tid for tid, _ in ep["l"]]
    assert len(ids) == len(set(ids)) and set(ids) <= chat_turns  # one label per chat turn, none invented
    assert len(ep["l"]) <= ep["n"][0] + ep["n"][1]  # never more labels than messages + reactions
    strings = _strings(data)
    assert {strings[s] for _, s in ep["l"]} == {"DEMONSTRATION"}  # the last label given to a turn wins


def test_the_viewer_says_what_each_count_counts(built):
    js = (Path(__file__).resolve().parents[1] / "scene_sim" / "_viewer" / "viewer.js").read_text()
    assert "chat turns (" in js and '" turns"' in js and "chat turns the judge labelled" in js


def test_view_of_a_file_is_not_a_missing_run_directory(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("{}\n")
    with pytest.raises(SceneSimError, match="is a file, not a run directory"):
        write_viewer(path)
