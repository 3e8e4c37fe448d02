"""Evaluation for `onebyte demo` (node/client/demo/run.py): the zero-shot run in the demo's own process,
and the periodic evaluations it asks the nodes for while they train."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

from ...errors import DaemonUnreachable
from ...ops.status import request
from ...train.training import task_sources


def genesis_task(genesis: Path) -> tuple[dict | None, str]:
    """(task spec, eval data) from the genesis [task] table, exactly as a node reads them."""
    import tomllib

    spec, _train, eval_data = task_sources(tomllib.loads(genesis.read_text())["task"], genesis_dir=genesis.parent)
    return spec, eval_data


def evaluate_model(spec: str, genesis: Path, n_examples: int, threads: int) -> dict:
    """Held-out accuracy of a model spec (base model, or an exported folder) on the first
    n_examples of the genesis eval data: the examples a node's `eval` uses too."""
    import torch

    from onebyte.model.data import load_task
    from onebyte.model.evaluate import evaluate
    from onebyte.model.load import load_model

    torch.set_num_threads(threads)
    task_spec, eval_data = genesis_task(genesis)
    task = load_task(eval_data, task_spec, split="eval")
    model, tokenizer = load_model(spec)
    model.eval()
    t0 = time.monotonic()
    res = evaluate(model, tokenizer, task, task.examples[:n_examples])
    res["seconds"] = time.monotonic() - t0
    # The base model's size, for the wire comparison (named_parameters yields a tied tensor once);
    # the trained weights are counted by the daemons (status `trainable_weights`: adapters too).
    res["params"] = sum(p.numel() for p in model.parameters() if p.is_floating_point())
    del model
    gc.collect()  # the daemons need the memory more than we do
    return res


class Evaluator(threading.Thread):
    """Asks the nodes, round-robin, to evaluate every `every_s` seconds, so the plot gets
    an accuracy curve at a steady pace whatever the step rate. A thread, because an eval
    occupies a node's worker for seconds and the live view must keep moving meanwhile."""

    def __init__(self, swarm, every_s: float):
        super().__init__(name="demo-eval", daemon=True)
        self.swarm, self.every_s = swarm, every_s
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.wait(self.every_s):
            node = self.swarm.nodes[i % len(self.swarm.nodes)]
            i += 1
            try:
                request(node.socket, {"cmd": "eval"}, timeout=600)
            except (DaemonUnreachable, OSError, ValueError):
                pass  # a node restarting or stopping: the next tick asks another
