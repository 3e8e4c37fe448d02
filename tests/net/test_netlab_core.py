"""The lab's switch and NAT decisions with a fake clock and a seeded RNG (no namespaces, no
root): loss rate, delay, jitter, duplication, reordering, partitions, NAT mapping and
filtering rules, mapping timeouts; and the frames the switch writes."""

import random
import socket
import struct

import pytest

from netlab_packet import Datagram, build_frame, checksum, parse_frame
from netlab_switch import Fabric, Nat, Policy

A, B, C = ("10.201.0.10", 5000), ("10.201.0.11", 5000), ("10.201.0.12", 5000)
INSIDE = ("192.168.1.10", 7470)


def dg(src, dst, payload=b"x"):
    return Datagram(src, dst, payload)


def public_fabric(policy=Policy(), seed=1) -> Fabric:
    f = Fabric(seed, policy)
    for name, ep in zip("abc", (A, B, C)):
        f.add_host(name, ep[0])
    return f


def send(f: Fabric, sender: str, d: Datagram, now: float = 0.0):
    """Route and deliver at arrival time: [(arrival, receiving host, datagram)]."""
    return [(t, *out) for t, x in f.route(sender, d, now) if (out := f.deliver(x, t)) is not None]


# --- link policy ---------------------------------------------------------------------------

def test_loss_rate_is_close_to_configured_over_many_datagrams():
    f = public_fabric(Policy(loss=0.2), seed=7)
    n = 20000
    got = sum(len(send(f, "a", dg(A, B))) for _ in range(n))
    assert abs((n - got) / n - 0.2) < 0.015
    assert f.counters["drop_loss"] == n - got


def test_same_seed_same_fate():
    f1, f2, f3 = (public_fabric(Policy(loss=0.5), seed=s) for s in (3, 3, 4))
    fates = [[len(send(f, "a", dg(A, B))) for _ in range(200)] for f in (f1, f2, f3)]
    assert fates[0] == fates[1] != fates[2]


def test_delay_and_jitter_bounds():
    f = public_fabric(Policy(delay_s=0.05, jitter_s=0.02))
    arrivals = [t for t, *_ in (send(f, "a", dg(A, B), now=10.0)[0] for _ in range(2000))]
    assert min(arrivals) >= 10.03 and max(arrivals) <= 10.07
    assert max(arrivals) - min(arrivals) > 0.03          # jitter actually spreads them
    assert abs(sum(arrivals) / len(arrivals) - 10.05) < 0.002


def test_jitter_and_reorder_let_later_datagrams_overtake():
    f = public_fabric(Policy(delay_s=0.01, reorder=0.25, reorder_gap_s=0.1))
    sent = [(i * 0.001, send(f, "a", dg(A, B, bytes([i % 256])), now=i * 0.001)[0][0]) for i in range(400)]
    overtaken = sum(1 for i in range(len(sent) - 1) if sent[i][1] > sent[i + 1][1])
    held = sum(1 for t0, t in sent if t - t0 > 0.05)
    assert 0.18 < held / len(sent) < 0.32
    assert overtaken > 40


def test_duplication_rate():
    f = public_fabric(Policy(duplicate=0.3), seed=5)
    copies = [len(send(f, "a", dg(A, B))) for _ in range(5000)]
    assert set(copies) == {1, 2}
    assert abs(copies.count(2) / 5000 - 0.3) < 0.03


def test_pair_policy_overrides_default_both_ways():
    f = public_fabric(Policy(delay_s=0.01))
    f.set_policy(Policy(delay_s=0.2), "a", "b")
    assert send(f, "a", dg(A, B))[0][0] == pytest.approx(0.2)
    assert send(f, "b", dg(B, A))[0][0] == pytest.approx(0.2)
    assert send(f, "a", dg(A, C))[0][0] == pytest.approx(0.01)


@pytest.mark.parametrize("bad", [dict(loss=1.5), dict(delay_s=-1), dict(duplicate=-0.1)])
def test_policy_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        Policy(**bad)


# --- partitions and addressing ---------------------------------------------------------------

