"""`onebyte doctor` on a node behind a symmetric NAT (the lab's userspace NAT, real daemons):
it says how peers see the node and through how many relays it is reached, and passes; a
public node of the same swarm reports `open`."""
from __future__ import annotations

import subprocess

import pytest

import netlab
from netlab_swarm import COMMON, LabNode, make_genesis, wait_for
from node_harness import ONEBYTE

pytestmark = pytest.mark.slow


def test_doctor_names_a_symmetric_nat_and_its_relays(tmp_path):
    if why := netlab.unavailable():
        pytest.skip(f"network lab unavailable: {why}")
    genesis = make_genesis(tmp_path / "genesis.toml")
    nodes = {}
    with netlab.Lab(seed=5) as lab:
        lab.add_nat("natsym", "symmetric")
        for name in ("pub0", "pub1", "pub2"):
            lab.add_host(name)
        lab.add_host("sym", nat="natsym")
        lab.start()
        try:
            first = nodes["pub0"] = LabNode(lab, "pub0", tmp_path, genesis, [], **COMMON).start()
            for name in ("pub1", "pub2", "sym"):
                nodes[name] = LabNode(lab, name, tmp_path, genesis, [first.addr], **COMMON).start()
            for n in nodes.values():
                n.wait_ready()
            sym = nodes["sym"]
            wait_for(lambda: (sym.try_status() or {}).get("nat", {}).get("kind") == "symmetric"
                     and sym.status()["peers_alive"] >= 2, 180, "sym to find itself behind a symmetric NAT")

            def doctor(node):
                return subprocess.run(lab.exec_prefix(node.name) + ONEBYTE + ["doctor", "--config", str(node.config)],
                                      capture_output=True, text=True, timeout=120)
            r = doctor(sym)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "warn  nat        symmetric, observed as 10." in r.stdout and "relayed through" in r.stdout, r.stdout
            assert "ok    udp" in r.stdout and "ok    tcp" in r.stdout, r.stdout
            r = doctor(nodes["pub1"])
            assert r.returncode == 0 and "ok    nat        open" in r.stdout, r.stdout
        finally:
            for n in nodes.values():
                n.cleanup()
