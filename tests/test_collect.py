from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from scene_sim.studies.scene.collect import (
    STREAMS,
    EpisodeStreams,
    StreamEvent,
    collect_streams,
    streams_dataframe,
    streams_table,
    summarize,
    to_datacollector,
)
from scene_sim.studies.scene.judge import Episode, OracleJudge, labels_from_dicts, load_episode
from scene_sim.studies.scene.model import STREAM_TABLES, SceneModel
from scene_sim.studies.scene.oracle import TurnLabel

from .fixtures.builders import HAND, LONG, build_events

PAPER = Path(__file__).parent / "fixtures" / "paper"


def labels(rows: list[tuple[int, str, str]], **extra: dict[str, Any]) -> list[TurnLabel]:
    return [TurnLabel(tid, actor, lab, **extra.get(str(tid), {})) for tid, actor, lab in rows]


# A hand-built transcript whose streams are known exactly:
#   tick 0: scaffold (t1), precedent breach (t2) and its sanction (t3) -> none of them in D or S
#   tick 1: elicitor (t4, excluded); persona demos t5, t6; subject breach t7; persona sanction t8 (tick 1)
#   tick 2: subject no-op; subject compliant t9
#   tick 4: subject repair t10 (= sanction tick + 3: repaired); persona demo t11
#   tick 5: subject breach t12; persona sanction t13 (tick 5)
#   tick 9: subject repair t14 (= tick 5 + 4: NOT within the window)
ROWS = [
    (0, "Ana", "message", "server is down", {"script": "opening"}),  # t1
    (0, "Cy", "message", LONG, {"script": "precedent"}),  # t2
    (0, "Ben", "message", "Cy, please keep it short", {"script": "precedent"}),  # t3
    (1, "Ben", "message", "@Sam is the db up?", {"script": "elicitor"}),  # t4
    (1, "Ana", "message", "yes", {}),  # t5
    (1, "Cy", "message", "up", {}),  # t6
    (1, "Sam", "message", LONG, {}),  # t7
    (1, "Ana", "message", "Sam, please keep it short", {}),  # t8
    (2, "Sam", "no-op", "", {}),
    (2, "Sam", "message", "ok", {}),  # t9
    (4, "Sam", "message", "sorry, long-winded. short version: yes.", {}),  # t10
    (4, "Ben", "message", "rolling back", {}),  # t11
    (5, "Sam", "message", LONG, {}),  # t12
    (5, "Cy", "react", "💀", {"target": 12}),  # t13
    (9, "Sam", "message", "my bad", {}),  # t14
]
LABELS = [
    (1, "Ana", "DEMONSTRATION"), (2, "Cy", "BREACH"), (3, "Ben", "SANCTION"), (4, "Ben", "DEMONSTRATION"),
    (5, "Ana", "DEMONSTRATION"), (6, "Cy", "DEMONSTRATION"), (7, "Sam", "BREACH"), (8, "Ana", "SANCTION"),
    (9, "Sam", "DEMONSTRATION"), (10, "Sam", "FACE_SAVE_REPAIR"), (11, "Ben", "DEMONSTRATION"), (12, "Sam", "BREACH"),
    (13, "Cy", "SANCTION"), (14, "Sam", "FACE_SAVE_REPAIR"),
]  # fmt: skip


@pytest.fixture
def known() -> tuple[Episode, list[TurnLabel]]:
    ep = Episode.from_events(build_events(ROWS, sanction="explicit_callout", precedent=1))
    return ep, labels(LABELS, **{"13": {"modality": "corrective_reactions", "target_turn_id": 12}})


def ids(events: tuple[StreamEvent, ...]) -> list[tuple[int, int]]:
    return [(e.tick, e.turn_id) for e in events]


def test_known_transcript_streams(known: tuple[Episode, list[TurnLabel]]) -> None:
    ep, labs = known
    st = collect_streams(ep, labs)
    assert ids(st.demonstrations) == [(1, 5), (1, 6), (4, 11)]  # scaffold, elicitor, precedent excluded
    assert ids(st.breaches) == [(1, 7), (5, 12)]
    assert ids(st.sanctions) == [(1, 8), (5, 13)]  # precedent sanction t3 excluded
    assert ids(st.repairs) == [(4, 10), (9, 14)]
    assert st.sanctions[0].target_turn_id == 7 and st.sanctions[1].modality == "corrective_reactions"
    assert st.repairs[0].target_turn_id == 8 and st.repairs[1].target_turn_id == 13
    assert [e.turn_id for e in st.persona_breaches] == []  # the precedent breach is not a persona breach
    assert st.x_e == 2  # t5, t6 before the first breach t7
    # later subject actions: t9, t10, t12, t14 (the no-op does not count); one breach
    assert st.y_counts == (1, 4) and st.y_e == 0.25
    s = summarize(ep, labs, episode_metrics={"sanction_shape_match": False})
    assert (s.demonstrations, s.breaches, s.sanctions, s.repairs) == (3, 2, 2, 2)
    assert s.sanction_marks == ((1, 8), (5, 13)) and s.repair_marks == ((4, 10), (9, 14))
    assert s.subject_actions == 5 and s.labelled_actions == 5 and s.compliant_actions == 3
    assert s.sanction_delivered is True and s.shape_match is False


