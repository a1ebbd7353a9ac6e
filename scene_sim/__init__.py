"""scene-sim: agent-based simulation of group chats with LLM agents.

The public API; everything else lives in modules and private ``_modules``.
"""

__version__ = "0.1.0"

from scene_sim.actions import Message, NoOp, React
from scene_sim.agents import ChatAgent, Decision, Orchestrator, ScriptedPersona, Subject
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.model import SceneModel
from scene_sim.policies import register_policy
from scene_sim.scenario import Scenario, load_scenarios
from scene_sim.taxonomy import SceneTuple, Taxonomy, load_taxonomy, sample_tuples

__all__ = [
    "ChatAgent",
    "Decision",
    "Message",
    "NoOp",
    "Orchestrator",
    "React",
    "RunContext",
    "Scenario",
    "SceneModel",
    "SceneSimError",
    "SceneTuple",
    "ScriptedPersona",
    "Subject",
    "Taxonomy",
    "__version__",
    "load_scenarios",
    "load_taxonomy",
    "register_policy",
    "sample_tuples",
]
