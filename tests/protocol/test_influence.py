"""The influence budget (protocol/influence.py) and the rate cap on pulled records, over the
fake network and clock: the same exclusion on every node whatever the arrival order."""
import random

import pytest

from onebyte.protocol import messages as msg
from onebyte.protocol import MemoryRecordStore, ProtocolConfig, UpdatesReceived
from onebyte.protocol.events import OriginExcluded
from onebyte.protocol.influence import ABS_SUM, SIGNED_SUM, InfluenceBudget, first_breach
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import MessageType, packb

CFG = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5)
BUDGET = (CFG.influence_window, CFG.influence_max_abs, CFG.influence_max_sum)


def honest_qs(n, seed, sd=16.0):
    """q like an honest node's, with a wider spread than real runs (mean |q| 7-17 there)."""
    rng = random.Random(seed)
    return [max(-127, min(127, round(rng.gauss(0.0, sd)))) for _ in range(n)]


# ------------------------------------------------------------------ the rule alone
def test_constant_max_q_breaks_the_signed_bound_within_nine_steps():
    b = first_breach(BUDGET, [127] * 100)
    assert b.step == 9 and b.reason == SIGNED_SUM   # 8 * 127 <= 1024 < 9 * 127


def test_coherent_max_q_with_chosen_signs_breaks_the_abs_bound():
    # q = 127 * sign(z_u(i)): random-looking signs, full magnitude every step.
    rng = random.Random(7)
    qs = [127 * rng.choice((-1, 1)) for _ in range(200)]
    b = first_breach(BUDGET, qs)
    assert b is not None and b.step <= 17            # 16 * 127 <= 2048 < 17 * 127
    qs_alt = [127 * (-1) ** i for i in range(100)]   # signed sum stays 0: only |q| catches it
    assert first_breach(BUDGET, qs_alt).reason == ABS_SUM and first_breach(BUDGET, qs_alt).step == 17


@pytest.mark.parametrize("seed", range(20))
def test_honest_sequences_never_breach(seed):
    assert first_breach(BUDGET, honest_qs(5000, seed)) is None


def test_budget_is_the_same_whatever_the_record_split():
    qs = honest_qs(300, 1) + [100] * 40
    want = first_breach(BUDGET, qs)
    rng = random.Random(3)
    for _ in range(20):
        budget = InfluenceBudget(*BUDGET)
        step = 1
        while step <= len(qs):
            n = rng.randint(1, 40)
            got = budget.admit(b"x" * 16, step, qs[step - 1:step - 1 + n])
            if got < len(qs[step - 1:step - 1 + n]):
                break
            step += n
        assert budget.excluded[b"x" * 16] == want


def test_window_zero_disables_the_budget():
    assert first_breach((0, 0, 0), [127] * 1000) is None
    assert InfluenceBudget(0, 0, 0).admit(b"o" * 16, 1, [127] * 1000) == 1000


# ------------------------------------------------------------------ engines: any arrival order
def delivered(net, eng, origin):
    out = []
    for ev in net.of_type(net.addr_of[eng.node_id], UpdatesReceived):
        if ev.origin == origin:
            out.extend(ev.updates())
    return out


def byzantine_swarm(qs):
    """X (seed 1) publishes qs; B gets X's pushes in order, C gets X's records shuffled and
    twice, D never hears X directly and pulls everything through anti-entropy."""
    net = Net(CFG)
    x = net.add(1)
    first = net.addr_of[x.node_id]
    b, c, d = (net.add(s, bootstrap=[first]) for s in (2, 3, 4))
    net.deliver()
    net.advance(2.0)
    ax, ab, ac, ad = (net.addr_of[e.node_id] for e in (x, b, c, d))

    def drop(data, src, dst):   # X's own datagrams reach only B (and, crafted below, C)
        return src == ax and dst in (ac, ad) and data[9] == MessageType.PUSH and not crafting
    crafting = False
    for step, q in enumerate(qs, 1):
        x.publish(step, q, net.now)
    x.flush(net.now)
    net.collect(ax)
    records = [packb(r) for r in x.store.get(x.node_id, 1, 1 << 30)]
    rng = random.Random(5)
    shuffled = records * 2
    rng.shuffle(shuffled)
    crafting = True
    member_c = x.members.members[c.node_id]
    for i in range(0, len(shuffled), 8):
        x.outbox.send(msg.Push(), member_c, [], shuffled[i:i + 8])
    net.collect(ax)
    net.deliver(drop)
    crafting = False
    net.advance(30.0, drop=drop)
    return net, x, (b, c, d)


def test_max_q_origin_excluded_at_the_same_step_on_every_node():
    qs = honest_qs(60, 9) + [127] * 40
    want = first_breach(BUDGET, qs)
    assert want.step == 61 + 8   # its window still holds honest steps: a few more fit
    net, x, honest = byzantine_swarm(qs)
    for e in honest:
        assert e.excluded_origins() == {x.node_id: (want.step, want.reason)}
        assert e.version_vector()[x.node_id] == want.step - 1
        got = delivered(net, e, x.node_id)
        assert got == [(x.node_id, s, q) for s, q in enumerate(qs[:want.step - 1], 1)]
        excl = net.of_type(net.addr_of[e.node_id], OriginExcluded)
        assert [(ev.origin, ev.step, ev.reason) for ev in excl] == [(x.node_id, want.step, want.reason)]
        assert e.counters["origins_excluded"] == 1
    # D heard X only through B and C: it pulled the record cut at the breach and cut it alike.
    assert honest[2].counters["drops"].get("excluded", 0) + honest[2].counters["records_accepted"] > 0
    # The honest nodes agree on the whole vector (the anti-entropy digest settles).
    assert len({tuple(sorted(e.version_vector().items())) for e in honest}) == 1


def test_restarted_node_excludes_again_from_its_store():
    qs = honest_qs(30, 2) + [127] * 30
    want = first_breach(BUDGET, qs)
    net, x, (b, c, d) = byzantine_swarm(qs)
    store = b.store
    assert store.version_vector()[x.node_id] >= want.step - 1   # may hold the cut record whole
    again = net.add(2, addr=("10.0.0.99", 7000), store=store, generation=1)
    assert again.excluded_origins() == {x.node_id: (want.step, want.reason)}
    assert again.version_vector()[x.node_id] == want.step - 1


def test_honest_origin_is_never_excluded_by_the_budget():
    net, x, honest = byzantine_swarm(honest_qs(400, 4))
    for e in honest:
        assert e.excluded_origins() == {}
        assert e.version_vector()[x.node_id] == 400


# ------------------------------------------------------------------ the rate cap holds for pulls
def test_rate_cap_bounds_pulled_records_too():
    cfg = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5,
                         max_updates_per_s_per_origin=1.0, rate_burst_s=4.0, pull_rate_mult=2.0)
    net = Net(cfg)
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    net.deliver()
    net.advance(1.0)
    aa = net.addr_of[a.node_id]

    def no_push(data, src, dst):   # a's updates reach b only through b's pulls
        return src == aa and data[9] == MessageType.PUSH
    for s in range(1, 201):
        a.publish(s, 3, net.now)
    a.flush(net.now)
    net.advance(10.0, drop=no_push)
    got = b.version_vector().get(a.node_id, 0)
    # pull bucket: depth 2 * 4 = 8 updates, 2 per second after that (+ one record of slack)
    assert 0 < got <= 8 + 2 * 10 + 4
    assert b.counters["drops"].get("rate_limited", 0) > 0
    net.advance(120.0, drop=no_push)
    assert b.version_vector()[a.node_id] == 200   # slower, never lost
