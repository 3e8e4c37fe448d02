"""A node with a privacy budget (docs/privacy.md): its epsilon is dp_accounting's for its
schedule, it stops producing when the next step would pass the budget (and stays stopped
after a restart: the log counts its steps), and it stays bit-identical with a node without."""
from __future__ import annotations

import math

import pytest

from node_harness import Node, run_cli, wait_for
from onebyte.node.train.privacy import PrivacyBudget, epsilon, noise_for

RATE, DELTA = 4 / 8302, 1e-5


def test_epsilon_is_the_librarys_and_noise_for_fits_the_budget():
    import dp_accounting
    from dp_accounting import pld
    acc = pld.PLDAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 500)
    # RDP (what the node uses) is an upper bound on the tighter PLD figure, and close to it
    assert acc.get_epsilon(DELTA) <= epsilon(500, 0.01, 1.1, DELTA) <= 1.5 * acc.get_epsilon(DELTA)
    sigma = noise_for(3.0, 1000, 0.01, DELTA)
    assert epsilon(1000, 0.01, sigma, DELTA) <= 3.0 < epsilon(1000, 0.01, sigma * 0.99, DELTA)
    assert epsilon(0, 0.01, 1.0, DELTA) == 0 and math.isinf(epsilon(1, 0.01, 0.0, DELTA))
    b = PrivacyBudget(1.8, DELTA, 1.0, 0.6, RATE)
    n = 0
    while b.allows(n + 1):
        n += 1
    assert epsilon(n, RATE, 0.6, DELTA) <= 1.8 < epsilon(n + 1, RATE, 0.6, DELTA) and b.status()["exhausted"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("privacy")
    genesis = root / "genesis.toml"
    assert run_cli("init", "--model", "tiny", "--out", genesis, "--record-linger", "0.1",
                   "--max-rate", "200").returncode == 0
    common = dict(step_interval_s=0.05, threads=1, snapshot_every=10)
    a = Node(root, "a", genesis, [], max_steps=60, privacy_epsilon=1.8, privacy_noise_multiplier=0.6,
             privacy_clip_quantile=0.5, **common).start()   # adaptive clipping: C moves, replicas stay equal
    nodes = [a]
    try:
        a.wait_ready()
        nodes.append(Node(root, "b", genesis, [a.addr], max_steps=30, **common).start())
        nodes[1].wait_ready()
        yield root, genesis, a, nodes[1]
    finally:
        for n in nodes:
            n.cleanup()


def test_a_private_node_stops_at_its_budget_and_stays_identical(pair):
    root, genesis, a, b = pair
    wait_for(lambda: a.status()["privacy"]["exhausted"] and b.status()["worker_state"] == "done", 180,
             "a to spend its budget and b to finish")
    st = a.status()
    p = st["privacy"]
    assert st["worker_state"] == "done" and 5 <= st["own_steps"] < 60
    assert p["epsilon_spent"] <= 1.8 and p["noise_multiplier"] == 0.6 and p["sample_rate"] == pytest.approx(RATE, rel=1e-3)
    assert 0.0 <= p["clipped_fraction"] <= 1.0 and p["g_abs_p50"] >= 0.0   # how the clip bites, for tuning C
    assert p["clip"] != 1.0                                    # adapted from privacy_clip = 1
    assert "privacy budget spent" in a.stderr()
    assert b.status()["privacy"] is None

    def same():
        sa, sb = a.status(), b.status()
        if sa["version_vector"]["updates"] != sb["version_vector"]["updates"] or sa["replay_backlog"] or sb["replay_backlog"]:
            return None
        da, db = a.digest()["digest"], b.digest()["digest"]
        return da if da == db else None
    digest = wait_for(same, 120, "a and b to hold the same weights")
    own = st["own_steps"]
    assert a.terminate() == 0
    a.start()
    a.wait_ready()
    wait_for(lambda: a.status()["privacy"]["exhausted"], 60, "a to find its budget spent again")
    st2 = a.status()
    assert st2["version_vector"]["own"] == own and st2["privacy"]["epsilon_spent"] == p["epsilon_spent"]
    assert a.digest()["digest"] == digest


def test_privacy_needs_the_two_sided_step(tmp_path):
    genesis = tmp_path / "genesis.toml"
    assert run_cli("init", "--model", "tiny", "--out", genesis, "--hyper", "probes=4").returncode == 0
    bad = Node(tmp_path, "q", genesis, [], privacy_epsilon=3.0, privacy_clip_quantile=1.5)
    bad.write_config()
    r = run_cli("check-config", "--config", bad.config)
    assert r.returncode == 2 and "privacy_clip_quantile must be 0 (off) or between 0 and 1" in r.stderr
    n = Node(tmp_path, "p", genesis, [], max_steps=10, privacy_epsilon=3.0, threads=1).start()
    try:
        assert n.proc.wait(timeout=180) == 2
        assert "private steps are two-sided SPSA" in n.stderr()
    finally:
        n.cleanup()
