"""The lab with real namespaces and real UDP sockets (root only; skipped with the reason
otherwise): datagrams cross the userspace switch with the configured loss, delay and
partitions, NATs rewrite and filter as their kind says, and teardown leaves nothing."""

import socket
import subprocess
import time

import pytest

import netlab
from netlab_switch import Policy

SO_RCVBUFFORCE = 33      # Linux; root may exceed net.core.rmem_max


def recv_all(sock: socket.socket, quiet_s: float = 0.5) -> list[tuple[bytes, tuple]]:
    """Everything that arrives until the socket has been quiet for `quiet_s`."""
    out = []
    sock.settimeout(quiet_s)
    while True:
        try:
            out.append(sock.recvfrom(2048))
        except socket.timeout:
            return out


def public_pair(lab):
    a, b = lab.add_host("a"), lab.add_host("b")
    lab.start()
    return a, b, lab.udp_socket("a", 5000), lab.udp_socket("b", 5000)


def test_datagrams_cross_with_source_address_intact(lab):
    a, b, sa, sb = public_pair(lab)
    sa.sendto(b"ping", (b.ip, 5000))
    assert recv_all(sb) == [(b"ping", (a.ip, 5000))]
    sb.sendto(b"pong" * 300, (a.ip, 5000))                     # 1200 bytes, like the daemons' largest
    assert recv_all(sa) == [(b"pong" * 300, (b.ip, 5000))]
    lab.check()


def test_loss_matches_the_seeded_switch_and_the_configured_rate(lab):
    a, b, sa, sb = public_pair(lab)
    lab.set_policy(Policy(loss=0.3))
    sb.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)   # read only after sending
    n = 600
    for i in range(n):
        sa.sendto(i.to_bytes(2, "big"), (b.ip, 5000))
    got = recv_all(sb)
    counters = lab.counters()
    assert len(got) == counters["delivered"] == n - counters["drop_loss"]
    assert abs(counters["drop_loss"] / n - 0.3) < 0.06


def test_delay_is_applied(lab):
    a, b, sa, sb = public_pair(lab)
    lab.set_policy(Policy(delay_s=0.3))
    sb.settimeout(5)
    t0 = time.monotonic()
    sa.sendto(b"slow", (b.ip, 5000))
    assert sb.recvfrom(64)[0] == b"slow"
    assert time.monotonic() - t0 >= 0.3


def test_partition_blocks_until_healed(lab):
    a, b, sa, sb = public_pair(lab)
    lab.partition(["a"], ["b"])
    sa.sendto(b"lost", (b.ip, 5000))
    sb.sendto(b"lost", (a.ip, 5000))
    assert recv_all(sb) == [] and recv_all(sa, 0.1) == []
    lab.heal()
    sa.sendto(b"back", (b.ip, 5000))
    assert recv_all(sb) == [(b"back", (a.ip, 5000))]


def test_full_cone_nat_rewrites_admits_replies_then_any_source(lab):
    pub = lab.add_nat("n", "full-cone")
    a, b, i = lab.add_host("a"), lab.add_host("b"), lab.add_host("i", nat="n")
    lab.start()
    sa, sb, si = lab.udp_socket("a", 5000), lab.udp_socket("b", 5000), lab.udp_socket("i", 7470)
    sb.sendto(b"unsolicited", (pub, 40000))                    # no mapping yet
    assert recv_all(si) == []
    si.sendto(b"hello", (a.ip, 5000))
    (data, mapped), = recv_all(sa)
    assert data == b"hello" and mapped[0] == pub and mapped != (i.ip, 7470)
    sa.sendto(b"reply", mapped)
    sb.sendto(b"third party", mapped)                          # full cone: anyone, once mapped
    assert sorted(recv_all(si)) == [(b"reply", (a.ip, 5000)), (b"third party", (b.ip, 5000))]
    assert lab.counters()["n_no_mapping"] == 1


