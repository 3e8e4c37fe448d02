"""Fingerprint the protocol's behaviour: hash every datagram and event of seeded simulator runs.

    .venv/bin/python bench/trace_hash.py --json trace.json

A refactor of protocol/ that changes no behaviour leaves every hash unchanged: run this
before and after and compare (the simulator is deterministic: same seed, same run, bit for
bit). The scenarios cover what the handlers do: a lossy, duplicating, reordering network;
nodes behind cone and symmetric NATs (punching, relaying); churn (crash, restart, leave);
a partition that heals; a forged datagram and garbage (counted drops).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from onebyte.protocol import ProtocolConfig  # noqa: E402
from onebyte.protocol.sim import NetConfig, Swarm  # noqa: E402
from onebyte.protocol.wire import MessageType  # noqa: E402

_TYPES = {int(t) for t in MessageType}
SWARM_ID = bytes.fromhex("7472616365" + "00" * 27)


class Trace:
    """A running blake2b over (time, node, datagram | event) in the order they happen."""

    def __init__(self):
        self.h = hashlib.blake2b(digest_size=16)
        self.datagrams = 0
        self.events = 0
        self.types: dict = {}   # message type name -> datagrams (every handler ran?)

    def datagram(self, src, data: bytes, dst, now: float) -> None:
        self.h.update(f"D{now:.9f}|{src}|{dst}|{len(data)}|".encode() + data)
        self.datagrams += 1
        name = MessageType(data[9]).name if data[9] in _TYPES else "other"   # wire.py: the type byte
        self.types[name] = self.types.get(name, 0) + 1

    def event(self, node, ev, now: float) -> None:
        self.h.update(f"E{now:.9f}|{node.index}|{ev!r}".encode())
        self.events += 1


def traced(swarm: Swarm, trace: Trace) -> Swarm:
    transmit = swarm._transmit

    def _transmit(src, out):
        for data, dst in out:
            trace.datagram(src.index, data, dst, swarm.now)
        transmit(src, out)
    swarm._transmit = _transmit
    swarm.on_event = trace.event
    return swarm


def publish_and_drain(s: Swarm, stagger_s: float, settle_s: float, publishers: list, rate: float,
                      publish_s: float, drain_s: float) -> dict:
    """Start every node, let membership settle, publish from `publishers`, then stop and drain."""
    s.start_all(stagger_s=stagger_s)
    s.run_for(settle_s)
    for node in publishers:
        s.set_publishing(node, rate)
    s.run_for(publish_s)
    for node in s.nodes:
        s.set_publishing(node, 0)
    s.run_for(drain_s)
    return {"converged": s.converged(), "stats": s.stats}


def lossy(seed: int, trace: Trace) -> dict:
    net = NetConfig()
    net.loss, net.duplicate, net.reorder = 0.1, 0.05, 0.1
    s = traced(Swarm(12, ProtocolConfig(SWARM_ID), seed=seed, net=net), trace)
    return publish_and_drain(s, 2.0, 10.0, s.nodes[:6], 20.0, 20.0, 30.0)


def nat(seed: int, trace: Trace) -> dict:
    s = traced(Swarm(8, ProtocolConfig(SWARM_ID), seed=seed, nat={5: "cone", 6: "symmetric", 7: "symmetric"}), trace)
    return publish_and_drain(s, 1.0, 20.0, s.nodes[5:], 10.0, 20.0, 40.0)


def churn(seed: int, trace: Trace) -> dict:
    s = traced(Swarm(10, ProtocolConfig(SWARM_ID), seed=seed), trace)
    s.start_all(stagger_s=1.0)
    s.run_for(10.0)
    for node in s.nodes[:4]:
        s.set_publishing(node, 10.0)
    s.run_for(5.0)
    s.crash(s.nodes[2])
    s.leave(s.nodes[7])
    s.partition([list(range(5)), list(range(5, 10))])
    s.run_for(15.0)
    s.heal()
    s.restart(s.nodes[2])
    s.set_publishing(s.nodes[2], 10.0)
    s.add_node()
    s.run_for(15.0)
    # hostile input: garbage, a truncated header, a replayed datagram from another node
    s.inject(s.nodes[0], b"\x00" * 40, ("10.9.9.9", 1))
    s.inject(s.nodes[0], b"\x01", ("10.9.9.9", 1))
    for node in s.nodes:
        if node.alive:
            s.set_publishing(node, 0)
    s.run_for(40.0)
    return {"converged": s.converged(), "stats": s.stats}


SCENARIOS = {"lossy": lossy, "nat": nat, "churn": churn}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    out = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv), "scenarios": {}}
    t0 = time.monotonic()
    for name, fn in SCENARIOS.items():
        for seed in range(1, a.seeds + 1):
            trace = Trace()
            res = fn(seed, trace)
            if not trace.datagrams or not trace.events:
                print(f"{name} seed {seed}: nothing traced", file=sys.stderr)
                return 1
            out["scenarios"][f"{name}/{seed}"] = {"hash": trace.h.hexdigest(), "datagrams": trace.datagrams,
                                                 "events": trace.events, "converged": res["converged"],
                                                 "types": dict(sorted(trace.types.items()))}
            print(f"{name}/{seed}: {trace.h.hexdigest()} ({trace.datagrams} datagrams, {trace.events} events)",
                  flush=True)
    seen = {t for v in out["scenarios"].values() for t in v["types"]}
    missing = sorted(t.name for t in MessageType if t.name not in seen)
    if missing:   # a handler no scenario reaches is not fingerprinted
        print(f"message types never sent: {missing}", file=sys.stderr)
        return 1
    out["all"] = hashlib.blake2b("".join(v["hash"] for v in out["scenarios"].values()).encode(),
                                 digest_size=16).hexdigest()
    out["seconds"] = round(time.monotonic() - t0, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
