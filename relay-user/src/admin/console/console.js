"use strict";
// The operator's console: polls the admin API (with the session cookie the page was
// opened with) and redraws in place. No library, nothing from elsewhere.
(function () {
  // Not "js": that class hides what only the script fills, and would hide <html> itself.
  document.documentElement.classList.add("scripted");
  const POLL_MS = 1000;
  const SPARK_POINTS = 60;
  const $ = (s) => document.querySelector(s);
  const colors = {};
  for (const k of ["k", "u", "t", "a", "f", "d"]) {
    colors[k] = getComputedStyle(document.documentElement).getPropertyValue("--" + k).trim();
  }
  const state = {
    sort: { key: "age", dir: -1 },
    filter: "",
    rows: [],
    // id -> { last: total packets at the previous poll, at: ms, points: [packets/s] }
    spark: new Map(),
    tick: 0,
  };

  async function getJSON(path) {
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) {
      // Token changed or relay restarted: the login form again.
      location.reload();
      throw new Error("session expired");
    }
    if (!r.ok) throw new Error(path + ": HTTP " + r.status + " " + (await r.text()).trim());
    return r.json();
  }

  function showError(text, ok) {
    const e = $("#err");
    e.hidden = !text;
    e.textContent = text || "";
    e.classList.toggle("ok", !!ok);
  }

  // ----- formatting, as `relay status` prints ---------------------------------------
  function duration(s) {
    const two = (n) => String(n).padStart(2, "0");
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + two(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + two(Math.floor((s % 3600) / 60)) + "m";
    return Math.floor(s / 86400) + "d" + two(Math.floor((s % 86400) / 3600)) + "h";
  }
  function si(v, unit) {
    const steps = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (const [d, p] of steps) if (Math.abs(v) >= d) return (v / d).toFixed(v / d >= 100 ? 0 : 1) + " " + p + unit;
    return (v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1)) + (unit ? " " + unit : "");
  }
  function bytes(b) {
    if (b < 1000) return b + " B";
    const units = ["kB", "MB", "GB", "TB"];
    let v = b / 1000, i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return v.toFixed(1) + " " + units[i];
  }
  function traffic(t, toPeer) {
    const p = toPeer ? t.to_peer_packets : t.to_client_packets;
    const b = toPeer ? t.to_peer_bytes : t.to_client_bytes;
    return p + " pkt/" + bytes(b);
  }

  // ----- header -------------------------------------------------------------------------
  function renderHeader(st, view) {
    $("#h-version").textContent = st.version;
    $("#h-uptime").textContent = duration(st.uptime_s);
    const d = $("#h-draining");
    d.textContent = view.draining ? "DRAINING" : "not draining";
    d.classList.toggle("warn", view.draining);
    $("#h-xdp").textContent = st.xdp.interfaces.length
      ? st.xdp.interfaces.map((i) => i.name + " " + i.mode).join(", ")
      : "off" + (st.xdp.off_reason ? " (" + st.xdp.off_reason + ")" : "");
    $("#h-allocs").textContent = view.count + " / " + st.limits.max_allocations;
  }

  // ----- allocations table --------------------------------------------------------------
  function rowOf(a) {
    const k = a.kernel;
    let kernel = "-";
    if (k) {
      const all = a.total.to_peer_packets + a.total.to_client_packets;
      const fast = k.to_peer_packets + k.to_client_packets;
      if (all > 0) kernel = Math.floor((fast * 100) / all) + "%";
    }
    const channels = a.channels.filter((c) => !c.cooling).length;
    return {
      id: a.id,
      client: a.transport + " " + a.client,
      user: a.user,
      listener: a.listener,
      relayed: a.relayed.map((r) => r.public).join(","),
      peers: a.permissions.map((p) => p.peer).join(",") || "-",
      channels: channels,
      to_peer: a.total.to_peer_packets,
      to_client: a.total.to_client_packets,
      to_peer_text: traffic(a.total, true),
      to_client_text: traffic(a.total, false),
      dropped: a.bandwidth_dropped,
      kernel_text: kernel,
      kernel: k ? k.to_peer_packets + k.to_client_packets : -1,
      age: a.age_s,
      remaining: a.remaining_s,
      packets: a.total.to_peer_packets + a.total.to_client_packets,
      search: [a.user, a.client, a.listener, a.relayed.map((r) => r.public + " " + r.bind).join(" "),
        a.permissions.map((p) => p.peer).join(" ")].join(" ").toLowerCase(),
    };
  }

  function updateSparks(rows, now) {
    const seen = new Set();
    for (const r of rows) {
      seen.add(r.id);
      let s = state.spark.get(r.id);
      if (!s) {
        s = { last: r.packets, at: now, points: [] };
        state.spark.set(r.id, s);
        continue;
      }
      const dt = (now - s.at) / 1000;
      if (dt > 0) {
        s.points.push(Math.max(0, (r.packets - s.last) / dt));
        if (s.points.length > SPARK_POINTS) s.points.shift();
      }
      s.last = r.packets;
      s.at = now;
    }
    for (const id of [...state.spark.keys()]) if (!seen.has(id)) state.spark.delete(id);
  }

  function sparkline(id) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 90 20");
    svg.setAttribute("preserveAspectRatio", "none");
    const s = state.spark.get(id);
    const pts = s ? s.points : [];
    const max = Math.max(1, ...pts);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.map((v, i) =>
      (90 - (pts.length - 1 - i) * (90 / (SPARK_POINTS - 1))).toFixed(1) + "," + (19 - (v / max) * 18).toFixed(1)).join(" "));
    svg.appendChild(line);
    const title = document.createElementNS(ns, "title");
    title.textContent = pts.length ? si(pts[pts.length - 1], "pkt/s") + " now, peak " + si(max, "pkt/s") : "no samples yet";
    svg.appendChild(title);
    return svg;
  }

  function renderTable() {
    const f = state.filter;
    const rows = state.rows.filter((r) => !f || r.search.includes(f));
    const { key, dir } = state.sort;
    rows.sort((a, b) => {
      const x = a[key], y = b[key];
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return c * dir || a.id.localeCompare(b.id);
    });
    for (const th of document.querySelectorAll("#allocs th[data-key]")) {
      th.classList.toggle("sorted", th.dataset.key === key);
      th.classList.toggle("up", th.dataset.key === key && dir > 0);
    }
    const body = document.createElement("tbody");
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.dataset.id = r.id;
      const cell = (col, text, num) => {
        const td = document.createElement("td");
        td.dataset.col = col;
        td.textContent = text;
        if (num) td.className = "n";
        tr.appendChild(td);
      };
      cell("client", r.client);
      cell("user", r.user);
      cell("listener", r.listener);
      cell("relayed", r.relayed);
      cell("peers", r.peers);
      cell("channels", r.channels, true);
      cell("to_peer", r.to_peer_text, true);
      cell("to_client", r.to_client_text, true);
      cell("dropped", r.dropped, true);
      cell("kernel", r.kernel_text, true);
      cell("age", duration(r.age), true);
      cell("remaining", duration(r.remaining), true);
      const sp = document.createElement("td");
      sp.dataset.col = "traffic";
      sp.appendChild(sparkline(r.id));
      tr.appendChild(sp);
      const act = document.createElement("td");
      const b = document.createElement("button");
      b.className = "disconnect";
      b.type = "button";
      b.dataset.id = r.id;
      b.textContent = "Disconnect";
      b.title = "End this allocation now (kernel entries, relay port, TCP connection)";
      b.addEventListener("click", () => disconnect(r, b));
      act.appendChild(b);
      tr.appendChild(act);
      body.appendChild(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 14;
      td.className = "empty";
      td.textContent = state.rows.length ? "no allocation matches the filter" : "no allocations";
      tr.appendChild(td);
      body.appendChild(tr);
    }
    $("#allocs tbody").replaceWith(body);
    $("#shown").textContent = f ? rows.length + " of " + state.rows.length + " shown" : "";
  }

  async function disconnect(r, button) {
    if (!window.confirm("End allocation " + r.id + " of " + r.user + " (" + r.client + ")?")) return;
    button.disabled = true;
    try {
      const resp = await fetch("/api/allocations/" + encodeURIComponent(r.id), {
        method: "DELETE", credentials: "same-origin",
      });
      const text = (await resp.text()).trim();
      if (!resp.ok) throw new Error("disconnect " + r.id + ": HTTP " + resp.status + " " + text);
      showError("Disconnected " + r.user + " (" + r.client + ")", true);
      setTimeout(() => showError(""), 5000);
      await poll();
    } catch (e) {
      showError(String(e.message || e));
      button.disabled = false;
    }
  }

  // ----- charts -------------------------------------------------------------------------
  function chart(canvas, samples, series, unit) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 56, bottom = 16, top = 6, right = 6;
    const pw = w - left - right, ph = h - top - bottom;
    const now = samples.length ? samples[samples.length - 1].at_unix_ms : Date.now();
    // The last 10 minutes; less while the relay (or its history) is younger than that,
    // so a fresh start does not squeeze everything against the right edge.
    const held = samples.length ? now - samples[0].at_unix_ms : 0;
    const span = Math.min(600e3, Math.max(60e3, Math.ceil(held / 60e3) * 60e3));
    let max = 0;
    const peaks = {};
    for (const s of series) {
      peaks[s.name] = 0;
      for (const x of samples) {
        const v = s.get(x);
        if (v > max) max = v;
        if (v > peaks[s.name]) peaks[s.name] = v;
      }
    }
    max = max > 0 ? max * 1.1 : 1;
    g.strokeStyle = "#d9dde5";
    g.fillStyle = "#6a7385";
    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    for (let i = 0; i <= 2; i++) {
      const y = top + ph - (ph * i) / 2;
      g.beginPath(); g.moveTo(left, y + 0.5); g.lineTo(left + pw, y + 0.5); g.stroke();
      g.textAlign = "right"; g.textBaseline = "middle";
      g.fillText(si((max * i) / 2, unit), left - 4, y);
    }
    g.textAlign = "left"; g.textBaseline = "alphabetic";
    g.fillText("-" + span / 60e3 + " min", left, h - 3);
    g.textAlign = "right";
    g.fillText("now", left + pw, h - 3);
    for (const s of series) {
      g.strokeStyle = colors[s.color];
      g.lineWidth = 1.6;
      g.beginPath();
      let first = true;
      for (const x of samples) {
        const px = left + pw - ((now - x.at_unix_ms) / span) * pw;
        if (px < left) continue;
        const py = top + ph - (s.get(x) / max) * ph;
        if (first) { g.moveTo(px, py); first = false; } else g.lineTo(px, py);
      }
      g.stroke();
    }
    // What the chart shows, for a glance from a script (and the console's own test).
    canvas.dataset.peaks = JSON.stringify(peaks);
    canvas.dataset.samples = String(samples.length);
  }

  function renderCharts(h) {
    const s = h.samples;
    const paths = (f) => [
      { name: "kernel", color: "k", get: (x) => f(x.kernel) },
      { name: "userspace_udp", color: "u", get: (x) => f(x.userspace_udp) },
      { name: "userspace_tcp", color: "t", get: (x) => f(x.userspace_tcp) },
    ];
    chart($("#c-pps"), s, paths((r) => r.packets_per_s), "");
    chart($("#c-bps"), s, paths((r) => r.bits_per_s), "b/s");
    chart($("#c-allocs"), s, [{ name: "allocations", color: "a", get: (x) => x.allocations }], "");
    chart($("#c-refused"), s, [
      { name: "auth_failures", color: "f", get: (x) => x.auth_failures_per_s },
      { name: "forbidden", color: "d", get: (x) => x.forbidden_per_s },
    ], "/s");
  }

  // ----- polling ------------------------------------------------------------------------
  let busy = false;
  async function poll() {
    if (busy) return;
    busy = true;
    try {
      const [view, hist, st] = await Promise.all([
        getJSON("/api/allocations"),
        getJSON("/api/history"),
        getJSON("/api/status"),
      ]);
      state.rows = view.allocations.map(rowOf);
      updateSparks(state.rows, Date.now());
      renderHeader(st, view);
      renderTable();
      renderCharts(hist);
      const e = $("#err");
      if (!e.classList.contains("ok")) showError(view.shards_missing.length
        ? "No answer from " + view.shards_missing.join(", ") + ": their allocations are not listed" : "");
      document.body.dataset.polls = String(++state.tick);
    } catch (e) {
      showError("Cannot read the relay: " + (e.message || e));
    } finally {
      busy = false;
    }
  }

  for (const th of document.querySelectorAll("#allocs th[data-key]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      renderTable();
    });
  }
  const filter = $("#filter");
  filter.addEventListener("input", () => {
    state.filter = filter.value.trim().toLowerCase();
    renderTable();
  });
  window.addEventListener("resize", () => poll());
  poll();
  setInterval(poll, POLL_MS);
})();
