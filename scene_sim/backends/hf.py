"""Local transformers models: ``hf/<hub-id-or-path>``.

:class:`HFBackend` runs a causal language model from a local directory (or
the local Hugging Face cache - nothing is ever downloaded) inside the
process. Many agents call it concurrently from one asyncio event loop, so:

* all torch work happens in **one worker thread per loaded model**;
  :meth:`HFBackend.generate` only enqueues the request and awaits an asyncio
  future that the worker resolves through ``loop.call_soon_threadsafe``, so
  the event loop never blocks (even the ``import torch`` and the model load
  happen in the worker);
* the worker **batches** requests that arrive together (up to ``max_batch``,
  waiting ``batch_wait_ms`` for stragglers): prompts are prefilled in one
  padded forward pass, choice options of all requests are scored in one
  forward pass and free text of all requests is decoded in one batched loop;
* every request is a small program of operations (see
  :mod:`scene_sim.backends._guided`): free text is one *generate*
  (``max_tokens``, ``stop`` strings trimmed, ``temperature`` 0/None =
  greedy, ``seed`` for sampling; never empty), a ``choices`` request one
  *choose* (each option scored as the assistant's continuation: the sum of
  its token log-probs, optionally length-normalised; the token prefix all
  options share is run once; the end-of-turn marker is appended only when
  one option is a prefix of another), and a ``schema`` request a guided
  decoding program that writes the JSON itself and asks the model only for
  the real decisions, so the object is valid by construction. Programs of
  different requests advance in lock-step rounds, so their model operations
  share batches;
* each request keeps its own KV cache between its operations, and a
  cross-request **prefix cache** reuses the KV of earlier prompts that share
  a token prefix (an agent's next prompt extends its previous one); reused
  prompt tokens are reported as ``Usage.cached_tokens``.

Options (model-string query or keyword arguments):

* ``adapter``: path to a PEFT LoRA adapter, merged into the weights at load.
* ``device``: ``auto`` (cuda > mps > cpu), ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
* ``dtype``: ``auto`` (bf16, or fp16 without bf16 support, on GPU; fp32 on
  CPU), ``float32``, ``bfloat16``, ``float16``.
* ``max_batch`` (8): requests processed together.
* ``batch_wait_ms`` (5): how long the worker waits for more requests.
* ``length_normalize`` (false): score choices by mean instead of sum log-prob.
* ``sample_choices`` (false): with a temperature > 0, sample a choice from
  the softmax of its scores instead of taking the argmax.
* ``repetition_penalty`` (1.0) for free text, applied as in llama.cpp and
  transformers (positive logits divided, negative ones multiplied) to the
  tokens of the last ``repetition_window`` (64) tokens, context included;
  ``top_p`` (1.0).
* ``prefix_cache_mb`` (512): memory for the cross-request prefix cache (0 disables).
* ``threads``: torch intra-op threads (default: all cores; on a small
  machine shared with other busy processes, fewer threads are steadier).
* ``string_max_tokens`` (200): token cap for one free string in a schema.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import queue
import random
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from scene_sim.backends import _guided as guided
from scene_sim.backends.base import (
    Backend,
    BackendError,
    Capabilities,
    GenerateRequest,
    GenerateResponse,
    Usage,
)
from scene_sim.errors import SceneSimError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["BatchStats", "HFBackend", "pick_device", "pick_dtype"]

log = logging.getLogger(__name__)

_KNOWN_OPTIONS = frozenset(
    {
        "adapter",
        "device",
        "dtype",
        "max_batch",
        "batch_wait_ms",
        "length_normalize",
        "sample_choices",
        "repetition_penalty",
        "repetition_window",
        "top_p",
        "prefix_cache_mb",
        "threads",
        "string_max_tokens",
    }
)

#: Options that change what the model answers (part of the response-cache identity).
_IDENTITY_OPTIONS = (
    "adapter",
    "dtype",
    "length_normalize",
    "sample_choices",
    "repetition_penalty",
    "repetition_window",
    "top_p",
)


def adapter_digest(folder: str | Path) -> str:
    """SHA-256 of a PEFT adapter folder's config and weights (names and bytes, in name order)."""
    digest = hashlib.sha256()
    root = Path(folder).expanduser()
    for path in sorted(root.glob("adapter_*")):
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


#: Rows of one scoring forward pass.
_SCORE_CHUNK = 32
#: Minimum prompt tokens worth taking from the prefix cache.
_MIN_PREFIX_REUSE = 16


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass(frozen=True, slots=True)
class _Options:
    adapter: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    length_normalize: bool = False
    sample_choices: bool = False
    repetition_penalty: float = 1.0
    repetition_window: int = 64
    top_p: float = 1.0
    prefix_cache_mb: float = 512.0
    threads: int = 0
    string_max_tokens: int = guided.STRING_MAX_TOKENS

    @classmethod
    def parse(cls, options: dict[str, Any], defaults: dict[str, Any] | None = None) -> _Options:
        merged = {**(defaults or {}), **options}
        unknown = sorted(set(merged) - _KNOWN_OPTIONS)
        if unknown:
            log.warning("hf backend: ignoring unknown option(s) %s", ", ".join(unknown))
        try:
            return cls(
                adapter=str(merged["adapter"]) if merged.get("adapter") else None,
                device=str(merged.get("device", "auto")),
                dtype=str(merged.get("dtype", "auto")),
                max_batch=max(1, int(merged.get("max_batch", 8))),
                batch_wait_ms=max(0.0, float(merged.get("batch_wait_ms", 5.0))),
                length_normalize=_as_bool(merged.get("length_normalize", False)),
                sample_choices=_as_bool(merged.get("sample_choices", False)),
                repetition_penalty=float(merged.get("repetition_penalty", 1.0)),
                repetition_window=max(0, int(merged.get("repetition_window", 64))),
                top_p=float(merged.get("top_p", 1.0)),
                prefix_cache_mb=max(0.0, float(merged.get("prefix_cache_mb", 512.0))),
                threads=int(merged.get("threads", 0) or 0),
                string_max_tokens=max(1, int(merged.get("string_max_tokens", guided.STRING_MAX_TOKENS))),
            )
        except (TypeError, ValueError) as exc:
            raise SceneSimError(f"bad hf backend option: {exc}") from exc


