"""Model backends (see :mod:`scene_sim.backends.base`).

Use :func:`create_backend` to turn a model string into a
:class:`ManagedBackend` (cache, limits, retries, accounting around one
provider). Provider modules (``anthropic``, ``google``, ``openai``, ``hf``,
``local``, ``fake``) are imported lazily, so their SDKs are optional.
"""

from scene_sim.backends._accounting import Accountant, Price, PriceTable
from scene_sim.backends._cache import CACHE_MODES, CacheMode, ResponseCache, cache_key, default_cache_dir
from scene_sim.backends._managed import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT_S,
    CallFailed,
    FatalBackendError,
    ManagedBackend,
    choice_schema,
    decode_json,
    match_choice,
    model_call_fields,
)
from scene_sim.backends.base import (
    Backend,
    BackendError,
    Capabilities,
    GenerateRequest,
    GenerateResponse,
    Usage,
)
from scene_sim.backends.registry import BACKENDS, backend_class, create_backend

__all__ = [
    "BACKENDS",
    "CACHE_MODES",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TIMEOUT_S",
    "Accountant",
    "Backend",
    "BackendError",
    "CacheMode",
    "CallFailed",
    "Capabilities",
    "FatalBackendError",
    "GenerateRequest",
    "GenerateResponse",
    "ManagedBackend",
    "Price",
    "PriceTable",
    "ResponseCache",
    "Usage",
    "backend_class",
    "cache_key",
    "choice_schema",
    "create_backend",
    "decode_json",
    "default_cache_dir",
    "match_choice",
    "model_call_fields",
]
