// Calls, shared by the usage dashboard (/dashboard) and the operator's console (/admin):
// a paged, filtered list of calls and one call's drill-down (timeline, ledger rows,
// transcript, insights). Every time is shown in UTC, like the reports' day buckets;
// every kind has one colour wherever cost is split by kind.
"use strict";

const FlowCalls = (() => {
  const KIND_COLOURS = { llm: "#3157d5", tts: "#e0793a", stt: "#2a9d8f", telephony: "#8e5bd1" };
  const KIND_ORDER = ["llm", "tts", "stt", "telephony"];
  const kindColour = (kind) => KIND_COLOURS[kind] || "#7f8c8d";
  const kindLabel = (kind) => ({ llm: "LLM", tts: "TTS", stt: "STT", telephony: "Telephony" }[kind] || kind);
  const sortKinds = (kinds) => [...kinds].sort((a, b) => {
    const ia = KIND_ORDER.indexOf(a), ib = KIND_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  const usd = (v) => {
    if (v === null || v === undefined) return "unpriced";
    const n = Number(v);
    return "$" + (n >= 1 ? n.toFixed(2) : n.toFixed(n >= 0.01 ? 4 : 6));
  };
  const int = (v) => Number(v || 0).toLocaleString("en-US");
  const utc = (ts) => ts ? new Date(ts).toISOString().replace("T", " ").replace(/\.\d+Z$|Z$/, "") + " UTC" : "—";

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) node.append(c instanceof Node ? c : String(c ?? ""));
    return node;
  }

  function table(headers, rows, attrs = {}) {
    return el("table", attrs,
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((r) => el("tr", r.attrs || {}, r.cells.map((c) => el("td", {}, c))))));
  }

  // A filtered list of calls, paged with the API's next_cursor (a stack of cursors for
  // "previous"). `path` is /api/bot or /api/admin/calls; `onOpen(id)` opens a call.
  class CallList {
    constructor(root, api, path, onOpen, extra = {}) {
      Object.assign(this, { root, api, path, onOpen, extra, cursors: [null] });
      this.form = el("form", { class: "filters" },
        el("select", { name: "status", "aria-label": "status" },
          ["", "pending", "ringing", "starting", "running", "processing", "completed", "failed"].map((s) => el("option", { value: s }, s || "any status"))),
        el("input", { name: "end_user_id", placeholder: "end user", "aria-label": "end user" }),
        el("label", {}, "from ", el("input", { name: "start", type: "date", "aria-label": "from (UTC)" })),
        el("label", {}, "to ", el("input", { name: "end", type: "date", "aria-label": "to (UTC, excluded)" })),
        el("button", { type: "submit" }, "Filter"));
      this.form.addEventListener("submit", (e) => { e.preventDefault(); this.cursors = [null]; this.load(); });
      this.body = el("div", { class: "call-list" });
      this.prev = el("button", { type: "button", class: "secondary", onclick: () => { this.cursors.pop(); this.cursors.pop(); this.load(); } }, "‹ Newer");
      this.next = el("button", { type: "button", class: "secondary", onclick: () => this.load() }, "Older ›");
      this.pageInfo = el("span", { class: "muted" });
      root.replaceChildren(this.form, this.body, el("div", { class: "pager" }, this.prev, this.pageInfo, this.next));
    }

    params() {
      const p = new URLSearchParams({ limit: "20", ...this.extra });
      const f = new FormData(this.form);
      for (const name of ["status", "end_user_id"]) if (f.get(name)) p.set(name, f.get(name));
      if (f.get("start")) p.set("start", f.get("start") + "T00:00:00Z");
      if (f.get("end")) p.set("end", f.get("end") + "T00:00:00Z");
      const cursor = this.cursors[this.cursors.length - 1];
      if (cursor) p.set("cursor", cursor);
      return p;
    }

    async load() {
      // Only the latest load shows: an older answer arriving late (a filter submitted
      // while the first page loads) is dropped.
      const seq = (this.seq = (this.seq || 0) + 1);
      const page = await this.api(this.path + "?" + this.params());
      if (seq !== this.seq) return;
      const rows = page.calls.map((c) => ({
        attrs: { dataset: { id: c.workflow_thread_id } },
        cells: [
          el("a", { href: "#call/" + c.workflow_thread_id, title: c.workflow_thread_id }, c.workflow_thread_id.slice(0, 8)),
          utc(c.created_at), c.end_user_id || "—", c.status,
          c.duration_seconds === null ? "—" : c.duration_seconds.toFixed(1) + " s",
          int(c.tokens), int(c.tts_characters), Number(c.stt_seconds).toFixed(1),
          Number(c.telephony_seconds || 0).toFixed(1), usd(c.cost_usd),
        ],
      }));
      this.body.replaceChildren(rows.length
        ? table(["Call", "Created (UTC)", "End user", "Status", "Duration", "Tokens", "TTS chars", "STT s", "Phone s", "Cost"], rows, { class: "calls" })
        : el("p", { class: "muted" }, "No calls match."));
      this.pageInfo.textContent = `page ${this.cursors.length}`;
      this.prev.disabled = this.cursors.length <= 1;
      this.next.disabled = !page.next_cursor;
      this.cursors.push(page.next_cursor);
      this.root.dataset.loaded = "true";
    }
  }

  // Milestones, transcript turns and ledger rows, in time order.
  function timeline(thread, events) {
    const items = [
      [thread.created_at, "call", "created"],
      [thread.bot_started_at, "call", "bot joined"],
      [thread.bot_ended_at, "call", "call ended"],
      ...(Array.isArray(thread.transcript) ? thread.transcript : []).map((t) =>
        [t.started_at || t.ended_at, "turn", `${t.role}: ${t.content}${t.interrupted ? " [interrupted]" : ""}`]),
      ...events.map((e) => [e.occurred_at, e.kind,
        `${kindLabel(e.kind)} ${e.model} (${e.category}) ${usd(e.cost_usd)}${e.estimated ? " estimated" : ""}`]),
    ].filter((i) => i[0]).sort((a, b) => new Date(a[0]) - new Date(b[0]));
    return el("ol", { class: "timeline" }, items.map(([at, kind, text]) =>
      el("li", { dataset: { kind } }, el("time", {}, utc(at)), el("span", { class: "dot", style: `background:${kind in KIND_COLOURS ? kindColour(kind) : "#c3c9d4"}` }), text)));
  }

  function ledger(events) {
    const rows = events.map((e) => ({
      attrs: { dataset: { id: e.id, kind: e.kind } },
      cells: [utc(e.occurred_at), kindLabel(e.kind), e.category, e.provider, e.model,
        int(e.input_tokens), int(e.cache_read_tokens), int(e.output_tokens),
        `${int(e.input_audio_tokens)} / ${int(e.output_audio_tokens)}`, int(e.characters),
        e.audio_seconds, usd(e.cost_usd), e.estimated ? "yes" : "", e.price_source || ""],
    }));
    return table(["Time (UTC)", "Kind", "Category", "Provider", "Model", "Input tok", "Cached", "Output tok",
      "Audio in/out", "Chars", "Seconds", "Cost", "Estimated", "Price source"], rows, { class: "ledger" });
  }

  function insights(value) {
    if (!value) return el("p", { class: "muted" }, "No insights.");
    const parts = [];
    if (value.summary) parts.push(el("p", {}, value.summary));
    if (Array.isArray(value.key_points)) parts.push(el("ul", {}, value.key_points.map((k) => el("li", {}, k))));
    if (value.sentiment) parts.push(el("p", {}, "Sentiment: " + value.sentiment));
    parts.push(el("pre", {}, JSON.stringify(value, null, 2)));
    return el("div", {}, parts);
  }

  // One call: its figures, timeline, ledger rows, transcript and insights.
  function renderCall(root, thread, events) {
    const stats = thread.usage_stats || {};
    const byKind = {};
    for (const e of events) byKind[e.kind] = (byKind[e.kind] || 0) + Number(e.cost_usd || 0);
    const split = el("div", { class: "split" }, sortKinds(Object.keys(byKind)).map((k) =>
      el("span", { class: "chip", style: `border-color:${kindColour(k)}` }, `${kindLabel(k)} ${usd(byKind[k])}`)));
    const turns = Array.isArray(thread.transcript) ? thread.transcript : [];
    root.replaceChildren(
      el("dl", { class: "facts" },
        el("dt", {}, "Status"), el("dd", { class: "call-status" }, thread.status + (thread.end_reason ? `, ${thread.end_reason}` : "") + (thread.error ? ` (${thread.error.code})` : "")),
        el("dt", {}, "Transport"), el("dd", {}, thread.transport + (thread.twilio_call_sid ? ` (${thread.twilio_call_sid})` : "")),
        el("dt", {}, "End user"), el("dd", {}, thread.end_user_id || "—"),
        el("dt", {}, "Created"), el("dd", {}, utc(thread.created_at)),
        el("dt", {}, "Bot"), el("dd", {}, `${utc(thread.bot_started_at)} → ${utc(thread.bot_ended_at)}`),
        el("dt", {}, "Cost"), el("dd", { class: "call-cost", dataset: { value: stats.total_cost_usd || "0" } }, usd(stats.total_cost_usd || 0)),
        el("dt", {}, "Events"), el("dd", {}, `${int(events.length)} (${int(stats.unpriced_events)} unpriced, ${int(stats.estimated_events)} estimated)`),
        ...(Number(stats.telephony_seconds) > 0 ? [el("dt", {}, "Phone"), el("dd", {}, `${Number(stats.telephony_seconds).toFixed(1)} s`)] : [])),
      split,
      el("h3", {}, "Timeline"), timeline(thread, events),
      el("h3", {}, "Ledger rows"), ledger(events),
      el("h3", {}, "Transcript"),
      turns.length ? el("ol", { class: "transcript" }, turns.map((t) => el("li", { dataset: { role: t.role } }, el("b", {}, t.role + ": "), t.content))) : el("p", { class: "muted" }, "No transcript."),
      el("h3", {}, "Insights"), insights(thread.insights),
      el("details", {}, el("summary", {}, "Raw"), el("pre", {}, JSON.stringify(thread, null, 2))));
  }

  return { KIND_COLOURS, kindColour, kindLabel, sortKinds, usd, int, utc, el, table, CallList, renderCall };
})();