@dataclass
class BatchStats:
    """Counters the worker keeps (tests and benchmarks read them).

    Attributes:
        rounds: scheduling rounds run.
        requests: requests completed.
        max_requests_per_op: most requests that shared one model operation.
        op_batches: ``(operation, requests in the batch) -> count``.
        generated_tokens: tokens sampled by free-text decoding.
        prefill_tokens: tokens run through prefill / extension forward passes.
        cached_tokens: prompt tokens taken from the prefix cache.

    """

    rounds: int = 0
    requests: int = 0
    max_requests_per_op: int = 0
    op_batches: Counter[tuple[str, int]] = field(default_factory=Counter)
    generated_tokens: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0

    def record(self, op: str, n: int) -> None:
        """Count one batch of ``n`` requests doing ``op``."""
        self.op_batches[(op, n)] += 1
        self.max_requests_per_op = max(self.max_requests_per_op, n)


def pick_device(option: str = "auto") -> torch.device:
    """The torch device for ``option``: ``auto`` prefers cuda, then mps, then cpu."""
    import torch

    if option and option != "auto":
        return torch.device(option)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(option: str, device: torch.device) -> torch.dtype:
    """The model dtype: ``auto`` is bf16/fp16 on GPUs and fp32 on CPU."""
    import torch

    if option and option != "auto":
        dtype = getattr(torch, option, None)
        if not isinstance(dtype, torch.dtype):
            raise SceneSimError(f"unknown dtype {option!r}; use auto, float32, bfloat16 or float16")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


# --------------------------------------------------------------------------- worker-side state


@dataclass(eq=False)
class _Job:
    request: GenerateRequest | None  # None: a load / warm-up request
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


class _Seq:
    """One request's token sequence and its KV cache.

    ``kv`` holds per-layer ``(keys, values)`` of shape ``[1, heads, n_cached, dim]``
    for ``ids[:n_cached]``; ``logprobs`` is the next-token distribution after
    them (valid when nothing is pending).
    """

    __slots__ = ("ids", "kv", "logprobs", "n_cached")

    def __init__(self, ids: list[int]) -> None:
        self.ids = list(ids)
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.n_cached = 0
        self.logprobs: torch.Tensor | None = None

    @property
    def pending(self) -> list[int]:
        return self.ids[self.n_cached :]


@dataclass(eq=False)
class _Active:
    job: _Job
    program: guided.Program
    seq: _Seq
    kind: str
    rng: torch.Generator | None
    temperature: float
    prompt_tokens: int
    cached_tokens: int = 0
    op: guided.Op | None = None
    result: Any = None
    finish_reason: str | None = None


class _PrefixCache:
    """LRU of prompt KV caches; finds the longest shared token prefix."""

    def __init__(self, max_bytes: float) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, tuple[Any, list[tuple[Any, Any]], int]] = OrderedDict()
        self._bytes = 0
        self._next = 0

    def lookup(self, ids: list[int]) -> tuple[int, list[tuple[Any, Any]] | None]:
        import numpy as np

        if not self._entries:
            return 0, None
        query = np.asarray(ids, dtype=np.int64)
        best, best_key = 0, None
        for key, (arr, _kv, _nbytes) in self._entries.items():
            n = min(len(arr), len(query))
            if n <= best:
                continue
            diff = np.flatnonzero(arr[:n] != query[:n])
            common = int(diff[0]) if diff.size else n
            if common > best:
                best, best_key = common, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, self._entries[best_key][1]

    def store(self, ids: list[int], kv: list[tuple[Any, Any]]) -> None:
        import numpy as np

        if self.max_bytes <= 0 or not kv:
            return
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if nbytes > self.max_bytes:
            return
        arr = np.asarray(ids, dtype=np.int64)
        # drop entries this prompt supersedes (they are a prefix of it)
        for key in [k for k, (a, _, _) in self._entries.items() if len(a) <= len(arr) and (a == arr[: len(a)]).all()]:
            self._bytes -= self._entries.pop(key)[2]
        self._entries[self._next] = (arr, kv, nbytes)
        self._next += 1
        self._bytes += nbytes
        while self._bytes > self.max_bytes and self._entries:
            self._bytes -= self._entries.popitem(last=False)[1][2]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


def _buffer_layer_class() -> type:
    """A DynamicLayer over a preallocated buffer (no ``torch.cat`` per decoding step)."""
    from transformers.cache_utils import DynamicLayer

    class _BufferLayer(DynamicLayer):  # type: ignore[misc, valid-type]
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
            super().__init__()
            b, h, n, d = keys.shape
            self._k = keys.new_zeros((b, h, max(capacity, n), d))
            self._v = values.new_zeros((b, h, max(capacity, n), values.shape[-1]))
            self._k[:, :, :n] = keys
            self._v[:, :, :n] = values
            self._n = n
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
            self._views()

        def _views(self) -> None:
            self.keys = self._k[:, :, : self._n]
            self.values = self._v[:, :, : self._n]

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            return None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            n, m = self._n, key_states.shape[-2]
            if n + m > self._k.shape[-2]:
                grow = max(n + m, 2 * self._k.shape[-2])
                for name in ("_k", "_v"):
                    old = getattr(self, name)
                    new = old.new_zeros((*old.shape[:2], grow, old.shape[-1]))
                    new[:, :, :n] = old[:, :, :n]
                    setattr(self, name, new)
            self._k[:, :, n : n + m] = key_states
            self._v[:, :, n : n + m] = value_states
            self._n = n + m
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self._n

        def crop(self, tokens_to_remove: int) -> None:
            self._n = max(0, self._n - abs(tokens_to_remove))
            self._views()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._k = self._k[indices]
            self._v = self._v[indices]
            self._views()

    return _BufferLayer


