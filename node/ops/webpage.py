"""A read-only web page beside /metrics for a private swarm (served when metrics_listen is set):
`/` is the page, `/status.json` what it draws: this node, its members with their state and
version, the loss and held-out accuracy over time, bytes and backlog. No form, no command:
everything it shows is in `onebyte status` already (docs/operations.md, "Monitoring").

The history is sampled by the daemon every HISTORY_EVERY_S (History.sample, loop thread), so a
page opened late still draws the past (HISTORY_POINTS of it).
"""

from __future__ import annotations

import time
from collections import deque

HISTORY_EVERY_S = 10.0
HISTORY_POINTS = 2000


class History:
    """(unix time, loss mean, last held-out accuracy, updates applied) every HISTORY_EVERY_S."""

    def __init__(self):
        self.points: deque = deque(maxlen=HISTORY_POINTS)
        self._next = 0.0

    def due(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self._next

    def add(self, stats, updates: int, now: float | None = None) -> None:
        """A point, once there is a loss or an accuracy to draw (until then: asked again)."""
        now = time.time() if now is None else now
        ev = stats.last_eval or {}
        if stats.loss_mean is None and ev.get("accuracy") is None:
            return
        self._next = now + HISTORY_EVERY_S
        self.points.append([round(now, 1), stats.loss_mean, ev.get("accuracy"), updates])


def page_status(st: dict, history: History) -> dict:
    """What the page draws, from the status snapshot (the same dict the status socket answers)."""
    keys = ("node_id", "swarm_id", "swarm_name", "version", "worker_state", "own_steps", "uptime_s",
            "replay_backlog", "bytes_in", "bytes_out", "loss_mean", "last_eval", "nat", "peers_alive",
            "weights_diverged", "disk_full", "excluded_origins", "privacy")
    out = {k: st.get(k) for k in keys}
    out["updates"] = st["version_vector"]["updates"]
    out["members"] = [{k: p.get(k) for k in ("node_id", "addr", "state", "version", "rtt_ms")} for p in st["peers"]]
    out["history"] = list(history.points)
    return out


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>onebyte node</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
 h1 { font-size: 1.3em; } table { border-collapse: collapse; } td, th { padding: .2em .8em; text-align: left; }
 th { border-bottom: 1px solid #999; } .alive { color: #0a0; } .suspect { color: #c80; } .dead, .left { color: #c00; }
 .cards span { display: inline-block; margin: 0 1.5em .8em 0; } .cards b { font-size: 1.2em; }
 svg { border: 1px solid #ddd; margin-top: .5em; } .alarm { color: #c00; font-weight: bold; }
</style></head>
<body>
<h1>onebyte node <span id="node"></span></h1>
<div id="swarm"></div>
<div class="cards" id="cards"></div>
<div id="alarms"></div>
<h2>Loss and held-out accuracy</h2>
<svg id="chart" width="720" height="220"></svg>
<div><span style="color:#06c">&#9632; loss (running mean)</span> &nbsp; <span style="color:#c60">&#9632; accuracy</span></div>
<h2>Members</h2>
<table id="members"><thead><tr><th>node</th><th>state</th><th>version</th><th>address</th><th>rtt</th></tr></thead>
<tbody></tbody></table>
<p id="updated"></p>
<script>
function fmt(n) { return n == null ? "-" : (Math.abs(n) >= 1e6 ? (n / 1e6).toFixed(1) + " M" :
                  Math.abs(n) >= 1e3 ? (n / 1e3).toFixed(1) + " k" : String(Math.round(n * 1000) / 1000)); }
function line(points, i, lo, hi, color) {
  var pts = points.filter(function (p) { return p[i] != null; });
  if (pts.length < 1) return "";
  var t0 = points[0][0], t1 = Math.max(points[points.length - 1][0], t0 + 1);
  var xy = pts.map(function (p) {
    return [10 + 700 * (p[0] - t0) / (t1 - t0), 210 - 200 * (p[i] - lo) / Math.max(hi - lo, 1e-9)]; });
  var d = xy.map(function (c, k) { return (k ? "L" : "M") + c[0].toFixed(1) + "," + c[1].toFixed(1); }).join(" ");
  var dots = xy.length > 200 ? "" : xy.map(function (c) {   // a lone point is visible too
    return '<circle cx="' + c[0].toFixed(1) + '" cy="' + c[1].toFixed(1) + '" r="2.5" fill="' + color + '"/>'; }).join("");
  return '<path class="series" d="' + d + '" fill="none" stroke="' + color + '" stroke-width="2"/>' + dots;
}
function draw(s) {
  document.getElementById("node").textContent = s.node_id.slice(0, 16);
  document.getElementById("swarm").textContent = "swarm " + (s.swarm_name || "") + " " + s.swarm_id.slice(0, 16) +
      " \u00b7 onebyte " + s.version + " \u00b7 worker " + s.worker_state;
  var acc = s.last_eval && s.last_eval.accuracy != null ? (100 * s.last_eval.accuracy).toFixed(1) + "%" : "-";
  var cards = [["updates", fmt(s.updates)], ["own steps", fmt(s.own_steps)], ["peers alive", s.peers_alive],
               ["loss", fmt(s.loss_mean)], ["accuracy", acc], ["backlog", fmt(s.replay_backlog)],
               ["bytes in", fmt(s.bytes_in)], ["bytes out", fmt(s.bytes_out)],
               ["reached as", (s.nat && s.nat.kind) || "-"]];
  if (s.privacy) cards.push(["epsilon spent", s.privacy.epsilon_spent + " of " + s.privacy.epsilon_budget]);
  document.getElementById("cards").innerHTML = cards.map(function (c) {
    return "<span>" + c[0] + " <b>" + c[1] + "</b></span>"; }).join("");
  var alarms = [];
  if (s.weights_diverged) alarms.push("weights diverged from a peer (" + s.weights_diverged + ")");
  if (s.disk_full) alarms.push("disk full: not producing");
  var ex = Object.keys(s.excluded_origins || {});
  if (ex.length) alarms.push(ex.length + " origin(s) excluded");
  document.getElementById("alarms").innerHTML = alarms.map(function (a) {
    return '<p class="alarm">' + a + "</p>"; }).join("");
  var h = s.history, losses = h.map(function (p) { return p[1]; }).filter(function (v) { return v != null; });
  var lo = Math.min.apply(null, losses.concat([0])), hi = Math.max.apply(null, losses.concat([1]));
  document.getElementById("chart").innerHTML = line(h, 1, lo, hi, "#06c") + line(h, 2, 0, 1, "#c60");
  document.querySelector("#members tbody").innerHTML = s.members.map(function (m) {
    return '<tr class="member"><td>' + m.node_id.slice(0, 16) + '</td><td class="' + m.state + '">' + m.state +
      "</td><td>" + (m.version || "-") + "</td><td>" + (m.addr || "-") + "</td><td>" +
      (m.rtt_ms == null ? "-" : m.rtt_ms.toFixed(1) + " ms") + "</td></tr>"; }).join("");
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  document.body.setAttribute("data-rendered", "1");
}
function poll() {
  fetch("status.json").then(function (r) { return r.json(); }).then(draw)
    .catch(function (e) { document.getElementById("updated").textContent = "no answer: " + e; });
}
poll(); setInterval(poll, 2000);
</script></body></html>
"""
