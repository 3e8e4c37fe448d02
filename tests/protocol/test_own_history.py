"""A key restarted from an empty state learns its own steps back before producing, and nodes
with the same version vector compare weights digests (fake network, fake clock)."""
import random

from onebyte.protocol import messages as msg
from onebyte.protocol import Engine, EquivocationDetected, Identity, MemoryRecordStore, UpdatesReceived
from onebyte.protocol.events import OwnHistoryLearned, WeightsDiverged
from onebyte.protocol.wire import MessageType

from onebyte.protocol.testing import Net

WAIT = 10.0


def add_learning(net: Net, seed: int, addr, bootstrap, generation: int, wait=WAIT) -> Engine:
    """Net.add for an engine that waits to learn its own history (a restarted daemon)."""
    eng = Engine(Identity.from_seed(seed), net.config, rng=random.Random(seed + 100), now=net.now,
                 store=MemoryRecordStore(), bootstrap=bootstrap, generation=generation,
                 own_history_wait_s=wait)
    net.engines[addr] = eng
    net.addr_of[eng.node_id] = addr
    net.events[addr] = []
    net.collect(addr)
    return eng


def three(net: Net):
    a = net.add(1)
    first = net.addr_of[a.node_id]
    b = net.add(2, bootstrap=[first])
    c = net.add(3, bootstrap=[first])
    net.deliver()
    net.advance(1.0)
    return a, b, c


def own_updates(net, eng):
    return [u for ev in net.of_type(net.addr_of[eng.node_id], UpdatesReceived)
            if ev.origin == eng.node_id for u in ev.updates()]


def test_empty_state_restart_learns_own_steps_then_continues(net):
    a, b, c = three(net)
    for s in range(1, 11):
        b.publish(s, (s % 7) - 3, net.now)
    net.advance(3.0)
    assert a.version_vector()[b.node_id] == 10 and c.version_vector()[b.node_id] == 10
    b_addr = net.addr_of[b.node_id]
    del net.engines[b_addr]                      # b's state dir is lost; its key is not
    b2 = add_learning(net, 2, b_addr, [net.addr_of[a.node_id]], generation=1)
    assert not b2.own_history_settled and b2.next_own_step == 1
    net.advance(6.0)
    learned = net.of_type(b_addr, OwnHistoryLearned)
    assert len(learned) == 1 and learned[0].next_step == 11 and learned[0].answers >= 1
    # the steps come back, in order, before the go-ahead, with the q they had
    assert own_updates(net, b2) == [(b.node_id, s, (s % 7) - 3) for s in range(1, 11)]
    events = net.events[b_addr]
    last_own = max(i for i, e in enumerate(events) if isinstance(e, UpdatesReceived)
                   and e.origin == b.node_id)
    assert last_own < events.index(learned[0])
    assert b2.next_own_step == 11 and b2.own_history_settled
    b2.publish(11, 5, net.now)
    net.advance(3.0)
    assert a.version_vector()[b.node_id] == 11 and c.version_vector()[b.node_id] == 11
    for eng in (a, c):
        assert not net.of_type(net.addr_of[eng.node_id], EquivocationDetected)


def test_new_key_goes_ahead_once_a_peer_reports_nothing(net):
    a, _, _ = three(net)
    d = add_learning(net, 4, ("10.0.0.4", 7000), [net.addr_of[a.node_id]], generation=0)
    net.advance(4.0)     # well before the wait: the peers' answers settle it
    learned = net.of_type(("10.0.0.4", 7000), OwnHistoryLearned)
    assert len(learned) == 1 and learned[0].next_step == 1 and learned[0].answers >= 1


def test_no_answer_means_a_new_key_only_after_the_wait(net):
    lone = add_learning(net, 5, ("10.0.0.5", 7000), [("10.0.0.99", 7000)], generation=0)
    net.advance(WAIT - 1.0)
    assert not net.of_type(("10.0.0.5", 7000), OwnHistoryLearned) and not lone.own_history_settled
    net.advance(2.0)
    learned = net.of_type(("10.0.0.5", 7000), OwnHistoryLearned)
    assert [(e.next_step, e.answers) for e in learned] == [(1, 0)]


def test_a_relayed_copy_of_our_record_stays_a_duplicate(net):
    a, b, _ = three(net)
    for s in range(1, 5):
        a.publish(s, 1, net.now)
    net.advance(3.0)
    before = a.counters["duplicate_records"]
    a_addr = net.addr_of[a.node_id]
    # b relays a's own record back to a: nothing delivered, a counted duplicate
    rec = b.store.get(a.node_id, 1, 2000)[0]
    from onebyte.protocol.wire import NIL, packb
    b.outbox.send(msg.Records(), b.members.get(a.node_id), [], [packb(rec)])
    net.collect(net.addr_of[b.node_id])
    net.deliver()
    assert a.counters["duplicate_records"] > before
    assert not own_updates(net, a) and a.next_own_step == 5
    assert not net.of_type(a_addr, OwnHistoryLearned)


def test_same_vector_other_weights_is_reported(net):
    a, b, c = three(net)
    vv_hash = b"v" * 16
    a.set_weights_digest(b"\x01" * 32, vv_hash)
    b.set_weights_digest(b"\x01" * 32, vv_hash)
    c.set_weights_digest(b"\x02" * 32, vv_hash)
    net.advance(12.0)
    diverged_a = net.of_type(net.addr_of[a.node_id], WeightsDiverged)
    diverged_c = net.of_type(net.addr_of[c.node_id], WeightsDiverged)
    assert diverged_c and all(e.theirs == b"\x01" * 8 for e in diverged_c)   # 8 bytes travel
    assert all(e.node_id == c.node_id for e in diverged_a)
    assert a.counters.get("weights_agreed", 0) + b.counters.get("weights_agreed", 0) > 0
    assert c.counters["weights_diverged"] == len(diverged_c)


def test_other_vectors_are_not_compared(net):
    a, b, _ = three(net)
    a.set_weights_digest(b"\x01" * 32, b"vv-one")
    b.set_weights_digest(b"\x02" * 32, b"vv-two")
    net.advance(12.0)
    for eng in (a, b):
        assert not net.of_type(net.addr_of[eng.node_id], WeightsDiverged)
        assert eng.counters.get("weights_diverged", 0) == 0