class _Engine:
    """The loaded model and everything that touches torch. Worker thread only."""

    def __init__(self, model: Any, tokenizer: Any, opts: _Options, stats: BatchStats) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.tok = tokenizer
        self.opts = opts
        self.stats = stats
        self.device = next(model.parameters()).device
        self.prefix = _PrefixCache(opts.prefix_cache_mb * 1024 * 1024)
        self._BufferLayer = _buffer_layer_class()
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.pad_id = self._pad_id()
        self.eos_ids = self._eos_ids()
        self.eot_text = self._eot_text()
        self._vocab_texts: list[str] | None = None
        self._masks: dict[str, torch.Tensor] = {}
        self._eos_mask: Any = None
        self._special_not_eos: Any = None
        head = model.get_output_embeddings()
        weight = head.weight() if callable(head.weight) else head.weight  # a quantised linear's weight is a method
        self.vocab_size = int(weight.shape[0])
        # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns); use what forward takes
        import inspect

        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    # ---------------------------------------------------------------- tokenizer helpers

    def _pad_id(self) -> int:
        for cand in (self.tok.pad_token_id, self.tok.eos_token_id, getattr(self.model.config, "pad_token_id", None)):
            if isinstance(cand, int):
                return cand
        return 0

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        cands: list[Any] = [self.tok.eos_token_id]
        gen = getattr(self.model, "generation_config", None)
        if gen is not None:
            cands.append(gen.eos_token_id)
        cands.append(getattr(self.model.config, "eos_token_id", None))
        for c in cands:
            if isinstance(c, int):
                ids.add(c)
            elif isinstance(c, list | tuple):
                ids.update(int(x) for x in c if isinstance(x, int))
        return ids

    def _eot_text(self) -> str:
        """The text that ends an assistant turn in this chat format."""
        if self.has_template:
            with contextlib.suppress(Exception):
                probe = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "XYZZY"}]
                full = self.tok.apply_chat_template(probe, tokenize=False)
                tail = full[full.rfind("XYZZY") + 5 :].strip()
                if tail:
                    ids = self.encode(tail)
                    if len(ids) == 1:
                        self.eos_ids.add(ids[0])
                    return tail
            if self.tok.eos_token:
                return str(self.tok.eos_token)
        return "\n"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens added."""
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens dropped)."""
        return str(self.tok.decode(list(ids), skip_special_tokens=True))

    def render(self, request: GenerateRequest) -> list[int]:
        """The chat-templated prompt of ``request`` as token ids."""
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend(
            {"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in request.messages
        )
        # a final assistant message is a prefill: the answer continues it
        prefill = bool(messages) and messages[-1]["role"] == "assistant"
        if self.has_template:
            kwargs: dict[str, Any] = {"continue_final_message": True} if prefill else {"add_generation_prompt": True}
            try:
                text = self.tok.apply_chat_template(messages, tokenize=False, **kwargs)
            except Exception:
                # templates without a system role: fold it into the first user turn
                merged = [m for m in messages if m["role"] != "system"]
                if request.system:
                    if merged and merged[0]["role"] == "user":
                        merged[0] = {"role": "user", "content": f"{request.system}\n\n{merged[0]['content']}"}
                    else:
                        merged.insert(0, {"role": "user", "content": request.system})
                text = self.tok.apply_chat_template(merged, tokenize=False, **kwargs)
            return self.encode(str(text))
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        text = text[:-1] if prefill else text + "assistant:"
        return list(self.tok(text)["input_ids"])

    def vocab_texts(self) -> list[str]:
        """Decoded text of every token id (computed once)."""
        if self._vocab_texts is None:
            n = len(self.tok)
            texts = self.tok.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
            special = set(getattr(self.tok, "all_special_ids", []) or [])
            texts = ["" if i in special else t for i, t in enumerate(texts)]
            self._vocab_texts = texts + [""] * max(0, self.vocab_size - n)
        return self._vocab_texts

    def mask(self, name: str) -> torch.Tensor:
        """Boolean vocab masks used by constrained decoding (cached)."""
        if name not in self._masks:
            texts = self.vocab_texts()
            if name == "blank":
                values = [not t.strip() for t in texts]
            elif name == "invalid":
                values = [i >= len(self.tok) for i in range(self.vocab_size)]
            elif name == "special":
                special = set(getattr(self.tok, "all_special_ids", []) or [])
                values = [i in special for i in range(self.vocab_size)]
            elif name == "digits":
                values = [bool(t) and t.isascii() and t.isdigit() for t in texts]
            elif name == "number":
                values = [bool(t) and all(c in "0123456789." for c in t) for t in texts]
            elif name == "minus":
                values = [t == "-" for t in texts]
            elif name.startswith("char:"):
                ch = name[5:]
                values = [ch in t for t in texts]
            else:  # pragma: no cover
                raise KeyError(name)
            self._masks[name] = self.torch.tensor(values, dtype=self.torch.bool, device=self.device)
        return self._masks[name]

    # ---------------------------------------------------------------- KV cache plumbing

    def _batch_cache(self, kvs: list[list[tuple[Any, Any]] | None], lens: list[int], capacity: int) -> Any:
        """Left-pad the rows' caches into one batched DynamicCache over preallocated buffers."""
        from transformers import DynamicCache

        torch = self.torch
        total = max(lens)
        cache = DynamicCache()
        if total == 0:
            return cache
        ref = next(kv for kv in kvs if kv)
        layers = []
        for li, (k0, v0) in enumerate(ref):
            kshape = (len(kvs), k0.shape[1], total, k0.shape[-1])
            vshape = (len(kvs), v0.shape[1], total, v0.shape[-1])
            keys = torch.zeros(kshape, dtype=k0.dtype, device=k0.device)
            values = torch.zeros(vshape, dtype=v0.dtype, device=v0.device)
            for b, (kv, n) in enumerate(zip(kvs, lens, strict=True)):
                if kv and n:
                    keys[b, :, total - n :] = kv[li][0][0, :, :n]
                    values[b, :, total - n :] = kv[li][1][0, :, :n]
            layers.append(self._BufferLayer(keys, values, capacity))
        cache.layers = layers
        return cache

    @staticmethod
    def _row_kv(cache: Any, b: int, start: int, stop: int) -> list[tuple[Any, Any]]:
        # views into the batch's buffers: nothing writes to them after the forward pass
        return [
            (layer.keys[b : b + 1, :, start:stop], layer.values[b : b + 1, :, start:stop]) for layer in cache.layers
        ]

    def _forward(
        self, rows: list[tuple[_Seq, list[int]]], keep: str, keep_kv: bool
    ) -> tuple[list[torch.Tensor], list[list[tuple[Any, Any]]] | None]:
        """One padded forward pass over new tokens appended to each row's cache.

        Args:
            rows: ``(seq, new_ids)``; the seq's cached KV is the row's past.
            keep: ``last`` (log-probs after the last new token) or ``all``
                (after every new token).
            keep_kv: return each row's updated KV (past + new).

        Returns:
            Per row, log-probs ``[k, vocab]`` (k = 1 or len(new)); per row KV if asked.

        """
        torch = self.torch
        b_n = len(rows)
        lens = [seq.n_cached if seq.kv is not None else 0 for seq, _ in rows]
        p_max = max(lens)
        n_max = max(len(new) for _, new in rows)
        input_ids = torch.full((b_n, n_max), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b_n, p_max + n_max), dtype=torch.long)
        pos = torch.zeros((b_n, n_max), dtype=torch.long)
        for b, ((_, new), plen) in enumerate(zip(rows, lens, strict=True)):
            input_ids[b, : len(new)] = torch.tensor(new, dtype=torch.long)
            attn[b, p_max - plen : p_max + len(new)] = 1
            pos[b] = torch.arange(plen, plen + n_max)
        cache = self._batch_cache([seq.kv for seq, _ in rows], lens, p_max + n_max)
        if keep == "last":
            positions = sorted({len(new) - 1 for _, new in rows})
            logits_to_keep: Any = torch.tensor(positions, dtype=torch.long, device=self.device)
        else:
            positions = list(range(n_max))
            logits_to_keep = 0
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attn.to(self.device),
            position_ids=pos.to(self.device),
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **{self._cache_kw: cache},
        )
        logprobs = out.logits.float().log_softmax(-1)
        cache = _out_cache(out)
        self.stats.prefill_tokens += sum(len(new) for _, new in rows)
        results: list[torch.Tensor] = []
        kvs: list[list[tuple[Any, Any]]] | None = [] if keep_kv else None
        for b, ((_, new), plen) in enumerate(zip(rows, lens, strict=True)):
            if keep == "last":
                results.append(logprobs[b, positions.index(len(new) - 1)].unsqueeze(0))
            else:
                results.append(logprobs[b, : len(new)])
            if kvs is not None:
                kvs.append(self._row_kv(cache, b, p_max - plen, p_max + len(new)))
        return results, kvs

    # ---------------------------------------------------------------- operations

    def sync(self, seqs: list[_Seq]) -> None:
        """Run every seq's pending tokens so its KV and next-token log-probs are current."""
        todo = [s for s in seqs if s.n_cached < len(s.ids) or s.logprobs is None]
        for s in todo:
            if s.n_cached == len(s.ids):  # everything cached but no log-probs: re-run the last token
                s.n_cached -= 1
                s.kv = [(k[:, :, : s.n_cached], v[:, :, : s.n_cached]) for k, v in s.kv or []]
        for group in _buckets(todo, key=lambda s: len(s.ids) - s.n_cached):
            logprobs, kvs = self._forward([(s, s.pending) for s in group], keep="last", keep_kv=True)
            assert kvs is not None
            for s, lp, kv in zip(group, logprobs, kvs, strict=True):
                s.kv, s.n_cached, s.logprobs = kv, len(s.ids), lp[0]

    def score(self, items: list[tuple[_Seq, list[list[int]]]]) -> list[list[float]]:
        """Sum (or mean) log-prob of each option's tokens after each seq's context.

        The token prefix all options of an item share (``{"action": "`` in
        ``{"action": "message"`` / ``{"action": "react"``) is run once, not
        once per option; then every option's remaining tokens are scored in
        one padded batch on top of it.
        """
        torch = self.torch
        bases = [seq for seq, _ in items]
        common = [0.0] * len(items)
        cuts = [_shared_prefix(options) for _, options in items]
        shared: list[tuple[int, _Seq]] = []
        for i, ((seq, options), cut) in enumerate(zip(items, cuts, strict=True)):
            assert seq.logprobs is not None
            if cut:
                tmp = _Seq(seq.ids + options[0][:cut])
                tmp.kv, tmp.n_cached = seq.kv, seq.n_cached
                shared.append((i, tmp))
        for group in _buckets(shared, key=lambda x: len(x[1].pending)):
            logprobs, kvs = self._forward([(tmp, tmp.pending) for _, tmp in group], keep="all", keep_kv=True)
            assert kvs is not None
            for (i, tmp), lp, kv in zip(group, logprobs, kvs, strict=True):
                seq, options = items[i]
                toks = options[0][: cuts[i]]
                common[i] = float(seq.logprobs[toks[0]]) + sum(float(lp[k - 1, t]) for k, t in enumerate(toks) if k)
                tmp.kv, tmp.n_cached, tmp.logprobs = kv, len(tmp.ids), lp[-1]
                bases[i] = tmp
        scores: list[list[float]] = [[0.0] * len(options) for _, options in items]
        rows: list[tuple[_Seq, list[int]]] = []
        where: list[tuple[int, int]] = []
        for i, (_, options) in enumerate(items):
            base = bases[i]
            assert base.logprobs is not None
            for j, opt in enumerate(options):
                rest = opt[cuts[i] :]
                scores[i][j] = common[i] + float(base.logprobs[rest[0]])
                if len(rest) > 1:
                    rows.append((base, rest[:-1]))
                    where.append((i, j))
        for start in range(0, len(rows), _SCORE_CHUNK):
            chunk = rows[start : start + _SCORE_CHUNK]
            logprobs, _ = self._forward(chunk, keep="all", keep_kv=False)
            for (i, j), lp in zip(where[start : start + _SCORE_CHUNK], logprobs, strict=True):
                rest = items[i][1][j][cuts[i] + 1 :]
                targets = torch.tensor(rest, dtype=torch.long, device=lp.device)
                scores[i][j] += float(lp.gather(1, targets.unsqueeze(1)).sum())
        if self.opts.length_normalize:
            for i, (_, options) in enumerate(items):
                scores[i] = [s / max(1, len(o)) for s, o in zip(scores[i], options, strict=True)]
        return scores

    def generate(self, items: list[tuple[_Seq, guided.Generate, float, Any]]) -> list[tuple[str, int, str]]:
        """Decode free text for every item in one batched loop.

        Args:
            items: ``(seq, op, temperature, rng)``; the seqs must be synced.

        Returns:
            Per item ``(text, generated_tokens, finish_reason)``. The seqs'
            caches are left untouched (generation does not commit).

        """
        torch = self.torch
        n = len(items)
        seqs = [s for s, _, _, _ in items]
        steps = max(max(op.max_tokens for _, op, _, _ in items), 1)
        lens = [s.n_cached for s in seqs]
        p_max = max(lens)
        cache = self._batch_cache([s.kv for s in seqs], lens, p_max + steps + 1)
        attn = torch.zeros((n, p_max + steps + 1), dtype=torch.long, device=self.device)
        for b, plen in enumerate(lens):
            attn[b, p_max - plen : p_max] = 1
        pos = torch.tensor(lens, dtype=torch.long, device=self.device)
        logprobs = torch.stack([s.logprobs for s in seqs])  # type: ignore[misc]
        out_ids: list[list[int]] = [[] for _ in items]
        texts = [""] * n
        finish: list[str | None] = [None] * n
        for b, (_, op, _, _) in enumerate(items):
            if op.max_tokens <= 0:
                finish[b] = "length"
        rows = list(range(n))  # batch row -> item index
        width = p_max  # cache columns used so far
        invalid = self.mask("invalid")
        self._ensure_eos_masks()
        while True:
            next_tokens: list[int] = []
            for r, i in enumerate(rows):
                if finish[i] is not None:
                    next_tokens.append(self.pad_id)
                    continue
                tok_id = self._pick(logprobs[r], items[i], out_ids[i], texts[i], invalid)
                if tok_id is None:
                    finish[i] = "stop"
                    next_tokens.append(self.pad_id)
                    continue
                next_tokens.append(tok_id)
                op = items[i][1]
                if tok_id in self.eos_ids and op.stop_at_eos:
                    finish[i] = "stop"
                    continue
                out_ids[i].append(tok_id)
                text = self.decode(out_ids[i])
                cut = min((k for k in (text.find(s) for s in op.stop if s) if k >= 0), default=-1)
                if cut >= 0:
                    text, finish[i] = text[:cut], "stop"
                elif op.max_chars is not None and len(text.strip()) >= op.max_chars:
                    finish[i] = "stop"
                elif len(out_ids[i]) >= op.max_tokens:
                    finish[i] = "length"
                texts[i] = text
            live = [r for r, i in enumerate(rows) if finish[i] is None]
            if not live:
                break
            if len(live) <= len(rows) // 2 and len(rows) > 1:  # compact the batch
                index = torch.tensor(live, dtype=torch.long, device=self.device)
                for layer in cache.layers:
                    layer.batch_select_indices(index)
                attn, pos = attn[index], pos[index]
                next_tokens = [next_tokens[r] for r in live]
                rows = [rows[r] for r in live]
            attn[:, width] = 1
            out = self.model(
                input_ids=torch.tensor(next_tokens, dtype=torch.long, device=self.device).unsqueeze(1),
                attention_mask=attn[:, : width + 1],
                position_ids=pos.unsqueeze(1),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: cache},
            )
            cache = _out_cache(out)
            logprobs = out.logits[:, -1].float()  # raw logits: the repetition penalty needs their sign
            width += 1
            pos = pos + 1
        self.stats.generated_tokens += sum(len(o) for o in out_ids)
        results = []
        for i, (_, op, _, _) in enumerate(items):
            text = texts[i]
            if op.max_chars is not None:
                text = text[: op.max_chars + (len(text) - len(text.lstrip()))]
            results.append((text, len(out_ids[i]), finish[i] or "stop"))
        return results

    def _ensure_eos_masks(self) -> None:
        if self._eos_mask is None:
            eos = self.torch.zeros(self.vocab_size, dtype=self.torch.bool, device=self.device)
            eos[[e for e in self.eos_ids if e < self.vocab_size]] = True
            self._eos_mask = eos
            self._special_not_eos = self.mask("special") & ~eos

    def _pick(
        self,
        logprobs: torch.Tensor,
        item: tuple[_Seq, guided.Generate, float, Any],
        generated: list[int],
        text: str,
        invalid: torch.Tensor,
    ) -> int | None:
        """Choose the next token for one row (None: the row stops here)."""
        torch = self.torch
        seq, op, temperature, rng = item
        self._ensure_eos_masks()
        lp = logprobs.masked_fill(invalid, -math.inf)
        if op.kind in ("integer", "number"):
            rest = self.mask("digits" if op.kind == "integer" else "number")
            if not generated:
                allowed = rest | self.mask("minus") if op.allow_negative else rest
            else:
                allowed = rest
                if self.decode(generated) != "-" and not bool(allowed[int(lp.argmax())]):
                    return None  # the model wants to end the number
            return int(lp.masked_fill(~allowed, -math.inf).argmax())
        penalty, window = self.opts.repetition_penalty, self.opts.repetition_window
        if penalty != 1.0 and window and generated:
            recent = (seq.ids[-window:] + generated)[-window:]
            idx = torch.tensor(sorted(set(recent)), dtype=torch.long, device=lp.device)
            picked = lp[idx]
            lp[idx] = torch.where(picked > 0, picked / penalty, picked * penalty)
        ban = self._special_not_eos  # never start a new turn or emit markup mid-text
        if op.min_chars and len(text.strip()) < op.min_chars:
            ban = ban | self.mask("blank") | self._eos_mask
            for s in op.stop:
                if s:
                    ban = ban | self.mask("char:" + s[0])
        banned = lp.masked_fill(ban, -math.inf)
        if bool(torch.isfinite(banned).any()):
            lp = banned
        if not temperature or temperature <= 0:
            return int(lp.argmax())
        probs = (lp / temperature).softmax(-1)
        if 0.0 < self.opts.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.opts.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs.cpu(), 1, generator=rng))


