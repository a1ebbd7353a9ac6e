"""Taxonomy: counts, validation messages, the sampler."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from scene_sim.errors import SceneSimError
from scene_sim.studies.scene.taxonomy import AXES, default_taxonomy_dir, load_taxonomy, sample_tuples


def test_counts_match_the_contract(taxonomy):
    counts = taxonomy.counts()
    assert {k: counts[k] for k in ("events", "norms", "elicitors", "sanctions", "precedent")} == {
        "events": 13,
        "norms": 14,
        "elicitors": 7,
        "sanctions": 6,
        "precedent": 2,
    }
    assert counts["cartesian"] == 15288
    assert 0 < counts["valid"] < 15288
    assert counts["valid"] == len(taxonomy.valid_tuples)


def test_every_entry_is_documented(taxonomy):
    for table in (taxonomy.norms, taxonomy.elicitors, taxonomy.sanctions):
        for entry in table.values():
            assert entry.description and entry.rationale and entry.applies_to


def test_norms_form_seven_symmetric_pairs(taxonomy):
    assert len({n.pair for n in taxonomy.norms.values()}) == 7
    for n in taxonomy.norms.values():
        partner = taxonomy.partner(n.id)
        assert partner.pole_partner == n.id
        assert set(partner.applies_to) == set(n.applies_to)
        assert n.norm_text and n.compliance_signals and n.breach_signals


def test_reaction_sanctions_only_where_the_chat_has_reactions(taxonomy):
    no_reactions = {e for e, ev in taxonomy.events.items() if not ev.features["reactions"]}
    assert no_reactions, "the taxonomy should exercise a chat without reactions"
    for t in taxonomy.valid_tuples:
        if t.event in no_reactions:
            assert t.sanction != "corrective_reactions"
            assert "reactions" not in taxonomy.norms[t.norm].requires


def test_valid_tuples_pass_the_filter(taxonomy):
    for t in taxonomy.valid_tuples[::97]:
        taxonomy.check_tuple(t)
        assert t.event in taxonomy.norms[t.norm].applies_to
        assert t.event in taxonomy.elicitors[t.elicitor].applies_to
        assert t.event in taxonomy.sanctions[t.sanction].applies_to


def test_scripted_templates_read_as_their_pole(taxonomy):
    from scene_sim.studies.scene.heuristics import CueReader
    from scene_sim.world import ChatTurn

    reader = CueReader(taxonomy)
    for norm in taxonomy.norms.values():
        for tpl in norm.scripted.comply:
            turn = ChatTurn(10, "x", tpl.action, tpl.content, 1 if tpl.action == "react" else None)
            assert reader.stance(norm.id, turn) != "breach", (norm.id, tpl)
            if norm.cues.comply:
                assert reader.stance(norm.id, turn) == "comply", (norm.id, tpl)
            partner = taxonomy.partner(norm.id)
            if partner.cues.breach:
                assert reader.stance(partner.id, turn) == "breach", (partner.id, tpl)


def _copy(tmp_path):
    dst = tmp_path / "tax"
    shutil.copytree(default_taxonomy_dir(), dst)
    return dst


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        (
            "norms.json",
            lambda d: d["entries"][0]["applies_to"].append("exam_result"),
            "norms.json: entries[0].applies_to: unknown event 'exam_result' (did you mean 'exam_results'?)",
        ),
        (
            "norms.json",
            lambda d: d["entries"][0].update(pole_partner="dark_humour_register"),
            "norms.json: entries[0].pole_partner: asymmetric pair",
        ),
        (
            "elicitors.json",
            lambda d: d["entries"][2].update(applies_to=[]),
            "elicitors.json: entries[2].applies_to: Tuple should have at least 1 item",
        ),
        (
            "sanctions.json",
            lambda d: d["entries"][0]["applies_to"].append("standup"),
            "sanctions.json: entries[0].applies_to: event 'standup' has no 'reactions' feature",
        ),
        (
            "sanctions.json",
            lambda d: d["entries"][2]["cues"][0].update(match="no_such_pattern"),
            "sanctions.json: entries[2].cues[0]: unknown pattern 'no_such_pattern'",
        ),
        (
            "events.json",
            lambda d: d["entries"][0].pop("description"),
            "events.json: entries[0].description: Field required",
        ),
    ],
)
def test_loader_rejects_bad_files_with_one_line(tmp_path, file, edit, message):
    root = _copy(tmp_path)
    _edit(root / file, edit)
    with pytest.raises(SceneSimError) as err:
        load_taxonomy(root)
    text = str(err.value)
    assert "\n" not in text
    assert message in text


def test_loader_reports_invalid_json(tmp_path):
    root = _copy(tmp_path)
    (root / "norms.json").write_text("{ not json")
    with pytest.raises(SceneSimError, match=r"norms.json: invalid JSON at line 1"):
        load_taxonomy(root)


def test_sampler_is_deterministic_and_distinct(taxonomy):
    a = sample_tuples(taxonomy, 200, seed=7)
    b = sample_tuples(taxonomy, 200, seed=7)
    c = sample_tuples(taxonomy, 200, seed=8)
    assert a == b
    assert a != c
    assert len(set(a)) == 200
    assert all(t in set(taxonomy.valid_tuples) for t in a)


@pytest.mark.parametrize("n", [28, 91, 200])
def test_sampler_covers_every_axis_value_evenly(taxonomy, n):
    picks = sample_tuples(taxonomy, n, seed=1)
    for axis in AXES:
        values = taxonomy.axis_values(axis)
        counts = Counter(getattr(t, axis) for t in picks)
        if n >= len(values):
            assert set(counts) == set(values), axis
        # as even as the valid space allows: the spread is at most a couple of picks
        spread = max(counts.values()) - min(counts.get(v, 0) for v in values)
        assert spread <= max(2, n // len(values) // 4 + 2), (axis, counts)


def test_sampler_rejects_impossible_sizes(taxonomy):
    with pytest.raises(SceneSimError, match="between 1 and"):
        sample_tuples(taxonomy, 0)
    with pytest.raises(SceneSimError, match="between 1 and"):
        sample_tuples(taxonomy, len(taxonomy.valid_tuples) + 1)
