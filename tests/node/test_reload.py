"""SIGHUP reloads the node config: a new peer is joined, labels and log level apply, the node
stays in the swarm; fields that need a restart are named in the log; a broken config changes
nothing. (The node logs as JSON lines meanwhile: log_format = "json".)"""

from __future__ import annotations

import json
import signal
import socket
import urllib.request

from node_harness import Node, wait_for

from onebyte.node.ops.status import request


def members(n: Node) -> dict:
    return {m["node_id"]: m for m in request(n.socket, {"cmd": "members"})["members"]}


def test_sighup_joins_a_new_peer_and_applies_labels_without_a_restart(tmp_path, genesis_path):
    a = Node(tmp_path, "a", genesis_path, [], max_steps=0, threads=1, log_format="json").start()
    b = Node(tmp_path, "b", genesis_path, [], max_steps=0, threads=1).start()
    try:
        a.wait_ready()
        b_id = b.wait_ready()["node_id"]
        pid = a.proc.pid
        assert b_id not in members(a)
        a.fields.update(peers=[b.addr], log_level="debug", batch_size=7)
        a.tables["labels"] = {b_id[:8]: "bee"}
        a.write_config()
        a.proc.send_signal(signal.SIGHUP)
        row = wait_for(lambda: (m := members(a).get(b_id)) and m["state"] == "alive" and m, 60, "b joined")
        assert row["label"] == "bee"
        assert a.proc.poll() is None and a.proc.pid == pid   # the same process, still running
        wait_for(lambda: "applied only at the next start: batch_size" in a.stderr(), 10, "the log line")
        assert "reloaded" in a.stderr() and "log_level" in a.stderr()
        # metrics: switched on, moved and off again, in the same process
        assert a.status()["metrics"] is None
        a.fields["metrics_listen"] = "127.0.0.1:0"
        a.write_config()
        a.proc.send_signal(signal.SIGHUP)
        url = wait_for(lambda: a.status()["metrics"], 10, "metrics served")
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"onebyte_" in resp.read()
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))   # an address in use: refused, the old server stays
        a.fields["metrics_listen"] = f"127.0.0.1:{taken.getsockname()[1]}"
        taken.listen()
        a.write_config()
        a.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "metrics stay where they are" in a.stderr(), 10, "the refusal")
        assert a.status()["metrics"] == url
        taken.close()
        a.fields["metrics_listen"] = ""
        a.write_config()
        a.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: a.status()["metrics"] is None, 10, "metrics off")
        # a config that no longer parses: logged, nothing changes, the node keeps running
        a.config.write_text("[node]\nlisten = 5\n")
        a.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "the running config stays" in a.stderr(), 10, "the refusal")
        assert a.proc.poll() is None and members(a)[b_id]["label"] == "bee"
        assert a.terminate() == 0
        # log_format = "json": every line a log shipper reads is one JSON object
        lines = [json.loads(ln) for ln in a.stderr().splitlines() if ln.strip()]
        assert lines and all({"ts", "level", "logger", "msg"} <= set(ln) for ln in lines)
        assert any("reloaded" in ln["msg"] for ln in lines)
    finally:
        a.cleanup()
        b.cleanup()
