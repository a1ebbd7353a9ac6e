"""Model backends (see :mod:`scene_sim.backends.base`)."""

from scene_sim.backends.base import (
    Backend,
    BackendError,
    Capabilities,
    GenerateRequest,
    GenerateResponse,
    Usage,
)

__all__ = ["Backend", "BackendError", "Capabilities", "GenerateRequest", "GenerateResponse", "Usage"]