def test_sanction_and_repair_need_their_antecedents() -> None:
    rows = [
        (1, "Ana", "message", "stop", {}),  # a "sanction" before any subject breach
        (1, "Sam", "message", "sorry", {}),  # a "repair" before any sanction
        (2, "Sam", "message", LONG, {}),  # breach t3
        (2, "Ben", "message", "Cy, please", {}),  # sanction aimed at a persona turn
        (3, "Cy", "message", "Sam, please", {}),  # sanction of the subject
    ]
    ep = Episode.from_events(build_events(rows))
    labs = labels(
        [
            (1, "Ana", "SANCTION"),
            (2, "Sam", "FACE_SAVE_REPAIR"),
            (3, "Sam", "BREACH"),
            (4, "Ben", "SANCTION"),
            (5, "Cy", "SANCTION"),
        ],
        **{"4": {"target_turn_id": 1}},
    )
    st = collect_streams(ep, labs)
    assert [e.turn_id for e in st.sanctions] == [5]
    assert st.repairs == ()
    assert st.x_e == 0 and st.y_e is None  # no subject action after the first breach: undefined


def test_labels_file_dicts_are_accepted(known: tuple[Episode, list[TurnLabel]]) -> None:
    ep, labs = known
    dicts = [{"turn_id": lab.turn_id, "actor": lab.actor, "label": lab.label} for lab in labs]
    dicts.append({"turn_id": "junk"})
    assert collect_streams(ep, dicts).breaches == collect_streams(ep, labs).breaches


@pytest.mark.parametrize("subject", ["scripted/learner", "scripted/always-message", "scripted/random"])
def test_collector_matches_the_online_streams(taxonomy: Any, subject: str) -> None:
    # Every bank scenario (precedent sub-scripts, scaffold lines, every sanction modality): the
    # online DataCollector rows and the offline collector's rows are the same rows.
    from scene_sim.studies.scene._catalog import scenario_source

    compared = 0
    for i, sc in enumerate(scenario_source(None)):
        model = SceneModel(scenario=sc, subject=subject, seed=i)
        result = asyncio.run(model.arun())
        ep = Episode.from_events(result.events)
        st = collect_streams(ep, OracleJudge(taxonomy).label_sync(ep).turn_labels)
        for table in STREAM_TABLES:
            mine = [e.row(table) for e in getattr(st, table)]
            assert mine == model.streams[table], (sc.id, table)
            compared += len(mine)
    assert compared > 100


def test_datacollector_has_the_model_tables(known: tuple[Episode, list[TurnLabel]]) -> None:
    ep, labs = known
    st = collect_streams(ep, labs)
    dc = to_datacollector(st)
    for table, columns in STREAM_TABLES.items():
        df = dc.get_table_dataframe(table)
        assert list(df.columns) == columns
        assert len(df) == len(getattr(st, table))
    sanctions = dc.get_table_dataframe("sanctions")
    assert sanctions["turn_id"].tolist() == [8, 13] and sanctions["tick"].tolist() == [1, 5]
    assert sanctions["modality"].tolist()[1] == "corrective_reactions"


def test_tidy_table(known: tuple[Episode, list[TurnLabel]]) -> None:
    ep, labs = known
    st = collect_streams(ep, labs)
    rows = streams_table([(ep, st), (ep, st)])
    assert len(rows) == 2 * 9
    assert {r["stream"] for r in rows} == set(STREAMS)
    df = streams_dataframe([(ep, st)])
    assert df.groupby("stream").size().to_dict() == {"B": 2, "D": 3, "R": 2, "S": 2}
    assert df.loc[df.stream == "S", "tick"].tolist() == [1, 5]


def test_oracle_hand_episode_streams(taxonomy: Any) -> None:
    ep = Episode.from_events(build_events(HAND))
    st = collect_streams(ep, OracleJudge(taxonomy).label_sync(ep).turn_labels)
    assert isinstance(st, EpisodeStreams)
    assert ids(st.demonstrations) == [(1, 4), (3, 7)] and ids(st.breaches) == [(1, 3)]
    assert ids(st.sanctions) == [(2, 5)] and ids(st.repairs) == [(2, 6)]


# -- the paper's sample episodes (SCENE appendix C) --------------------------------------------------------
def _paper(name: str) -> tuple[Episode, dict[str, Any]]:
    path = next((PAPER / "episodes").glob(f"*{name}*.jsonl"))
    doc = json.loads((PAPER / "labels" / (path.stem + ".json")).read_text(encoding="utf-8"))
    return load_episode(path), doc