def test_partition_blocks_across_groups_and_heal_restores():
    f = public_fabric()
    f.partition(["a", "b"], ["c"])
    assert send(f, "a", dg(A, B))
    assert not send(f, "a", dg(A, C)) and not send(f, "c", dg(C, B))
    assert f.counters["drop_partition"] == 2
    f.heal()
    assert send(f, "c", dg(C, A))


def test_partition_leaves_unlisted_sites_isolated():
    f = public_fabric()
    f.partition(["a", "b"])
    assert not send(f, "c", dg(C, A)) and not send(f, "a", dg(A, C))


def test_unknown_destination_is_dropped_never_sent():
    f = public_fabric()
    assert not send(f, "a", dg(A, ("8.8.8.8", 53)))
    assert f.counters["drop_no_route"] == 1


def test_readdress_moves_delivery_at_arrival_time():
    f = public_fabric(Policy(delay_s=0.1))
    in_flight = f.route("a", dg(A, B), 0.0)
    f.readdress("b", "10.201.2.10")
    assert f.deliver(in_flight[0][1], 0.1) is None                  # the old address is gone
    (t, host, got), = send(f, "a", dg(A, ("10.201.2.10", 5000)), 1.0)
    assert host == "b" and got.dst == ("10.201.2.10", 5000)


# --- NAT -----------------------------------------------------------------------------------

def nat_fabric(kind, timeout_s=30.0) -> Fabric:
    f = public_fabric()
    f.add_nat("n", "10.201.1.10", kind, timeout_s)
    f.add_host("i", INSIDE[0], nat="n")
    return f


@pytest.mark.parametrize("kind", ["full-cone", "restricted-cone", "port-restricted-cone", "symmetric"])
def test_every_nat_rewrites_the_source_and_lets_the_reply_in(kind):
    f = nat_fabric(kind)
    (_, host, out), = send(f, "i", dg(INSIDE, A))
    assert host == "a" and out.src[0] == "10.201.1.10" and out.src != INSIDE
    (_, host, back), = send(f, "a", dg(A, out.src), now=1.0)
    assert host == "i" and back.dst == INSIDE and back.src == A


@pytest.mark.parametrize("kind", ["full-cone", "restricted-cone", "port-restricted-cone", "symmetric"])
def test_unsolicited_inbound_is_dropped(kind):
    f = nat_fabric(kind)
    assert not send(f, "a", dg(A, ("10.201.1.10", 40000)))
    assert f.nats["n"].counters["no_mapping"] == 1


@pytest.mark.parametrize("kind,from_other_host,from_other_port", [
    ("full-cone", True, True),                   # any source once the mapping exists
    ("restricted-cone", False, True),            # any port of an address it sent to
    ("port-restricted-cone", False, False),      # only the exact endpoint it sent to
    ("symmetric", False, False),
])
def test_cone_filtering_rules(kind, from_other_host, from_other_port):
    f = nat_fabric(kind)
    (_, _, out), = send(f, "i", dg(INSIDE, A))
    assert bool(send(f, "b", dg(B, out.src), 1.0)) == from_other_host
    assert bool(send(f, "a", dg((A[0], 6000), out.src), 1.0)) == from_other_port


def test_cone_nat_keeps_one_mapping_for_every_destination():
    f = nat_fabric("port-restricted-cone")
    ports = {send(f, "i", dg(INSIDE, dst))[0][2].src for dst in (A, B, C, (A[0], 9))}
    assert len(ports) == 1


def test_symmetric_nat_maps_each_destination_to_its_own_port():
    f = nat_fabric("symmetric")
    srcs = [send(f, "i", dg(INSIDE, dst))[0][2].src for dst in (A, B, C, (A[0], 9))]
    assert len(set(srcs)) == 4
    assert send(f, "i", dg(INSIDE, A))[0][2].src == srcs[0]          # stable per destination
    # b learns a's mapping (as peer exchange would tell it) but that mapping admits only a
    assert not send(f, "b", dg(B, srcs[0]), 1.0)


