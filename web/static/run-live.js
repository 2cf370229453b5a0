// The run page's live view. The server renders the page complete (it is useful without JS); this
// script then draws the charts from GET /api/v1/runs/{slug}/metrics and keeps everything current with
// the messages of WS /api/v1/runs/{slug}/live (see docs/site.md for their schema). Every value from
// the swarm is written with textContent, never as HTML.
(() => {
  "use strict";
  const root = document.getElementById("live");
  if (!root) return;
  const slug = root.dataset.run;
  const api = `/api/v1/runs/${encodeURIComponent(slug)}`;
  const HISTORY_S = 6 * 3600;
  const MAX_POINTS = 2000;

  // ---- formatting ------------------------------------------------------------------------------
  const number = (value, digits = 0) =>
    value === null || value === undefined || Number.isNaN(value) ? "–"
      : Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
  const duration = (seconds) => {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  };
  const ago = (iso) => {
    if (!iso) return "–";
    const seconds = (Date.now() - Date.parse(iso)) / 1000;
    return seconds < 5 ? "just now" : `${duration(seconds)} ago`;
  };
  const FORMATS = {
    peers_online: (v) => number(v),
    samples_per_second: (v) => number(v, 1),
    epoch: (v) => number(v),
    eta_s: (v) => duration(v),
    loss: (v) => number(v, 3),
    updated_at: (v) => ago(v),
  };

  // ---- charts ----------------------------------------------------------------------------------
  const SERIES = [
    { id: "chart-loss", key: "loss", label: "loss", stroke: "#2d6cdf" },
    { id: "chart-peers", key: "peers", label: "peers online", stroke: "#1f9d55" },
    { id: "chart-throughput", key: "samples_per_second", label: "samples/s", stroke: "#b7791f" },
  ];
  const charts = [];
  const history = { t: [], loss: [], peers: [], samples_per_second: [] };

  function chartWidth(element) {
    return Math.max(240, element.clientWidth || element.parentElement.clientWidth || 600);
  }

  function makeCharts() {
    if (typeof uPlot === "undefined") return;
    for (const spec of SERIES) {
      const element = document.getElementById(spec.id);
      if (!element) continue;
      element.textContent = "";
      const options = {
        width: chartWidth(element),
        height: 180,
        legend: { show: false },
        scales: { x: { time: true } },
        series: [{}, { label: spec.label, stroke: spec.stroke, width: 2, spanGaps: true }],
        axes: [{}, { size: 60 }],
      };
      const chart = new uPlot(options, [history.t, history[spec.key]], element);
      charts.push({ chart, spec, element });
    }
    window.addEventListener("resize", () => {
      for (const { chart, element } of charts) chart.setSize({ width: chartWidth(element), height: 180 });
    });
  }

  function redraw() {
    for (const { chart, spec } of charts) chart.setData([history.t, history[spec.key]]);
    root.dataset.chartPoints = String(history.t.length);
  }

  function addPoint(point) {
    if (!point || typeof point.t !== "number") return;
    const last = history.t.length ? history.t[history.t.length - 1] : -Infinity;
    if (point.t <= last) return;
    history.t.push(point.t);
    for (const key of ["loss", "peers", "samples_per_second"]) history[key].push(point[key] ?? null);
    if (history.t.length > MAX_POINTS) for (const key of Object.keys(history)) history[key].shift();
  }

  async function loadHistory() {
    const since = Date.now() / 1000 - HISTORY_S;
    try {
      const response = await fetch(`${api}/metrics?since=${since}`, { headers: { accept: "application/json" } });
      if (!response.ok) return;
      const body = await response.json();
      for (const point of body.points || []) addPoint(point);
      redraw();
    } catch (error) {
      console.warn("could not load the run's history", error);
    }
  }

  // ---- summary and tables ----------------------------------------------------------------------
  function updateSummary(summary) {
    for (const element of root.querySelectorAll("[data-live]")) {
      const key = element.dataset.live;
      if (key in summary) element.textContent = (FORMATS[key] || String)(summary[key]);
    }
    const waiting = document.getElementById("live-waiting");  // "not read yet": true no longer
    if (waiting && summary.updated_at) waiting.hidden = true;
  }

  function cell(row, text, className) {
    const td = row.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function fillTable(id, rows, columns, empty) {
    const body = document.getElementById(id);
    if (!body) return;
    body.textContent = "";
    if (!rows.length) {
      const row = body.insertRow();
      const td = cell(row, empty, "empty");
      td.colSpan = columns;
      return;
    }
    return body;
  }

  function updatePeers(peers) {
    const body = fillTable("peer-rows", peers, 7, "No peer has published progress yet.");
    if (!body) return;
    for (const peer of peers) {
      const row = body.insertRow();
      row.className = peer.online ? "online" : "offline";
      const id = cell(row, peer.short_id || String(peer.peer_id).slice(0, 10));
      id.title = peer.peer_id;
      if (peer.user) {
        cell(row, peer.user);
      } else if (peer.declared_username) {  // what the peer says of itself: shown, never credited
        const declared = cell(row, peer.declared_username + " (unverified)", "declared");
        declared.title = "declared by the peer, not verified: no credit";
      } else {
        cell(row, "–");
      }
      cell(row, peer.device || "–");
      cell(row, number(peer.samples_per_second, 1), "num");
      cell(row, ago(peer.last_seen));
      cell(row, peer.reachability || "–");
      const state = peer.online ? "online" : "offline";
      if (peer.flagged) {
        const flagged = cell(row, state + ", flagged: " + (peer.flag_reason || "impossible claim"), "flagged");
        flagged.title = peer.flag_reason || "";
      } else {
        cell(row, state);
      }
    }
  }

  function updateLeaderboard(entries) {
    const body = fillTable("leaderboard-rows", entries, 5, "Nobody has contributed yet.");
    if (!body) return;
    for (const entry of entries) {
      const row = body.insertRow();
      if (entry.flagged_claims) row.className = "flagged";
      cell(row, number(entry.rank), "num");
      cell(row, entry.name);
      cell(row, number(entry.samples), "num");
      cell(row, duration(entry.time_online_s), "num");
      cell(row, number(entry.recent_score, 1), "num");
    }
  }

  // ---- the expert grid (MoE runs) ----------------------------------------------------------------
  async function refreshExperts() {
    const grid = document.getElementById("expert-grid");
    if (!grid) return;
    try {
      const response = await fetch(`${api}/experts`, { headers: { accept: "application/json" } });
      if (!response.ok) return;
      const body = await response.json();
      const byUid = new Map(body.items.map((expert) => [expert.uid, expert]));
      for (const item of grid.children) {
        const expert = byUid.get(item.dataset.uid);
        if (!expert) continue;
        item.className = expert.live ? "live" : "missing";
        item.title = `${expert.uid}: ${expert.live ? `served by ${expert.replicas} peer(s)` : "not served"}`;
      }
      const count = document.getElementById("experts-count");
      if (count) count.textContent = `${body.live} of ${body.total} live`;
    } catch (error) {
      console.warn("could not refresh the experts", error);
    }
  }

  // ---- the WebSocket ---------------------------------------------------------------------------
  let retry = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${api}/live`);
    socket.addEventListener("open", () => {
      retry = 1000;
      root.dataset.connected = "true";
    });
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (message.type !== "update") return;
      if (message.summary) updateSummary(message.summary);
      if (message.point) {
        addPoint(message.point);
        redraw();
      }
      if (Array.isArray(message.peers)) updatePeers(message.peers);
      if (Array.isArray(message.leaderboard)) updateLeaderboard(message.leaderboard);
      root.dataset.updates = String(Number(root.dataset.updates || 0) + 1);
    });
    socket.addEventListener("close", () => {
      root.dataset.connected = "false";
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    });
  }

  makeCharts();
  loadHistory().finally(connect);
  if (document.getElementById("expert-grid")) setInterval(refreshExperts, 15000);
})();
