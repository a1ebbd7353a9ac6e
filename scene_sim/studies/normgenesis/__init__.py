"""NormGenesis: norm-grounded multilingual dialogues with exemplar retrieval, refinement and repair (seed ``000``)."""

from scene_sim.plugins import Study
from scene_sim.studies.normgenesis.cli import register

__all__ = ["study"]

#: The NormGenesis study: ``scene-sim normgenesis ...``.
study = Study(
    name="normgenesis",
    description="NormGenesis: norm-grounded multilingual dialogues, V2R repair, turn annotation, patterns",
    register=register,
)
