"""Builders of run directories for the viewer tests.

``build_run`` simulates a few real offline episodes (scripted personas,
orchestrator and subjects) and writes the run directory per the DESIGN
contract: run.json, episodes/, labels/, episodes.csv and metrics.json. When
``scene_sim.studies.scene.analysis.analyze_run`` is available it writes labels, csv and
metrics; otherwise minimal contract files are written here (labels from the
runtime's oracle labeller).

``build_synthetic_run`` clones those episodes into thousands of synthetic
ones (unique subject text each, prompts dropped) for size and load tests.
"""

from __future__ import annotations

import asyncio
import csv
import json
import random
import re
from pathlib import Path
from typing import Any

from scene_sim.rundir import RunDir
from scene_sim.studies.scene import SceneModel
from scene_sim.studies.scene._catalog import scenario_source
from scene_sim.studies.scene.analysis import CSV_COLUMNS

SUBJECTS = ("scripted/learner", "scripted/always-message")
XSS = '<script>alert("xss")</script></script><!-- <img src=x onerror=alert(1)> & "quotes"'


def pick_scenarios() -> list[str]:
    """Three bank scenarios: the reference one, one with reaction sanctions, one without precedent."""
    bank = scenario_source()
    ids = list(bank.ids)
    chosen = []
    ref = "bug_report__concise_answer_norm__address_explicit__silent_ignore__p1"
    if ref in bank:
        chosen.append(ref)
    for cond in (
        lambda s: s.tuple.sanction == "corrective_reactions",
        lambda s: s.tuple.precedent == 0,
    ):
        for sid in ids:
            if sid not in chosen and cond(bank.get(sid)):
                chosen.append(sid)
                break
    for sid in ids:
        if len(chosen) >= 3:
            break
        if sid not in chosen:
            chosen.append(sid)
    return chosen[:3]


def _labels_from(model: SceneModel, validity: str) -> dict[str, Any]:
    labels = [
        {"turn_id": lab.turn_id, "actor": lab.actor, "label": lab.label}
        for lab in sorted(model.labeler.labels.values(), key=lambda x: x.turn_id)
    ]
    subject = model.subject_name
    breaches = [x for x in labels if x["label"] == "BREACH" and x["actor"] == subject]
    return {
        "turn_labels": labels,
        "episode_metrics": {
            "subject_breach_count": len(breaches),
            "subject_corrected": False,
            "subject_relapses": 0,
            "subject_face_save": any(x["label"] == "FACE_SAVE_REPAIR" for x in labels),
            "subject_late_comply": False,
            "sanction_shape_match": True,
        },
        "fidelity": {"label": validity, "justification": f"fixture: marked {validity}"},
    }


