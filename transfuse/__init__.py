"""transfuse: transfer learning for medical imaging, measured on your own data.

Public API::

    from transfuse import load_dataset, create_model, list_models, fit, train_run, Store
"""

__version__ = "0.1.0"

from .config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec, run_id
from .data import list_datasets, load_dataset
from .errors import TransfuseError
from .models import create_model, get_stages, list_models
from .run import train_run
from .store import Store
from .train import fit

__all__ = [
    "__version__", "DataSpec", "InitSpec", "ModelSpec", "RunSpec", "TrainSpec", "run_id",
    "list_datasets", "load_dataset", "TransfuseError", "create_model", "get_stages",
    "list_models", "train_run", "Store", "fit",
]
