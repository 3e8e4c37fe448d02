"""onebyte.model: seeded perturbations, the zeroth-order step, fused replay, loading."""

# --- numerical core (model-core helper) ------------------------------------------------------
from .grid import GridError, GridOverflowError
from .hyper import Hyper, HyperError
from .quantize import quantize
from .replica import Replica
from .rng import RNG_ID, noise_signs, update_seed

__all__ = ["Hyper", "HyperError", "Replica", "GridError", "GridOverflowError", "update_seed", "quantize",
           "noise_signs", "RNG_ID"]

# --- loading & data (model-io helper): append imports and extend __all__ below this line -----
from .data import BatchSampler, DataError, Example, Task, TaskSpec, load_task, make_loss_fn, shard
from .evaluate import evaluate
from .load import ModelLoadError, load_model, model_hash
from .tasks import BUILTIN_TASKS

__all__ += ["BatchSampler", "DataError", "Example", "Task", "TaskSpec", "load_task", "make_loss_fn", "shard",
            "evaluate", "ModelLoadError", "load_model", "model_hash", "BUILTIN_TASKS"]