def _out_cache(out: Any) -> Any:
    """The KV cache a forward pass returned (``cache`` in transformers 5, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _shared_prefix(options: list[list[int]]) -> int:
    """Tokens every option starts with, leaving each option at least one token of its own."""
    if len(options) < 2:
        return 0
    limit = min(len(o) for o in options) - 1
    n = 0
    while n < limit and all(o[n] == options[0][n] for o in options):
        n += 1
    return n


def _buckets(items: list[Any], key: Callable[[Any], int], waste: float = 2.0) -> list[list[Any]]:
    """Group items by length so a padded batch wastes at most ``waste`` x the real tokens."""
    ordered = sorted(items, key=key)
    groups: list[list[Any]] = []
    for item in ordered:
        if groups:
            group = groups[-1]
            longest = key(item)
            if longest * (len(group) + 1) <= waste * (sum(key(x) for x in group) + longest):
                group.append(item)
                continue
        groups.append([item])
    return groups


# --------------------------------------------------------------------------- the backend


_LIVE: weakref.WeakSet[HFBackend] = weakref.WeakSet()


@atexit.register
def _stop_workers() -> None:
    """Stop worker threads at interpreter exit (a thread inside torch must not outlive it)."""
    for backend in list(_LIVE):
        thread = backend._thread
        if thread is not None and thread.is_alive():
            backend._queue.put(None)
            thread.join(timeout=5)


def _resolve_model_dir(model: str) -> str:
    """A local directory for ``model`` (a path, or a hub id already in the HF cache).

    Raises:
        SceneSimError: when the path does not exist or the hub id is not cached.

    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SceneSimError(f"hf model directory {path} has no config.json (expected a transformers model folder)")
        return str(path.resolve())
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep in model.replace("/", "")
    if not looks_like_path:
        try:
            from huggingface_hub import snapshot_download

            cached = snapshot_download(model, local_files_only=True)
            if (Path(cached) / "config.json").is_file():
                return str(cached)
        except Exception:  # any failure means "not in the cache"
            log.debug("hf: %s is not in the local Hugging Face cache", model)
    raise SceneSimError(
        f"hf model '{model}' was not found locally: scene-sim never downloads model weights. "
        f"Pass a local path (hf/<path-to-model-folder>) or put the model in the Hugging Face cache yourself "
        f"(huggingface-cli download {model})"
    )


