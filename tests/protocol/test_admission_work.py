"""Open swarms that ask for admission work (identity.key_work): a key without it is refused by
every node alike, a mined one joins; the work is bound to the swarm."""
from protocol.config import ProtocolConfig
from protocol.identity import Identity, key_work, mine_identity
from protocol.testing import SWARM, Net

BITS = 6


def seeds_by_work(n_with: int, n_without: int):
    with_, without = [], []
    seed = 1
    while len(with_) < n_with or len(without) < n_without:
        w = key_work(SWARM, Identity.from_seed(seed).public_bytes())
        (with_ if w >= BITS else without).append(seed)
        seed += 1
    return with_[:n_with], without[:n_without]


def test_keys_without_the_work_are_refused_everywhere():
    (a_seed, b_seed), (x_seed,) = seeds_by_work(2, 1)
    net = Net(ProtocolConfig(swarm_id=SWARM, admission_work_bits=BITS))
    a = net.add(a_seed)
    b = net.add(b_seed, bootstrap=[net.addr_of[a.node_id]])
    x = net.add(x_seed, bootstrap=[net.addr_of[a.node_id]])
    net.advance(5.0)
    assert {p.node_id for p in a.peers()} == {b.node_id}
    assert a.counters["drops"].get("not_admitted", 0) >= 1 and x.peers() == []
    for s in range(1, 4):
        b.publish(s, 2, net.now)
    net.advance(5.0)
    assert a.version_vector()[b.node_id] == 3


def test_mined_keys_carry_the_work_for_their_swarm_only():
    ident, tries = mine_identity(SWARM, 8)
    assert key_work(SWARM, ident.public_bytes()) >= 8 and tries >= 1
    other = bytes(32)
    works = [key_work(other, mine_identity(SWARM, 8)[0].public_bytes()) for _ in range(8)]
    assert min(works) < 8   # bound to the swarm id: elsewhere it is an ordinary key
    # about half of all keys have >= 1 bit, a quarter >= 2: the puzzle's cost is 2^bits tries
    ws = [key_work(SWARM, Identity.from_seed(s).public_bytes()) for s in range(2000)]
    assert 800 < sum(w >= 1 for w in ws) < 1200 and 350 < sum(w >= 2 for w in ws) < 650
