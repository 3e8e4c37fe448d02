"""What a node trains on: the genesis task plus the node's data overrides, wired into the
worker's sample / loss / evaluate callables (and the frozen-trunk cache that speeds them).

The daemon and the demo read the task the same way (`task_sources`), so the demo's
"before" evaluation scores exactly the held-out examples a node's `eval` scores.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError

log = logging.getLogger("onebyte.node.train.training")


@dataclass(frozen=True)
class Training:
    """The worker's view of the task. All None: a node that only replays (no data)."""
    sample: Callable[[int], Any] | None = None       # own step -> batch (deterministic per node)
    loss_fn: Callable | None = None
    evaluator: Callable[..., dict] | None = None     # evaluator(n_examples=None) -> accuracy, loss, n
    prepare: Callable[[], None] | None = None        # run by the worker before its first step
    trunk_info: dict | None = None                   # status `trunk_cache`, updated while building
    privacy: Any = None                              # node/train/privacy.py PrivacyBudget (privacy_epsilon > 0)
    privatize: Callable | None = None                # model/privacy.py Privatizer, for local_step


def task_sources(genesis_task: dict, data: str = "", eval_data: str = "",
                 genesis_dir: Path | None = None) -> tuple[dict | None, str, str]:
    """(task spec, training data, eval data): the node's own data wins over the genesis
    [task] data/eval_data, which are relative to the genesis file's folder (genesis_dir);
    the rest of [task] is the spec (template, verbalizer...)."""
    spec = dict(genesis_task)
    train_name = data or genesis_relative(spec.get("data", ""), genesis_dir)
    eval_name = eval_data or genesis_relative(spec.get("eval_data", ""), genesis_dir)
    spec.pop("data", None)
    spec.pop("eval_data", None)
    return spec or None, train_name, eval_name


def genesis_relative(name: str, genesis_dir: Path | None) -> str:
    """A data path named by the genesis: $VARS and ~ expanded, relative to the genesis file's
    folder (docs/config.md); built-in task names and absolute paths as they are."""
    from onebyte.model.tasks import is_builtin
    if not name or is_builtin(name) or genesis_dir is None:
        return name
    p = Path(os.path.expandvars(name)).expanduser()
    return str(p if p.is_absolute() else Path(genesis_dir) / p)


def load_training(cfg, genesis, replica, tokenizer, node_id: bytes, state_path: Path) -> Training:
    """Training for a node config `cfg` (node/config.py) on `replica`; ConfigError for bad data."""
    from onebyte.model.data import BatchSampler, DataError, load_task, make_loss_fn
    from onebyte.model.evaluate import evaluate
    from onebyte.model.load import DTYPES

    spec, train_name, eval_name = task_sources(genesis.task, cfg.data, cfg.eval_data,
                                               genesis.path.parent if genesis.path else None)
    if not train_name:
        log.warning("no training data ([node] data or genesis [task] data): replaying only")
        return Training()
    try:
        task = load_task(train_name, spec, split="train")
        eval_task = load_task(eval_name, spec, split="eval") if eval_name else None
    except DataError as exc:
        raise ConfigError(f"data: {exc}") from None
    # A base held in half precision runs its forwards under autocast in it (the trainable scope
    # stays fp32: its weights are exact, the loss is measured at that precision).
    compute = None if cfg.dtype == "fp32" else DTYPES[cfg.dtype]
    trunk, prepare, trunk_info = _trunk_cache(cfg, genesis, replica, tokenizer, task, eval_task, state_path,
                                              compute)
    loss_fn = make_loss_fn(task, tokenizer, autocast_dtype=compute, trunk=trunk)
    # Each node draws its own batches: the seed mixes the configured seed with the node id.
    seed = int.from_bytes(hashlib.blake2b(cfg.seed.to_bytes(8, "little", signed=True) + node_id,
                                          digest_size=8).digest(), "little")
    sampler = BatchSampler(len(task.examples), cfg.batch_size, seed)
    if cfg.privacy_epsilon > 0:   # Poisson batches from a secret generator, clip and noise
        privacy, privatize, sample = _private(cfg, replica, task.examples)
    else:
        privacy, privatize = None, None

        def sample(step: int):
            return sampler.batch(task.examples, step)

    def evaluator(n_examples: int | None = None):
        # The periodic evaluation uses eval_examples; a client may ask for another
        # prefix of the same held-out list (e.g. the demo's final, larger evaluation).
        subset = eval_task.examples[:n_examples or cfg.eval_examples]
        return evaluate(replica.model, tokenizer, eval_task, subset, autocast_dtype=compute, trunk=trunk)
    return Training(sample, loss_fn, evaluator if eval_task is not None else None, prepare, trunk_info,
                    privacy, privatize)