def test_mapping_times_out_without_outbound_traffic():
    nat = Nat("10.201.1.10", "full-cone", timeout_s=5.0)
    pub = nat.outbound(INSIDE, A, now=0.0)
    assert nat.inbound(pub[1], B, now=4.9) == INSIDE
    assert nat.inbound(pub[1], B, now=5.0) is None
    assert nat.counters["expired"] == 1
    # inbound traffic did not keep it alive; outbound makes a new mapping, on a new port
    assert nat.outbound(INSIDE, A, now=6.0) != pub


def test_outbound_refreshes_mapping_and_permission():
    nat = Nat("10.201.1.10", "port-restricted-cone", timeout_s=5.0)
    pub = nat.outbound(INSIDE, A, 0.0)
    nat.outbound(INSIDE, A, 4.0)
    assert nat.inbound(pub[1], A, 8.0) == INSIDE
    nat.outbound(INSIDE, B, 8.0)                         # mapping fresh, permission for A is not
    assert nat.inbound(pub[1], A, 9.5) is None and nat.inbound(pub[1], B, 9.5) == INSIDE


def test_hole_punch_works_when_the_outbound_precedes_arrival():
    """Simultaneous open through two port-restricted cones: each side's datagram reaches the
    other NAT after that NAT saw its own outbound, because filtering happens at arrival."""
    f = Fabric(1, Policy(delay_s=0.05))
    f.add_nat("n1", "10.201.1.10", "port-restricted-cone")
    f.add_nat("n2", "10.201.1.11", "port-restricted-cone")
    f.add_host("x", "192.168.1.10", nat="n1")
    f.add_host("y", "192.168.2.10", nat="n2")
    x_pub, y_pub = ("10.201.1.10", 40000), ("10.201.1.11", 40000)    # learnt from a peer
    x_out = f.route("x", dg(("192.168.1.10", 1), y_pub), 0.0)
    y_out = f.route("y", dg(("192.168.2.10", 1), x_pub), 0.01)
    assert f.deliver(x_out[0][1], x_out[0][0])[0] == "y"
    assert f.deliver(y_out[0][1], y_out[0][0])[0] == "x"


def test_inside_hosts_of_one_nat_talk_directly_and_no_hairpin():
    f = nat_fabric("symmetric")
    f.add_host("j", "192.168.1.11", nat="n")
    (_, host, out), = send(f, "i", dg(INSIDE, ("192.168.1.11", 1)))
    assert host == "j" and out.src == INSIDE
    assert not send(f, "i", dg(INSIDE, ("10.201.1.10", 40000)))
    assert f.counters["drop_hairpin"] == 1
    assert not send(f, "a", dg(A, INSIDE))                 # inside addresses are not routed


def test_nat_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown NAT kind"):
        Nat("10.201.1.10", "cone-ish")


# --- frames --------------------------------------------------------------------------------

def test_frame_roundtrip_and_checksums_verify():
    rng = random.Random(0)
    for size in (0, 1, 2, 57, 1200):
        d = Datagram(("10.201.1.10", 40001), ("192.168.1.10", 7470), rng.randbytes(size), ttl=63, ident=9)
        frame = build_frame(d, b"\x02" * 6, b"\x04" * 6)
        assert parse_frame(frame) == d
        ip_header = frame[14:34]
        assert checksum(ip_header) == 0                               # header checksum verifies
        udp = frame[34:]
        pseudo = frame[26:34] + struct.pack("!BBH", 0, 17, len(udp))
        assert checksum(pseudo + udp) == 0                            # UDP checksum verifies


def test_parse_ignores_what_is_not_one_whole_udp_datagram():
    good = build_frame(Datagram(A, B, b"hello"), b"\x02" * 6, b"\x04" * 6)
    assert parse_frame(good[:30]) is None                             # truncated
    assert parse_frame(good[:12] + b"\x08\x06" + good[14:]) is None   # ARP ethertype
    assert parse_frame(good[:23] + b"\x06" + good[24:]) is None       # TCP
    frag = bytearray(good)
    frag[20] |= 0x20                                                  # more fragments
    assert parse_frame(bytes(frag)) is None
    assert socket.inet_ntoa(good[26:30]) == A[0]
