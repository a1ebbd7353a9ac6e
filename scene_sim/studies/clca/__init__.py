"""CLCA: culture-adapted role-play data, LoRA training and World Values Survey evaluation (seed ``004``).

Generic two-person social tasks are adapted to a culture, two agents
role-play them with private goals and secrets, an LLM judge filters the
dialogues, a model writes the intent behind every turn, a LoRA adapter is
trained on that data and the World Values Survey measures the result.
"""

from scene_sim.plugins import Study
from scene_sim.studies.clca.cli import register

__all__ = ["study"]

#: The CLCA study: ``scene-sim clca ...``.
study = Study(
    name="clca",
    description="CLCA: culture-adapted role-play data, LoRA training, World Values Survey evaluation",
    register=register,
)
