"""A Byzantine member for node tests and bench/byzantine.py: a real protocol Engine with a
member key of the swarm, on a loopback UDP socket, that publishes whatever q it is told
(every record validly signed with the protocol's own encoding), as fast as it is told.

No model, no torch: honest daemons see a member like any other.
"""
from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from onebyte.protocol import messages as msg
from onebyte.node.genesis import load_genesis, protocol_config
from onebyte.node.keys import read_key
from onebyte.protocol import Engine, Identity


class ByzantinePeer(threading.Thread):
    """publish q_of(step) for steps 1..steps at `rate` per second, then keep serving."""

    def __init__(self, genesis: Path, key: Path, peers: list[str], q_of: Callable[[int], int],
                 steps: int, rate: float):
        super().__init__(name="byzantine-peer", daemon=True)
        self.identity = Identity.from_private_bytes(read_key(key))
        self.config = protocol_config(load_genesis(genesis), {})
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        boot = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in peers)]
        self.engine = Engine(self.identity, self.config, rng=random.Random(1), now=time.monotonic(),
                             bootstrap=boot, generation=int(time.time()))
        self.q_of, self.steps, self.rate = q_of, steps, rate
        self.published = 0
        self._halt = threading.Event()

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    def on_tick(self, now: float) -> None:
        """Called in this thread on every turn of the loop: what a subclass adds."""

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.sock.close()

    def run(self) -> None:
        eng, start = self.engine, time.monotonic() + 1.0   # a second to join first
        while not self._halt.is_set():
            now = time.monotonic()
            due = min(self.steps, int((now - start) * self.rate)) if now >= start else 0
            while self.published < due:
                self.published += 1
                eng.publish(self.published, self.q_of(self.published), now)
            self.on_tick(now)
            t = eng.get_timer()
            if t is not None and t <= now:
                eng.handle_timer(now)
            for data, addr in eng.datagrams_to_send(now):
                self.sock.sendto(data, addr)
            while eng.next_event() is not None:
                pass
            self.sock.settimeout(0.005)
            try:
                data, addr = self.sock.recvfrom(65536)
            except (socket.timeout, OSError):
                continue
            eng.receive_datagram(data, addr, time.monotonic())


class EquivocatingPeer(ByzantinePeer):
    """Publishes q = 2 for steps 1..plain to everyone, then signs steps plain+1.. twice:
    targets = [(address "host:port", qs)], each version sent to its node only."""

    def __init__(self, genesis: Path, key: Path, peers: list[str], targets: list, plain: int = 8):
        super().__init__(genesis, key, peers, lambda step: 2, steps=plain, rate=20.0)
        self.targets, self.plain = targets, plain
        self.sent = False

    def on_tick(self, now: float) -> None:
        from onebyte.protocol.records import qs_to_bytes, record_message
        from onebyte.protocol.wire import MessageType, encode_record, packb
        eng = self.engine
        if self.sent or self.published < self.plain or eng.sync.book.contiguous(self.node_id) < self.plain:
            return
        by_addr = {f"{m.addr[0]}:{m.addr[1]}": m for m in eng.members.members.values() if m.addr}
        if not all(addr in by_addr for addr, _ in self.targets):
            return   # not every target joined yet
        first = self.plain + 1
        for addr, qs in self.targets:
            raw = qs_to_bytes(qs)
            sig = self.identity.sign(record_message(self.config.swarm_id, self.node_id, first, raw))
            rec = encode_record(self.identity.public_bytes(), first, raw, sig)
            eng.outbox.send(msg.Push(), by_addr[addr], [], [packb(rec)])
        self.sent = True


# --- what the real-daemon Byzantine tests share ------------------------------------------------

def start_honest(root, genesis, max_steps: int, **fields) -> dict:
    """Honest daemons a, b, c (a first, the others bootstrapping from it), all ready."""
    from node_harness import Node
    nodes = {"a": Node(root, "a", genesis, [], max_steps=max_steps, **fields).start()}
    nodes["a"].wait_ready()
    for name in ("b", "c"):
        nodes[name] = Node(root, name, genesis, [nodes["a"].addr], max_steps=max_steps, **fields).start()
    for n in nodes.values():
        n.wait_ready()
    return nodes


def settled_excluding(nodes, byz_id: bytes, step: int, reason: str, min_own_steps: int):
    """The common digest once every honest node excluded byz_id at `step` for `reason`, took
    its own `min_own_steps`, applied everything and holds the same updates; else None."""
    sts = [n.status() for n in nodes]
    for s in sts:
        if s["worker_state"] == "failed" or s["replay_backlog"] or s["own_steps"] < min_own_steps:
            return None
        if s["excluded_origins"].get(byz_id.hex()) != {"step": step, "reason": reason}:
            return None
    if len({s["version_vector"]["updates"] for s in sts}) != 1:
        return None
    digests = {n.digest()["digest"] for n in nodes}
    return digests.pop() if len(digests) == 1 else None
