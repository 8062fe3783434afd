"""Studies: a grid of runs from one YAML file, run resumably (locally or on Ray)."""

from .runner import StudyOutcome, run_study, study_status
from .spec import StudySpec, expand, load_study

__all__ = ["StudySpec", "load_study", "expand", "run_study", "study_status", "StudyOutcome"]