class HFBackend(Backend):
    """A transformers causal LM served from one worker thread with request batching.

    Args:
        model: a local model folder or a hub id already in the local HF cache.
        base_url: unused (kept for the common constructor signature).
        options: see the module docstring (``adapter``, ``device``, ``dtype``,
            ``max_batch``, ``batch_wait_ms``, ...).

    Raises:
        SceneSimError: when the model or adapter cannot be found locally.

    """

    provider: ClassVar[str] = "hf"
    capabilities: ClassVar[Capabilities] = Capabilities(structured_output=False, scores_choices=True, seed=True)
    #: The worker batches requests, so let many of them queue.
    default_max_connections: ClassVar[int] = 64
    valid_options: ClassVar[frozenset[str] | None] = _KNOWN_OPTIONS
    #: Option defaults of this class (subclasses override).
    option_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: str, *, base_url: str | None = None, **options: Any) -> None:
        super().__init__(model, base_url=base_url, **options)
        self.opts = _Options.parse(options, self.option_defaults)
        if self.opts.adapter and not Path(self.opts.adapter).expanduser().is_dir():
            raise SceneSimError(f"LoRA adapter folder not found: {self.opts.adapter}")
        # the adapter as it is now is the one this backend merges at load
        self._adapter_sha256 = adapter_digest(self.opts.adapter) if self.opts.adapter else None
        self.model_dir = self._resolve_model()
        self.stats = BatchStats()
        self.load_seconds: float | None = None
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._engine: _Engine | None = None
        self._closed = False

    # ---------------------------------------------------------------- hooks for subclasses

    def _resolve_model(self) -> str:
        """The local model folder (called in ``__init__``; must be cheap)."""
        return _resolve_model_dir(self.model)

    def _load_model(self) -> tuple[Any, Any]:
        """Load ``(model, tokenizer)``; runs in the worker thread."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = pick_device(self.opts.device)
        dtype = pick_dtype(self.opts.dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype, local_files_only=True)
        model.to(device)
        if self.opts.adapter:
            model = self._apply_adapter(model, self.opts.adapter)
        model.eval()
        return model, tokenizer

    @staticmethod
    def _apply_adapter(model: Any, adapter: str) -> Any:
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise SceneSimError("LoRA adapters need the peft package: pip install peft") from exc
        peft_model = PeftModel.from_pretrained(model, str(Path(adapter).expanduser()), is_trainable=False)
        return peft_model.merge_and_unload()

    def _optimize(self, model: Any) -> Any:
        """Post-load optimisation hook (e.g. weight packing); runs in the worker thread."""
        return model

    # ---------------------------------------------------------------- public API

    def cache_identity(self) -> dict[str, Any]:
        """Provider, model and the options that change answers.

        An adapter counts by its content too: an adapter retrained into the same
        folder must not be answered from the old one's cached outputs.
        """
        ident = super().cache_identity()
        ident.update({k: getattr(self.opts, k) for k in _IDENTITY_OPTIONS if getattr(self.opts, k) is not None})
        if self._adapter_sha256 is not None:
            ident["adapter_sha256"] = self._adapter_sha256
        return ident

    def classify(self, exc: BaseException) -> BackendError:
        """Out-of-memory is retryable; user errors and everything else are fatal."""
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, SceneSimError):
            return BackendError(str(exc), kind="fatal")
        if "out of memory" in str(exc).lower():
            return BackendError(f"{type(exc).__name__}: {exc}", kind="retry")
        return super().classify(exc)

    def load(self) -> float:
        """Start the worker and load the model now (blocking); returns the load time in seconds.

        Raises:
            SceneSimError: when loading fails (for example, the files are unreadable).

        """
        self._ensure_thread()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._as_user_error(self._load_error)
        return float(self.load_seconds or 0.0)

    async def aload(self) -> float:
        """Load the model without blocking the event loop; returns the load time in seconds.

        Raises:
            BackendError: ``fatal`` when the model cannot be loaded.

        """
        await self._submit(None)
        return float(self.load_seconds or 0.0)

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """Queue ``request`` for the worker and await its response.

        Raises:
            BackendError: ``fatal`` for load failures, unsupported schemas and
                model errors; ``retry`` for out-of-memory.

        """
        if request.schema is not None:
            try:
                guided.compile_schema(request.schema)
            except guided.UnsupportedSchema as exc:
                raise BackendError(str(exc), kind="fatal") from exc
        return await self._submit(request)

    async def aclose(self) -> None:
        """Stop the worker thread (queued requests fail) and free the model."""
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(thread.join)
        self._thread = None

    # ---------------------------------------------------------------- plumbing

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._closed:
                raise BackendError(f"{self.model_string}: backend is closed", kind="fatal")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._worker, name=f"scene-sim-{self.provider}-worker", daemon=True
                )
                self._thread.start()
                _LIVE.add(self)

    async def _submit(self, request: GenerateRequest | None) -> Any:
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        job = _Job(request, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    @staticmethod
    def _as_user_error(exc: BaseException) -> SceneSimError:
        if isinstance(exc, SceneSimError):
            return exc
        if isinstance(exc, ImportError):
            return SceneSimError(f"local models need torch and transformers: pip install 'scene-sim[local]' ({exc})")
        return SceneSimError(f"could not load the model: {exc}")

    def _resolve(self, job: _Job, result: Any = None, error: BaseException | None = None) -> None:
        def done() -> None:
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the job's loop is closed
            job.loop.call_soon_threadsafe(done)

    def _worker(self) -> None:
        t0 = time.perf_counter()
        try:
            import torch

            torch.set_num_threads(self.opts.threads or os.cpu_count() or 1)
            with torch.no_grad():
                model, tokenizer = self._load_model()
                model = self._optimize(model)
            self._engine = _Engine(model, tokenizer, self.opts, self.stats)
            self.load_seconds = time.perf_counter() - t0
        except BaseException as exc:  # reported to every request
            self._load_error = exc
            log.error("%s: model load failed: %s", self.model_string, exc)
        finally:
            self._loaded.set()
        if self._load_error is not None:
            error = BackendError(str(self._as_user_error(self._load_error)), kind="fatal")
            while (job := self._queue.get()) is not None:
                self._resolve(job, error=error)
            return
        import torch

        with torch.inference_mode():
            self._serve()
        self._engine = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _serve(self) -> None:
        active: list[_Active] = []
        closing = False
        while True:
            room = self.opts.max_batch - len(active)
            new_jobs, closing = self._collect(room, block=not active, closing=closing)
            for job in new_jobs:
                if job.request is None:
                    self._resolve(job, self.load_seconds)
                    continue
                try:
                    active.append(self._start(job))
                except Exception as exc:
                    self._resolve(job, error=self.classify(exc))
            active = [a for a in active if not a.job.future.cancelled()]
            if closing:
                break
            if not active:
                continue
            try:
                self._round(active)
            except Exception as exc:
                log.exception("%s: batch failed", self.model_string)
                error = self.classify(exc)
                for a in active:
                    self._resolve(a.job, error=error)
                active = []
                continue
            still: list[_Active] = []
            for a in active:
                if self._advance(a):
                    still.append(a)
            active = still
        error = BackendError(f"{self.model_string}: backend closed", kind="fatal")
        for a in active:
            self._resolve(a.job, error=error)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._resolve(job, error=error)

    def _collect(self, room: int, *, block: bool, closing: bool) -> tuple[list[_Job], bool]:
        jobs: list[_Job] = []
        if room <= 0 or closing:
            return jobs, closing
        if block:
            first = self._queue.get()
            if first is None:
                return jobs, True
            jobs.append(first)
            deadline = time.perf_counter() + self.opts.batch_wait_ms / 1000.0
            while len(jobs) < room:
                remaining = deadline - time.perf_counter()
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    return jobs, True
                jobs.append(job)
            return jobs, False
        while len(jobs) < room:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _start(self, job: _Job) -> _Active:
        import torch

        engine = self._engine
        assert engine is not None and job.request is not None
        req = job.request
        if req.schema is not None:
            node = guided.compile_schema(req.schema)
            program = guided.schema_program(node, req.max_tokens, self.opts.string_max_tokens)
            kind = "schema"
        elif req.choices is not None:
            program = guided.choice_program(tuple(req.choices))
            kind = "choices"
        else:
            program = guided.text_program(req.max_tokens, tuple(req.stop))
            kind = "text"
        ids = engine.render(req)
        seq = _Seq(ids)
        cached = 0
        reuse, kv = engine.prefix.lookup(ids)
        reuse = min(reuse, len(ids) - 1)
        if kv is not None and reuse >= _MIN_PREFIX_REUSE:
            seq.kv = [(k[:, :, :reuse], v[:, :, :reuse]) for k, v in kv]
            seq.n_cached = cached = reuse
            self.stats.cached_tokens += reuse
        temperature = float(req.temperature or 0.0)
        rng = None
        if temperature > 0:
            rng = torch.Generator().manual_seed(req.seed if req.seed is not None else random.getrandbits(62))
        active = _Active(job, program, seq, kind, rng, temperature, len(ids), cached)
        self._advance(active, first=True)
        return active

    def _advance(self, a: _Active, first: bool = False) -> bool:
        """Feed the last result to the program; run forced text; False when finished."""
        engine = self._engine
        assert engine is not None
        try:
            op = next(a.program) if first else a.program.send(a.result)
            while isinstance(op, guided.Emit):
                a.seq.ids.extend(engine.encode(op.text))
                op = a.program.send(None)
        except StopIteration as stop:
            self._finish(a, stop.value)
            return False
        except Exception as exc:
            self._resolve(a.job, error=self.classify(exc))
            return False
        a.op, a.result = op, None
        return True

    def _finish(self, a: _Active, value: Any) -> None:
        engine = self._engine
        assert engine is not None and a.job.request is not None
        if a.kind == "schema":
            text, parsed = json.dumps(value, ensure_ascii=False), value
        else:
            text, parsed = str(value), None
        usage = Usage(
            input_tokens=a.prompt_tokens, output_tokens=len(engine.encode(text)), cached_tokens=a.cached_tokens
        )
        self.stats.requests += 1
        response = GenerateResponse(
            text=text,
            parsed=parsed,
            usage=usage,
            model=self.model_string,
            latency_s=time.perf_counter() - a.job.enqueued,
            finish_reason=a.finish_reason or "stop",
        )
        self._resolve(a.job, response)

    def _round(self, active: list[_Active]) -> None:
        """Run every active request's pending model operation, batched by kind."""
        engine = self._engine
        assert engine is not None
        self.stats.rounds += 1
        fresh = [a for a in active if a.seq.kv is None or a.seq.n_cached < a.prompt_tokens]
        engine.sync([a.seq for a in active])
        for a in fresh:  # remember the prompts for later requests sharing their prefix
            n = a.prompt_tokens
            if a.seq.kv is not None and a.seq.n_cached >= n:
                kv = [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in a.seq.kv]  # own memory, exact size
                engine.prefix.store(a.seq.ids[:n], kv)
        choosers = [a for a in active if isinstance(a.op, guided.Choose)]
        if choosers:
            self.stats.record("choose", len(choosers))
            items = []
            for a in choosers:
                op = a.op
                assert isinstance(op, guided.Choose)
                follow = op.follow.replace(guided.END, engine.eot_text)
                options = [
                    engine.encode(o.replace(guided.END, engine.eot_text) + follow) or [engine.pad_id]
                    for o in op.options
                ]
                items.append((a.seq, options))
            for a, scores in zip(choosers, engine.score(items), strict=True):
                a.result = self._pick_choice(a, scores)
        generators = [a for a in active if isinstance(a.op, guided.Generate)]
        if generators:
            self.stats.record("generate", len(generators))
            gen_items = []
            for a in generators:
                op = a.op
                assert isinstance(op, guided.Generate)
                temperature = a.temperature if op.kind == "text" else 0.0
                gen_items.append((a.seq, op, temperature, a.rng))
            for a, (text, _n, reason) in zip(generators, engine.generate(gen_items), strict=True):
                a.result = text
                if a.kind == "text":
                    a.finish_reason = reason

    def _pick_choice(self, a: _Active, scores: list[float]) -> int:
        if self.opts.sample_choices and a.temperature > 0 and a.rng is not None:
            import torch

            probs = torch.tensor(scores, dtype=torch.float64).div(a.temperature).softmax(-1)
            return int(torch.multinomial(probs, 1, generator=a.rng))
        return max(range(len(scores)), key=lambda i: scores[i])
