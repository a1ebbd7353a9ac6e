"""scene-sim: agent-based simulation of group chats and conversations with LLM agents.

The core's public API: the chat world and typed actions, the agent and
model bases, backends and run context, and the study plugin interface.
The studies live under :mod:`scene_sim.studies` (``scene``, ``clca``,
``normgenesis``) and are found through entry points, never imported here.
"""

from scene_sim._version import __version__
from scene_sim.actions import Message, NoOp, React
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.plugins import CommandGroup, Study
from scene_sim.world import ChatTurn, ChatWorld

__all__ = [
    "ChatTurn",
    "ChatWorld",
    "CommandGroup",
    "Message",
    "NoOp",
    "React",
    "RunContext",
    "SceneSimError",
    "Study",
    "__version__",
]
