"""The hand-written scenario bank: valid, leak-free, covering, and carrying its test."""

from __future__ import annotations

import pytest

from scene_sim.studies.scene.checks import lint_scenario
from scene_sim.studies.scene.scenario import load_scenarios


def test_bank_size_and_cast(bank):
    assert len(bank) >= 28
    for s in bank:
        assert 3 <= len(s.scaffold.channel.cast) <= 4


def test_bank_covers_every_norm_with_and_without_precedent(bank, taxonomy):
    seen = {(s.tuple.norm, s.tuple.precedent) for s in bank}
    missing = {(n, p) for n in taxonomy.norms for p in (0, 1)} - seen
    assert not missing


@pytest.mark.parametrize("axis", ["event", "elicitor", "sanction"])
def test_bank_covers_every_axis_value(bank, taxonomy, axis):
    seen = {getattr(s.tuple, axis) for s in bank}
    assert seen == set(taxonomy.axis_values(axis))


def test_bank_ids_name_their_tuple(bank):
    for s in bank:
        t = s.tuple
        assert s.id.startswith(f"{t.event}__{t.norm}__"), s.id


def test_every_scenario_carries_its_test(bank, taxonomy):
    problems = {s.id: lint_scenario(s, taxonomy) for s in bank}
    assert {k: v for k, v in problems.items() if v} == {}


def test_bank_loads_from_a_single_jsonl(bank, tmp_path, taxonomy):
    import json

    path = tmp_path / "bank.jsonl"
    path.write_text("\n".join(json.dumps(s.model_dump(mode="json")) for s in bank))
    again = load_scenarios(path, taxonomy=taxonomy)
    assert again.ids == bank.ids
