"""onebyte.model: seeded perturbations, the zeroth-order step, fused replay, loading."""

from .grid import GridError
from .hyper import Hyper, HyperError
from .quantize import quantize
from .replica import Replica
from .rng import RNG_ID, Seeder, noise_signs, update_seed

__all__ = ["Hyper", "HyperError", "Replica", "GridError", "Seeder", "update_seed", "quantize", "noise_signs", "RNG_ID"]

from .data import BatchSampler, DataError, Example, Task, TaskSpec, load_task, make_loss_fn, shard
from .evaluate import evaluate
from .load import ModelLoadError, load_model, model_hash
from .tasks import BUILTIN_TASKS

__all__ += ["BatchSampler", "DataError", "Example", "Task", "TaskSpec", "load_task", "make_loss_fn", "shard",
            "evaluate", "ModelLoadError", "load_model", "model_hash", "BUILTIN_TASKS"]
