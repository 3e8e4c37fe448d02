"""The node's in-place digest is Replica.digest(), bit for bit."""

from onebyte.model import Hyper, Replica, update_seed
from onebyte.model.load import load_model
from onebyte.node.state import replica_digest


def test_in_place_digest_equals_replica_digest():
    model, _ = load_model("tiny")
    r = Replica(model, Hyper(lr=1e-3))
    assert replica_digest(r) == r.digest()
    r.replay([(update_seed(b"s" * 32, b"o" * 16, step), q, step) for step, q in ((1, 5), (2, -7), (3, 127))])
    assert replica_digest(r) == r.digest()