def _minimal_contract_files(rd: RunDir, models: dict[str, SceneModel]) -> None:
    rows = []
    per_model: dict[str, dict[str, Any]] = {}
    for i, (eid, m) in enumerate(sorted(models.items())):
        validity = ("VALID", "VALID", "PARTIAL", "INVALID")[i % 4] if i < 4 else "VALID"
        labels = _labels_from(m, validity)
        rd.write_labels(eid, labels)
        count = {k: len(v) for k, v in m.streams.items()}
        tup = m.scene.tuple
        rows.append(
            {
                "episode_id": eid,
                "subject": m.models["subject"],
                "event": tup.event,
                "norm": tup.norm,
                "elicitor": tup.elicitor,
                "sanction": tup.sanction,
                "precedent": tup.precedent,
                "rep": m.rep,
                "seed": m.seed,
                "end_reason": m.end_reason,
                "demonstrations": count["demonstrations"],
                "breaches": count["breaches"],
                "sanctions": count["sanctions"],
                "repairs": count["repairs"],
                "repaired": "" if not count["sanctions"] else int(count["repairs"] > 0),
                "x_e": "",
                "y_e": "",
                "validity": validity,
            }
        )
        pm = per_model.setdefault(m.models["subject"], {"episodes": 0, "valid": 0, "partial": 0, "invalid": 0})
        pm["episodes"] += 1
        pm[validity.lower()] += 1
    with (rd.path / "episodes.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    metrics = {
        "models": {
            name: {
                **pm,
                "repair": {"rate": 0.25, "ci": [0.05, 0.6], "n": 4},
                "repair_by_sanction": {"silent_ignore": {"rate": 0.5, "ci": [0.1, 0.9], "n": 2}},
                "rho": {"value": -0.4, "ci": [-0.8, 0.1], "n": 3},
                "pairs": {"concise_answer_norm": {"compliance": 0.5, "n": 2}},
                "fidelity": {"persona_breach": 0.0, "sanction_delivered": 1.0, "shape_match": 1.0},
            }
            for name, pm in per_model.items()
        }
    }
    (rd.path / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")


def build_run(path: Path, *, max_turns: int = 4) -> dict[str, Any]:
    """Simulate 6 episodes into ``path``; one subject message is replaced by an XSS probe.

    Returns:
        ``{"run_dir": RunDir, "xss_episode": id, "analysis": bool}``.

    """
    rd = RunDir(path)
    models: dict[str, SceneModel] = {}
    xss_episode = None
    for subject in SUBJECTS:
        for k, sid in enumerate(pick_scenarios()):
            m = SceneModel(scenario=sid, subject=subject, seed=k, max_turns=max_turns)
            asyncio.run(m.arun())
            events = [dict(e) for e in m.log.events]
            if xss_episode is None:
                for e in events:
                    if e["kind"] == "action" and e["actor"] == m.subject_name and e["action"] == "message":
                        e["content"] = XSS
                        xss_episode = m.episode_id
                        break
            rd.write_episode(m.episode_id, events)
            models[m.episode_id] = m
    rd.write_run(
        {
            "scene_sim": "test",
            "command": "fixture",
            "spec": {"models": {"subject": list(SUBJECTS), "personas": "scripted"}, "scenarios": None},
            "episodes": sorted(models),
        }
    )
    used_analysis = False
    try:
        from scene_sim.context import RunContext
        from scene_sim.studies.scene.analysis import analyze_run  # type: ignore[import-not-found]

        async def go() -> None:
            ctx = RunContext(cache_mode="off")
            try:
                await analyze_run(rd, judge="scripted", context=ctx)
            finally:
                await ctx.aclose()

        asyncio.run(go())
        used_analysis = (rd.path / "metrics.json").exists() and len(rd.labelled_ids()) == len(models)
    except Exception:
        used_analysis = False
    if not used_analysis:
        _minimal_contract_files(rd, models)
    return {"run_dir": rd, "xss_episode": xss_episode, "analysis": used_analysis}


def build_synthetic_run(path: Path, source: RunDir, n: int = 6000, seed: int = 0) -> RunDir:
    """Clone ``source``'s episodes into ``n`` synthetic ones (labels too; prompts dropped).

    Subject models, seeds and the subject's message text vary per episode, so
    the text does not all intern into a few strings.
    """
    rng = random.Random(seed)
    rd = RunDir(path)
    rd.episodes_dir.mkdir(parents=True, exist_ok=True)
    rd.labels_dir.mkdir(parents=True, exist_ok=True)
    templates = []
    for eid in source.episode_ids():
        events = [
            json.loads(line)
            for line in source.episode_path(eid).read_text(encoding="utf-8").splitlines()
            if line.strip() and not re.search(r'"kind":\s*"(?:prompt|model_call)"', line[:80])
        ]
        labels = source.read_labels(eid) if source.label_path(eid).exists() else None
        templates.append((events, labels))
    subjects = [f"openai/model-{i}" for i in range(8)]
    # pre-serialise the lines that do not change; only the start line and the subject's messages vary
    prepared = []
    for events, labels in templates:
        subj = events[0]["subject"]
        parts: list[Any] = []
        for e in events:
            dynamic = e["kind"] == "episode_start" or (
                e["kind"] == "action" and e["actor"] == subj and e["action"] == "message"
            )
            parts.append(e if dynamic else json.dumps(e, ensure_ascii=False))
        prepared.append((parts, json.dumps(labels) if labels is not None else None))
    for i in range(n):
        parts, labels_text = prepared[i % len(prepared)]
        eid = f"synthetic-{i:05d}"
        subject = subjects[i % len(subjects)]
        lines = []
        for part in parts:
            if isinstance(part, str):
                lines.append(part)
                continue
            e2 = dict(part)
            if e2["kind"] == "episode_start":
                e2["episode_id"] = eid
                e2["seed"] = i
                e2["models"] = {**e2["models"], "subject": subject}
            else:
                e2["content"] = f"{e2['content'][:60]} (ep {i}, {rng.random():.6f})"
            lines.append(json.dumps(e2, ensure_ascii=False))
        (rd.episodes_dir / f"{eid}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if labels_text is not None:
            (rd.labels_dir / f"{eid}.json").write_text(labels_text, encoding="utf-8")
    rd.write_run({"scene_sim": "test", "command": "synthetic", "spec": {}})
    return rd


_BUILT: dict[str, Any] = {}


def shared_run(base: Path) -> dict[str, Any]:
    """:func:`build_run` once per test session (``base``: the session's tmp root)."""
    if "run" not in _BUILT:
        _BUILT["run"] = build_run(base / "viewer_run")
    return _BUILT["run"]


def shared_synthetic(base: Path, n: int = 6000) -> RunDir:
    """:func:`build_synthetic_run` of ``n`` episodes once per test session."""
    key = f"synthetic-{n}"
    if key not in _BUILT:
        source = shared_run(base)["run_dir"]
        _BUILT[key] = build_synthetic_run(base / f"viewer_synthetic_{n}", source, n)
    return _BUILT[key]


def shared_synthetic_viewer(base: Path, n: int = 6000) -> Path:
    """The viewer of :func:`shared_synthetic`'s run, written once per test session."""
    key = f"synthetic-viewer-{n}"
    if key not in _BUILT:
        from scene_sim.studies.scene.viewer import write_viewer

        _BUILT[key] = write_viewer(shared_synthetic(base, n).path)
    return _BUILT[key]