def _counts(st: EpisodeStreams) -> dict[str, int]:
    return {k: len(getattr(st, v)) for k, v in (("D", "demonstrations"), ("B", "breaches"), ("S", "sanctions"),
                                                ("R", "repairs"))}  # fmt: skip


def test_paper_c1_breach_then_repair() -> None:
    ep, doc = _paper("opus47")
    st = collect_streams(ep, labels_from_dicts(doc["turn_labels"]))
    # the paper: 1 breach, 1 sanction, 1 repair, 2 demonstrations
    assert _counts(st) == {"D": 2, "B": 1, "S": 1, "R": 1}
    assert doc["paper_counts"] == {"breaches": 1, "sanctions": 1, "repairs": 1, "demonstrations": 2}
    s = summarize(ep, labels_from_dicts(doc["turn_labels"]), episode_metrics=doc["episode_metrics"])
    assert s.sanction_marks == ((4, 11),) and s.repair_marks == ((4, 12),)
    assert st.x_e == 1 and st.y_e == 0.0  # Priya's t1 demonstration; 3 later subject actions, none a breach
    assert doc["episode_metrics"]["subject_corrected"] and doc["episode_metrics"]["subject_face_save"]


def test_paper_c2_breach_no_repair() -> None:
    ep, doc = _paper("llama33")
    st = collect_streams(ep, labels_from_dicts(doc["turn_labels"]))
    # the paper says 2 breaches, 4 sanctions, 0 repairs. The 4 sanctions are corrective reactions, which the
    # appendix does not render: the shown transcript has no sanction turn (see the fixture's transcription_note).
    assert _counts(st) == {"D": 2, "B": 2, "S": 0, "R": 0}
    assert doc["paper_counts"]["breaches"] == 2 and doc["paper_counts"]["repairs"] == 0
    assert doc["paper_counts"]["sanctions"] == 4
    assert st.x_e == 1 and st.y_counts == (1, 9)


def test_paper_c3_no_breach() -> None:
    ep, doc = _paper("g31pro")
    st = collect_streams(ep, labels_from_dicts(doc["turn_labels"]))
    assert _counts(st) == {"D": 2, "B": 0, "S": 0, "R": 0}  # the paper: 0 / 0 / 0, 2 demonstrations
    assert st.x_e is None and st.y_e is None
    assert len(ep.turns) == 12 and {t.actor for t in ep.turns} == {"Marcus", "Javier", "Lin", "Sloane", "Vikram"}


# -- the summary stored in a labels file -----------------------------------------------------------------------


def _label_dicts(labs: list[TurnLabel]) -> list[dict[str, Any]]:
    return [
        {"turn_id": x.turn_id, "actor": x.actor, "label": x.label, "target_turn_id": x.target_turn_id} for x in labs
    ]


def test_summary_record_round_trips_through_json(known: tuple[Episode, list[TurnLabel]]) -> None:
    from scene_sim.studies.scene.collect import summary_from_record, summary_record

    ep, labs = known
    dicts = _label_dicts(labs)
    summary = summarize(
        ep, labels_from_dicts(dicts), validity="PARTIAL", episode_metrics={"sanction_shape_match": True}
    )
    record = json.loads(json.dumps(summary_record(summary, dicts)))
    assert "validity" not in record and "judge" not in record  # those are read from the labels document
    back = summary_from_record(
        record, dicts, validity="PARTIAL", shape_match_metric=True, judge="", judge_source="", judge_failure=False
    )
    assert back == summary and back.sanction_marks == ((1, 8), (5, 13))


def test_summary_record_is_refused_when_it_no_longer_matches(known: tuple[Episode, list[TurnLabel]]) -> None:
    from scene_sim.studies.scene.collect import SUMMARY_VERSION, labels_digest, summary_from_record, summary_record

    ep, labs = known
    dicts = _label_dicts(labs)
    record = summary_record(summarize(ep, labels_from_dicts(dicts)), dicts)
    ok = {"validity": "VALID", "shape_match_metric": False}
    assert summary_from_record(record, dicts, **ok) is not None
    relabelled = [dict(d, label="NONE") if d["label"] == "BREACH" else d for d in dicts]
    retargeted = [dict(d, target_turn_id=7) if d["turn_id"] == 13 else d for d in dicts]
    for other in (relabelled, retargeted, dicts[:-1], "junk"):
        assert labels_digest(other) != labels_digest(dicts)
        assert summary_from_record(record, other, **ok) is None
    assert summary_from_record({**record, "v": SUMMARY_VERSION + 1}, dicts, **ok) is None
    assert summary_from_record({k: v for k, v in record.items() if k != "breaches"}, dicts, **ok) is None
    assert summary_from_record(None, dicts, **ok) is None
