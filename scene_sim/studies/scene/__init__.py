"""SCENE: does a model notice a group's unwritten rules and adapt when sanctioned?

Scripted personas enact a hidden norm, an orchestrator routes, the subject
(the model under test) may message, react or stay silent, personas sanction
its breaches, and collectors turn the transcripts into demonstration /
breach / sanction / repair statistics (seed ``003``).
"""

from scene_sim.plugins import Study
from scene_sim.studies.scene.agents import Decision, Orchestrator, ScriptedPersona, Subject
from scene_sim.studies.scene.cli import register
from scene_sim.studies.scene.model import SceneModel
from scene_sim.studies.scene.policies import register_policy
from scene_sim.studies.scene.scenario import Scenario, load_scenarios
from scene_sim.studies.scene.taxonomy import SceneTuple, Taxonomy, load_taxonomy, sample_tuples

__all__ = [
    "Decision",
    "Orchestrator",
    "Scenario",
    "SceneModel",
    "SceneTuple",
    "ScriptedPersona",
    "Subject",
    "Taxonomy",
    "load_scenarios",
    "load_taxonomy",
    "register_policy",
    "sample_tuples",
    "study",
]

#: The SCENE study; its commands sit at the top level of ``scene-sim``.
study = Study(
    name="scene",
    description="SCENE: hidden group norms, sanctions and repair in group chats",
    register=register,
    top_level=True,
)