def test_port_restricted_cone_admits_only_the_endpoint_it_sent_to(lab):
    lab.add_nat("n", "port-restricted-cone")
    a, b, i = lab.add_host("a"), lab.add_host("b"), lab.add_host("i", nat="n")
    lab.start()
    sa, sb, si = lab.udp_socket("a", 5000), lab.udp_socket("b", 5000), lab.udp_socket("i", 7470)
    si.sendto(b"to a", (a.ip, 5000))
    (_, mapped), = recv_all(sa)
    sb.sendto(b"b tries", mapped)
    assert recv_all(si) == []
    si.sendto(b"to b", (b.ip, 5000))                            # now b is permitted, same mapping
    assert recv_all(sb) == [(b"to b", mapped)]
    sb.sendto(b"b again", mapped)
    assert recv_all(si) == [(b"b again", (b.ip, 5000))]
    assert lab.counters()["n_filtered"] == 1


def test_symmetric_nat_gives_each_destination_its_own_mapping(lab):
    lab.add_nat("n", "symmetric")
    a, b, i = lab.add_host("a"), lab.add_host("b"), lab.add_host("i", nat="n")
    lab.start()
    sa, sb, si = lab.udp_socket("a", 5000), lab.udp_socket("b", 5000), lab.udp_socket("i", 7470)
    si.sendto(b"to a", (a.ip, 5000))
    si.sendto(b"to b", (b.ip, 5000))
    (_, seen_by_a), = recv_all(sa)
    (_, seen_by_b), = recv_all(sb)
    assert seen_by_a[0] == seen_by_b[0] and seen_by_a[1] != seen_by_b[1]
    sb.sendto(b"via a's mapping", seen_by_a)                   # what a peer exchange would offer
    sa.sendto(b"reply", seen_by_a)
    assert recv_all(si) == [(b"reply", (a.ip, 5000))]


def test_mapping_times_out(lab):
    lab.add_nat("n", "full-cone", timeout_s=0.3)
    a, i = lab.add_host("a"), lab.add_host("i", nat="n")
    lab.start()
    sa, si = lab.udp_socket("a", 5000), lab.udp_socket("i", 7470)
    si.sendto(b"open", (a.ip, 5000))
    (_, mapped), = recv_all(sa)
    time.sleep(0.5)
    sa.sendto(b"too late", mapped)
    assert recv_all(si) == []
    assert lab.counters()["n_expired"] == 1


def test_readdress_keeps_a_wildcard_socket_working_from_the_new_address(lab):
    a, b, sa, sb = public_pair(lab)
    old = b.ip
    new = lab.readdress("b")
    assert new != old and b.ip == new
    sb.sendto(b"moved", (a.ip, 5000))
    assert recv_all(sa) == [(b"moved", (new, 5000))]
    sa.sendto(b"to old", (old, 5000))
    sa.sendto(b"to new", (new, 5000))
    assert recv_all(sb) == [(b"to new", (a.ip, 5000))]


def test_teardown_removes_every_namespace_even_when_the_test_fails():
    if why := netlab.unavailable():
        pytest.skip(f"network lab unavailable: {why}")
    lab = netlab.Lab()
    with pytest.raises(ZeroDivisionError):
        with lab:
            lab.add_host("a")
            lab.start()
            proc = subprocess.Popen(lab.exec_prefix("a") + ["sleep", "60"])
            assert any(ns.startswith(lab.id) for ns in netlab.lab_namespaces())
            1 / 0
    assert not [ns for ns in netlab.lab_namespaces() if ns.startswith(lab.id + "-")]
    assert proc.wait(10) == -9           # what ran inside was ended, so the namespace could go


def test_stale_namespaces_of_a_dead_lab_are_swept():
    if why := netlab.unavailable():
        pytest.skip(f"network lab unavailable: {why}")
    gone = subprocess.Popen(["true"])
    gone.wait()                                    # a pid that no longer runs: a crashed lab's
    stale = f"{netlab.PREFIX}{gone.pid}x0-a"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])
    try:
        time.sleep(0.2)
        assert stale in netlab.sweep_stale()
        assert stale not in netlab.lab_namespaces()
        assert orphan.wait(10) == -9
    finally:
        orphan.kill()
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