def _private(cfg, replica, examples):
    """(budget, privatizer, Poisson sampler) of a node with privacy_epsilon > 0 (docs/privacy.md)."""
    import secrets

    import numpy as np

    from onebyte.model.privacy import Mechanism, Privatizer, unsupported
    from .privacy import PrivacyBudget, noise_for
    if why := unsupported(replica.hyper):
        raise ConfigError(f"[node] privacy_epsilon: {why}")
    rows = len(examples)
    rate = cfg.batch_size / rows
    if rate >= 1:
        raise ConfigError(f"[node] privacy_epsilon: batch_size {cfg.batch_size} must be below the {rows} training rows")
    if cfg.privacy_delta >= 1 / rows:
        log.warning("privacy_delta %g is not below 1 / %d training rows: the guarantee is weak", cfg.privacy_delta, rows)
    sigma = cfg.privacy_noise_multiplier
    if sigma == 0:
        if not cfg.max_steps:
            raise ConfigError("[node] privacy_epsilon without privacy_noise_multiplier needs max_steps: the noise "
                              "is chosen so that max_steps steps fit the budget")
        try:
            sigma = noise_for(cfg.privacy_epsilon, cfg.max_steps, rate, cfg.privacy_delta)
        except ValueError as exc:
            raise ConfigError(f"[node] privacy_epsilon: {exc}") from None
    budget = PrivacyBudget(cfg.privacy_epsilon, cfg.privacy_delta, cfg.privacy_clip, sigma, rate)
    rng = np.random.default_rng(secrets.randbits(128))   # the OS's: not derivable from any public seed
    privatize = Privatizer(Mechanism(cfg.privacy_clip, sigma, cfg.batch_size, cfg.privacy_clip_quantile), rng)
    log.info("private steps: clip %g%s, noise multiplier %.3f, Poisson sample rate %.5f, budget epsilon %g at "
             "delta %g", cfg.privacy_clip,
             f" adapting to the {cfg.privacy_clip_quantile:g} quantile of |g_i|" if cfg.privacy_clip_quantile else "",
             sigma, rate, cfg.privacy_epsilon, cfg.privacy_delta)

    def poisson(step: int):   # each row in with probability batch_size / rows, independently
        return [examples[i] for i in np.flatnonzero(rng.random(rows) < rate)]
    return budget, privatize, poisson


def _trunk_cache(cfg, genesis, replica, tokenizer, task, eval_task, state_path: Path, compute=None):
    """(cache, build, info) for the frozen-trunk cache (model/trunk.py) when the scope lies above
    a frozen trunk and the task is a classification, else (None, None, None). `build` fills it:
    the worker runs it before its first step (state "preparing"), so the node is up, serving
    and visible in status meanwhile; progress is in `info` (status `trunk_cache`) and the log."""
    from onebyte.model.trunk import TrunkCache, first_trainable_layer

    k = first_trainable_layer(replica.model, replica.names)
    if not cfg.trunk_cache or k is None or task.spec.kind != "classification":
        return None, None, None
    trunk = TrunkCache(replica.model, tokenizer, k, base_hash=genesis.swarm["base_model_hash"],
                       path=state_path / "trunk.pt", dtype=compute)
    texts = [e.text for e in task.examples]
    if eval_task is not None:
        texts += [e.text for e in eval_task.examples[:cfg.eval_examples]]
    info = {"first_layer": k, "state": "building", "done": 0, "total": len(trunk.missing(texts)),
            "loaded": trunk.loaded}

    def build():
        t0 = last = time.monotonic()

        def progress(done, total):
            nonlocal last
            info.update(done=done, total=total)
            if time.monotonic() - last > 10 or done == total:
                last = time.monotonic()
                log.info("frozen-trunk cache: %d/%d new examples through layers 0..%d", done, total, k - 1)
        added = trunk.fill(texts, progress=progress)
        info.update(state="ready", done=added, total=added, examples=len(trunk.h), computed=added,
                    seconds=round(time.monotonic() - t0, 1), mb=round(trunk.nbytes() / 1e6, 1))
        log.info("frozen-trunk cache ready: layers >= %d run per loss; %d examples (%d loaded from %s, "
                 "%d computed in %.1f s, %.1f MB)", k, len(trunk.h), trunk.loaded, trunk.path, added,
                 info["seconds"], info["mb"])
    return trunk, build, info
