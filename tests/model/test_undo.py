"""Replica.undo: removing applied updates gives the bits of a replica that never had them."""
import random
import sys
from pathlib import Path

import pytest
import torch

from onebyte.model import Hyper, Replica

sys.path.insert(0, str(Path(__file__).parent))
import oracle  # noqa: E402


def _replica():
    return Replica(oracle.tiny_llama(), Hyper(lr=2e-4))


def _updates(rnd, n):
    return [(rnd.getrandbits(64), rnd.randint(-127, 127), rnd.randint(1, 10_000)) for _ in range(n)]


def test_undo_equals_never_applied_in_any_order():
    rnd = random.Random(3)
    keep, drop = _updates(rnd, 25), _updates(rnd, 12)
    want = _replica()
    want.replay(keep)
    got = _replica()
    mixed = keep + drop
    rnd.shuffle(mixed)
    got.replay(mixed[:20])
    got.undo([u for u in drop if u in mixed[:20]][::-1])   # some applied, undone in reverse order
    got.replay(mixed[20:])
    got.undo([u for u in drop if u in mixed[20:]])
    assert not torch.equal(got.state, _replica().state)
    assert torch.equal(got.state, want.state)
    assert torch.equal(got.flat.view(torch.int32), want.flat.view(torch.int32))
    assert got.digest() == want.digest()


def test_undo_checks_its_updates():
    r = _replica()
    with pytest.raises(ValueError):
        r.undo([(1, 200, 1)])
