// The local server's run viewer: no framework, no build step, nothing loaded from elsewhere.
//
// The token arrives in the URL fragment (#token=...), which browsers never send to a server; it is moved into
// sessionStorage (this tab only) and removed from the address bar. Runs come from GET /_dev/runs with it as a
// bearer token, every second while a run is active, else every 5 s. Every piece of data is written with
// textContent (never innerHTML), so a span named "<img src=x onerror=...>" is shown as text.
// A trace that crossed processes is one run per process's part (docs/cross-process.md): the server lists the parts
// of one trace together; the page heads them with a "trace" line and shows, in a part, the span it continues.
"use strict";

(() => {
  const TOKEN_KEY = "prefactor-otel.token";
  const SELECTED_KEY = "prefactor-otel.selected-run";
  const FAST_MS = 1000;
  const SLOW_MS = 5000;

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    runs: [],
    selectedId: sessionStorage.getItem(SELECTED_KEY),
    collapsed: new Set(), // span ids the user collapsed; everything else is open
    timer: null,
    lastText: null, // the last answer rendered
    generation: 0, // bumps on every new token: answers to an older token's requests are ignored
  };

  // ------------------------------------------------------------------ small DOM helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function badge(status) {
    const safe = /^[a-z_]+$/.test(status || "") ? status : "unknown";
    return el("span", "badge status-" + safe, status || "unknown");
  }

  function formatDuration(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return "-";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
    if (ms < 3600000) {
      const minutes = Math.floor(ms / 60000);
      const seconds = Math.floor((ms % 60000) / 1000);
      return minutes + " min " + String(seconds).padStart(2, "0") + " s";
    }
    const hours = Math.floor(ms / 3600000);
    if (hours < 48) return hours + " h " + String(Math.floor((ms % 3600000) / 60000)).padStart(2, "0") + " min";
    return Math.floor(hours / 24) + " days";
  }

  function parseTime(value) {
    if (!value) return null;
    const millis = Date.parse(value);
    return isNaN(millis) ? null : millis;
  }

  function formatStart(value) {
    const millis = parseTime(value);
    if (millis === null) return "-";
    const date = new Date(millis);
    const today = new Date();
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    if (date.toDateString() === today.toDateString()) return time;
    return date.toLocaleDateString() + " " + time;
  }

  // Duration, or for something still running the time since it started (marked as running).
  function durationOf(item) {
    if (item.duration_ms !== null && item.duration_ms !== undefined) return formatDuration(item.duration_ms);
    const started = parseTime(item.started_at);
    if (item.status === "active" && started !== null) return formatDuration(Date.now() - started) + " …";
    return "-";
  }

  function formatTokens(tokens) {
    if (!tokens) return null;
    const parts = [];
    if (tokens.input !== null && tokens.input !== undefined) parts.push("in " + tokens.input);
    if (tokens.output !== null && tokens.output !== undefined) parts.push("out " + tokens.output);
    if (tokens.total !== null && tokens.total !== undefined) parts.push("total " + tokens.total);
    return parts.length ? parts.join(" / ") : null;
  }

  // ------------------------------------------------------------------ token

  function tokenFromFragment() {
    const fragment = window.location.hash.replace(/^#/, "");
    if (!fragment) return null;
    const token = new URLSearchParams(fragment).get("token");
    // Out of the address bar (and so out of bookmarks, history entries and screenshots) at once.
    history.replaceState(null, "", window.location.pathname + window.location.search);
    return token && token.trim() ? token.trim() : null;
  }

  function showLogin(message) {
    stopPolling();
    $("app").hidden = true;
    $("login").hidden = false;
    // A message is text, or a list of text and elements (a command in <code>): never HTML.
    if (Array.isArray(message)) $("token-error").replaceChildren(...message);
    else $("token-error").textContent = message || "";
    $("connection").textContent = "";
    $("token-input").focus();
  }

  function useToken(token) {
    state.token = token;
    state.lastText = null;
    state.generation += 1;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    $("app").hidden = false;
    refresh();
  }

  // ------------------------------------------------------------------ polling

  function stopPolling() {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
  }

  function schedule(delay) {
    stopPolling();
    state.timer = setTimeout(refresh, delay);
  }

  async function refresh() {
    const generation = state.generation;
    let response;
    try {
      response = await fetch("/_dev/runs", {
        headers: { Authorization: "Bearer " + state.token },
        cache: "no-store",
      });
    } catch (error) {
      if (generation !== state.generation) return;
      $("connection").textContent = "Cannot reach the local server (is it still running?); retrying.";
      $("connection").className = "connection error";
      schedule(SLOW_MS);
      return;
    }
    if (generation !== state.generation) return;
    if (response.status === 401) {
      const detail = await errorText(response);
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showLogin([
        "The server refused this token (" + detail + "). Use the token ",
        el("code", "", "prefactor-otel serve"),
        " printed, or open the page URL it printed.",
      ]);
      return;
    }
    if (!response.ok) {
      $("connection").textContent = "The server answered " + (await errorText(response)) + "; retrying.";
      $("connection").className = "connection error";
      schedule(SLOW_MS);
      return;
    }
    let text = "";
    let body = null;
    try {
      text = await response.text();
      body = JSON.parse(text);
    } catch (error) {
      body = null;
    }
    if (generation !== state.generation) return;
    const runs = body && Array.isArray(body.runs) ? body.runs : [];
    const anyActive = runs.some((run) => run.status === "active" || run.status === "pending");
    $("connection").textContent =
      "Updated " + new Date().toLocaleTimeString() + (anyActive ? " · live (every second)" : " · every 5 s");
    $("connection").className = "connection";
    // Unchanged and nothing running (no clock to advance): leave the page alone, so a text selection survives.
    if (text !== state.lastText || anyActive) {
      state.runs = runs;
      state.lastText = text;
      render();
    }
    schedule(anyActive ? FAST_MS : SLOW_MS);
  }

  async function errorText(response) {
    let message = "";
    try {
      const body = await response.json();
      if (body && typeof body.message === "string") message = body.message;
    } catch (error) {
      // not JSON: the status says enough
    }
    return "HTTP " + response.status + (message ? ": " + message : "");
  }

  // ------------------------------------------------------------------ rendering

  function render() {
    renderRunList();
    const run = state.runs.find((candidate) => candidate.id === state.selectedId);
    $("run").hidden = !run;
    $("pick-run").hidden = Boolean(run) || state.runs.length === 0;
    if (run) renderRun(run);
  }

  // trace id -> how many of the listed runs are parts of it (the server lists them one after another).
  function tracePartCounts(runs) {
    const counts = new Map();
    for (const run of runs) {
      if (run.trace_id) counts.set(run.trace_id, (counts.get(run.trace_id) || 0) + 1);
    }
    return counts;
  }

  function traceRow(traceId, parts) {
    const row = el("tr", "trace-row");
    const cell = el("td", "trace", "trace ");
    cell.colSpan = 8;
    cell.append(el("code", "", traceId), el("span", "sub", " · " + parts + " parts, one run per process"));
    row.append(cell);
    return row;
  }

  function renderRunList() {
    const parts = tracePartCounts(state.runs);
    const rows = [];
    let previousTrace = null;
    for (const run of state.runs) {
      const shared = run.trace_id && parts.get(run.trace_id) > 1;
      if (shared && run.trace_id !== previousTrace) rows.push(traceRow(run.trace_id, parts.get(run.trace_id)));
      previousTrace = shared ? run.trace_id : null;
      rows.push(runRow(run, shared));
    }
    $("runs-body").replaceChildren(...rows);
    $("runs-table").hidden = state.runs.length === 0;
    $("no-runs").hidden = state.runs.length !== 0;
    const active = state.runs.filter((run) => run.status === "active").length;
    $("runs-count").textContent = state.runs.length
      ? "(" + state.runs.length + (active ? ", " + active + " active" : "") + ")"
      : "";
  }

  function runRow(run, part) {
    const classes = [run.id === state.selectedId ? "selected" : "", part ? "trace-part" : ""];
    const row = el("tr", classes.filter(Boolean).join(" "));
    row.dataset.runId = run.id;
    row.addEventListener("click", () => select(run.id));
    row.append(el("td", "agent", run.agent || "-"));
    const nameCell = el("td", "name");
    const open = el("button", "link", run.name || run.id);
    open.type = "button";
    open.title = "Show the spans of run " + run.id;
    if (run.id === state.selectedId) open.setAttribute("aria-current", "true");
    open.addEventListener("click", (event) => {
      event.stopPropagation();
      select(run.id);
    });
    nameCell.append(open, runTag(run));
    row.append(nameCell);
    const statusCell = el("td", "status");
    statusCell.append(badge(run.status));
    if (run.status === "terminated" && run.terminated_reason) statusCell.title = terminatedText(run);
    row.append(statusCell);
    row.append(el("td", "start", formatStart(run.started_at)));
    row.append(el("td", "num", durationOf(run)));
    const totals = run.totals || {};
    row.append(el("td", "num", totals.spans ?? "-"));
    row.append(el("td", "num" + (totals.errors ? " has-errors" : ""), totals.errors ?? "-"));
    row.append(el("td", "num", totals.total_tokens ? totals.total_tokens : "-"));
    return row;
  }

  // What tells runs of one agent apart at a glance: the end of the run id (ids share their time prefix) and the
  // models it called. The whole id is in the title and in the run's summary.
  function runTag(run) {
    const tag = el("div", "run-tag");
    const id = String(run.id || "");
    const short = el("code", "run-id", id.length > 10 ? "…" + id.slice(-8) : id);
    short.title = "run " + id;
    tag.append(short);
    if (run.agent) tag.append(el("span", "run-agent", run.agent)); // shown where the Agent column is not
    const models = (run.totals && run.totals.models) || [];
    if (models.length) tag.append(el("span", "run-model", models[0] + (models.length > 1 ? " +" + (models.length - 1) : "")));
    return tag;
  }

  // A terminated run was stopped from Prefactor (an operator or a policy: the API names no one), not failed.
  function terminatedText(run) {
    return "terminated in Prefactor: " + (run.terminated_reason || "no reason given");
  }

  function select(runId) {
    if (state.selectedId !== runId) {
      state.selectedId = runId;
      sessionStorage.setItem(SELECTED_KEY, runId);
      $("terminate-result").textContent = "";
      $("terminate-reason").value = "";
    }
    render();
  }

  function renderRun(run) {
    $("run-heading").textContent = (run.agent ? run.agent + " · " : "") + (run.name || "run " + run.id);
    // Only the terminate form's visibility changes on refresh: a reason being typed survives the next update.
    $("run-actions").hidden = run.status !== "active";

    const totals = run.totals || {};
    const facts = [
      ["Status", badge(run.status)],
      ["Run id", el("code", "", run.id)],
      ["Started", formatStart(run.started_at)],
      ["Duration", durationOf(run)],
      ["Spans", String(totals.spans ?? "-")],
      ["Errors", String(totals.errors ?? "-")],
      [
        "Tokens",
        // as `show` says it: no "total 0" when the spans report input or output tokens only
        "in " + (totals.input_tokens ?? 0) + " / out " + (totals.output_tokens ?? 0) +
          (totals.total_tokens ? " / total " + totals.total_tokens : ""),
      ],
    ];
    if (totals.models && totals.models.length) facts.push(["Models", totals.models.join(", ")]);
    if (totals.tools && totals.tools.length) facts.push(["Tools", totals.tools.join(", ")]);
    if (run.status === "terminated" || run.terminated_reason) {
      facts.push(["Terminated in Prefactor", run.terminated_reason || "no reason given"]);
    }
    if (totals.terminated) facts.push(["Stopped by the termination", String(totals.terminated) + " spans"]);
    if (run.trace_id) facts.push(["Trace", el("code", "", run.trace_id)]);
    for (const link of Array.isArray(run.continues) ? run.continues : []) facts.push(["Continues", continued(link)]);
    const summary = [];
    for (const [label, value] of facts) {
      const kind = label.startsWith("Terminated") ? " terminated" : label === "Continues" ? " continues" : "";
      const item = el("div", "fact" + kind);
      item.append(el("dt", "", label));
      const data = el("dd");
      if (typeof value === "string") data.textContent = value;
      else data.append(value);
      item.append(data);
      summary.push(item);
    }
    $("run-summary").replaceChildren(...summary);

    const timeline = runTimeline(run);
    const roots = Array.isArray(run.spans) ? run.spans : [];
    $("tree").replaceChildren(...roots.map((span) => spanNode(span, timeline, 1, run)));
    if (!roots.length) $("tree").replaceChildren(el("li", "empty", "No spans received for this run yet."));
  }

  // What a part's top span continues: another process's span, in a run this server holds (a link to it) or not.
  function continued(link) {
    const holder = el("span", "continued");
    if (link.run_id) {
      const other = state.runs.find((candidate) => candidate.id === link.run_id);
      holder.append(el("span", "span-name", link.span_name || "(unnamed)"), document.createTextNode(" of run "));
      const open = el("button", "link", other && other.name ? other.name : link.run_id);
      open.type = "button";
      open.title = "Show run " + link.run_id;
      open.addEventListener("click", () => select(link.run_id));
      holder.append(open);
    } else {
      holder.append(document.createTextNode("span "), el("code", "", link.otel_span_id || "?"));
      holder.append(document.createTextNode(" of a process this server has no run for"));
    }
    return holder;
  }

  // The time window of the duration bars: from the run's start (or its first span's) to the latest of its end
  // and its spans' ends. Spans can end after the run: a terminated run's end is the termination, and spans the
  // agent sent afterwards are kept as sent. A running run (or span) reaches now.
  function runTimeline(run) {
    let start = parseTime(run.started_at);
    let end = parseTime(run.finished_at);
    if (end === null) end = Date.now();
    const stack = Array.isArray(run.spans) ? run.spans.slice() : [];
    for (let seen = 0; stack.length && seen < 100000; seen++) {
      const span = stack.pop();
      const spanStart = parseTime(span.started_at);
      const spanEnd = parseTime(span.finished_at);
      if (spanStart !== null && (start === null || spanStart < start)) start = spanStart;
      if (spanEnd !== null && spanEnd > end) end = spanEnd;
      if (Array.isArray(span.children)) stack.push(...span.children);
    }
    if (start === null || end <= start) return null;
    return { start, length: end - start };
  }

  function spanNode(span, timeline, depth, run) {
    const children = Array.isArray(span.children) ? span.children : [];
    const open = !state.collapsed.has(span.id);
    // Closed by the run's termination: stopped from outside, not a failure of the agent's (runview.py).
    const kind = span.terminated ? " terminated" : span.error || span.status === "failed" ? " failed" : "";
    const item = el("li", "span" + kind);
    item.setAttribute("role", "treeitem");
    item.setAttribute("aria-level", String(depth));
    item.dataset.spanId = span.id;
    if (children.length) item.setAttribute("aria-expanded", open ? "true" : "false");

    const line = el("div", "span-line");
    if (children.length) {
      const toggle = el("button", "toggle", open ? "▾" : "▸");
      toggle.type = "button";
      toggle.setAttribute("aria-label", (open ? "Collapse " : "Expand ") + (span.name || span.type || "span"));
      toggle.addEventListener("click", () => {
        if (state.collapsed.has(span.id)) state.collapsed.delete(span.id);
        else state.collapsed.add(span.id);
        render();
      });
      line.append(toggle);
    } else {
      line.append(el("span", "toggle-space"));
    }
    line.append(el("span", "type", shortType(span.type)));
    line.append(el("span", "span-name", span.name || "(unnamed)"));
    line.append(badge(span.terminated ? "terminated" : span.status));
    if (span.orphan) line.append(el("span", "badge orphan", "orphan"));
    line.append(el("span", "duration", durationOf(span)));
    const bar = durationBar(span, timeline);
    if (bar) line.append(bar);
    item.append(line);

    const facts = [];
    if (span.model) facts.push(["model", span.model]);
    const tokens = formatTokens(span.tokens);
    if (tokens) facts.push(["tokens", tokens]);
    if (span.tool) facts.push(["tool", span.tool]);
    if (facts.length) {
      const detail = el("div", "span-facts");
      for (const [label, value] of facts) {
        const fact = el("span", "fact-" + label);
        fact.append(el("span", "label", label + " "), el("span", "value", value));
        detail.append(fact);
      }
      item.append(detail);
    }
    if (span.input_preview) item.append(preview("in", span.input_preview));
    if (span.output_preview) item.append(preview("out", span.output_preview));
    if (span.terminated && depth === 1) {
      const stopped = el("div", "span-terminated");
      stopped.append(el("span", "label", "stopped "), el("span", "value", terminatedText(run)));
      item.append(stopped);
    }
    if (span.error && !span.terminated) {
      const error = el("div", "span-error");
      error.append(el("span", "label", "error "));
      error.append(el("span", "value", [span.error.type, span.error.message].filter(Boolean).join(": ") || "failed"));
      item.append(error);
    }
    if (children.length) {
      const group = el("ul", "children");
      group.setAttribute("role", "group");
      group.hidden = !open;
      group.append(...children.map((child) => spanNode(child, timeline, depth + 1, run)));
      item.append(group);
    }
    return item;
  }

  function preview(direction, text) {
    const row = el("div", "preview preview-" + direction);
    row.append(el("span", "label", direction === "in" ? "input " : "output "), el("span", "value", text));
    return row;
  }

  function shortType(type) {
    if (!type) return "?";
    return String(type).replace(/^otel:/, "");
  }

  // A bar placed and sized on the run's time window (a running span reaches now).
  function durationBar(span, timeline) {
    if (!timeline) return null;
    const start = parseTime(span.started_at);
    if (start === null) return null;
    let end = parseTime(span.finished_at);
    if (end === null) end = span.status === "active" ? Date.now() : start;
    const left = Math.min(Math.max((start - timeline.start) / timeline.length, 0), 1);
    const width = Math.min(Math.max((end - start) / timeline.length, 0.004), 1 - left);
    const track = el("span", "timebar");
    track.setAttribute("aria-hidden", "true");
    const fill = el("span", "timebar-fill" + (span.status === "active" ? " running" : ""));
    // CSSOM properties, not a style attribute: allowed by the page's Content-Security-Policy.
    fill.style.left = (left * 100).toFixed(2) + "%";
    fill.style.width = (width * 100).toFixed(2) + "%";
    track.append(fill);
    return track;
  }

  // ------------------------------------------------------------------ terminate

  async function terminate(event) {
    event.preventDefault();
    const runId = state.selectedId;
    const reason = $("terminate-reason").value.trim();
    const result = $("terminate-result");
    if (!runId) return;
    if (!reason) {
      result.textContent = "Give a reason: it is recorded on the run and shown to the agent.";
      result.className = "message error";
      return;
    }
    const button = $("terminate-button");
    button.disabled = true;
    result.className = "message";
    result.textContent = "Terminating…";
    try {
      const response = await fetch("/api/v1/agent_instance/" + encodeURIComponent(runId) + "/terminate", {
        method: "POST",
        headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" },
        body: JSON.stringify({ reason }),
      });
      if (response.ok) {
        result.textContent = "Run terminated: " + reason;
        result.className = "message ok";
        $("terminate-reason").value = "";
      } else {
        result.textContent = "Not terminated: " + (await errorText(response));
        result.className = "message error";
      }
    } catch (error) {
      result.textContent = "Not terminated: the local server could not be reached.";
      result.className = "message error";
    } finally {
      button.disabled = false;
    }
    refresh();
  }

  // ------------------------------------------------------------------ start

  function setAll(collapsed) {
    const run = state.runs.find((candidate) => candidate.id === state.selectedId);
    state.collapsed.clear();
    if (collapsed && run) {
      const walk = (spans) => {
        for (const span of spans || []) {
          if (span.children && span.children.length) state.collapsed.add(span.id);
          walk(span.children);
        }
      };
      walk(run.spans);
    }
    render();
  }

  function start() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      $("token-input").value = "";
      if (!token) {
        $("token-error").textContent = "Paste the token first.";
        return;
      }
      useToken(token);
    });
    $("terminate-form").addEventListener("submit", terminate);
    $("expand-all").addEventListener("click", () => setAll(false));
    $("collapse-all").addEventListener("click", () => setAll(true));

    const token = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
    if (token) useToken(token);
    else showLogin("");
  }

  start();
})();
