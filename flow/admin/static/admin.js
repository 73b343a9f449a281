// Flow's operator console: signs in with an operator token (kept in this tab only) and
// shows who to bill for any UTC period: every key costliest first, a key's breakdown
// (by day, model, kind, end user) and calls, and a call's drill-down (calls.js).
// Chart.js is served locally; every kind keeps one colour in every chart.
"use strict";

const $ = (id) => document.getElementById(id);
const { el, usd, int, utc, kindColour, kindLabel, sortKinds } = FlowCalls;
const charts = {};
const state = { key: null, group: "day", keyCalls: null };

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("content").hidden = true;
}

async function request(path) {
  const resp = await fetch(path, { headers: { Authorization: "Bearer " + sessionStorage.getItem("flow.operator") } });
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    throw new Error(body.message || resp.statusText || "request failed");
  }
  return resp;
}
const api = async (path) => (await request(path)).json();

function draw(id, config) {
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart($(id), config);
}

const isoInput = (d) => d.toISOString().slice(0, 19);
function setDays(days) {
  const end = new Date();
  $("end").value = isoInput(end);
  $("start").value = isoInput(new Date(end - days * 86400e3));
}
function period() {
  return new URLSearchParams({ start: $("start").value + "Z", end: $("end").value + "Z" });
}

function kindBar(costByKind, total) {
  const bar = el("div", { class: "bar", title: sortKinds(Object.keys(costByKind)).map((k) => `${kindLabel(k)} ${usd(costByKind[k])}`).join(", ") });
  for (const k of sortKinds(Object.keys(costByKind))) {
    const share = Number(total) > 0 ? (100 * Number(costByKind[k])) / Number(total) : 0;
    bar.append(el("span", { style: `width:${share}%;background:${kindColour(k)}`, dataset: { kind: k } }));
  }
  return bar;
}

// A key's budget as it stands: spent (and reserved by live calls) of the limit, what
// remains, in the budget's own period; "—" for a key without one.
function budgetCell(b) {
  if (!b) return el("td", { class: "budget muted" }, "—");
  const period = { day: "today", month: "this month", total: "in total" }[b.period] || b.period;
  const reserved = Number(b.reserved_usd) > 0 ? ` + ${usd(b.reserved_usd)} live` : "";
  const left = Number(b.remaining_usd) <= 0 ? "exhausted" : `${usd(b.remaining_usd)} left`;
  return el("td", { class: "budget" + (Number(b.remaining_usd) <= 0 ? " exhausted" : ""), dataset: { spent: b.spent_usd, limit: b.limit_usd, remaining: b.remaining_usd } },
    `${usd(b.spent_usd)}${reserved} of ${usd(b.limit_usd)}`, el("div", { class: "muted" }, `${period}; ${left}`));
}

function render(data) {
  const t = data.totals;
  $("kpi-cost").textContent = usd(t.cost_usd);
  $("kpi-cost").dataset.value = t.cost_usd;
  $("kpi-calls").textContent = int(t.calls);
  $("kpi-minutes").textContent = Number(t.minutes).toFixed(1);
  $("kpi-keys").textContent = int(data.keys.filter((k) => k.events > 0).length);
  const kinds = sortKinds(Object.keys(t.cost_by_kind));
  draw("chart-kind", {
    type: "doughnut",
    data: { labels: kinds.map(kindLabel), datasets: [{ data: kinds.map((k) => Number(t.cost_by_kind[k])), backgroundColor: kinds.map(kindColour) }] },
    options: { responsive: true, animation: false },
  });
  const top = data.keys.filter((k) => Number(k.cost_usd) > 0).slice(0, 10);
  draw("chart-keys", {
    type: "bar",
    data: {
      labels: top.map((k) => k.name),
      datasets: kinds.map((kind) => ({ label: kindLabel(kind), backgroundColor: kindColour(kind), data: top.map((k) => Number(k.cost_by_kind[kind] || 0)) })),
    },
    options: { indexAxis: "y", responsive: true, animation: false, scales: { x: { stacked: true, title: { display: true, text: "USD" } }, y: { stacked: true } } },
  });
  const tbody = $("keys").querySelector("tbody");
  tbody.replaceChildren(...data.keys.map((k) => el("tr", { dataset: { id: k.api_key_id, cost: k.cost_usd }, class: k.api_key_id === state.key ? "selected" : "", onclick: () => { location.hash = "#key/" + k.api_key_id; } },
    el("td", {}, el("a", { href: "#key/" + k.api_key_id }, k.name), el("div", { class: "muted" }, `${k.key || k.api_key_id.slice(0, 8)}${k.is_active ? "" : " (revoked)"}${k.stripe_customer_id ? " · " + k.stripe_customer_id : ""}`)),
    el("td", {}, int(k.calls)), el("td", {}, Number(k.minutes).toFixed(1)), el("td", {}, int(k.input_tokens)), el("td", {}, int(k.output_tokens)),
    el("td", {}, int(k.tts_characters)), el("td", {}, Number(k.stt_seconds).toFixed(1)), el("td", {}, Number(k.telephony_seconds).toFixed(1)),
    el("td", {}, int(k.unpriced_events)), budgetCell(k.budget),
    el("td", {}, kindBar(k.cost_by_kind, k.cost_usd)), el("td", { class: "cost" }, usd(k.cost_usd)))));
  $("error").hidden = true;
  $("content").hidden = false;
  $("logout").hidden = false;
  document.body.dataset.loaded = "true";
}

async function showKey() {
  if (!state.key) { $("key").hidden = true; return; }
  const data = await api(`/api/admin/keys/${state.key}/usage?${period()}&group_by=${state.group}`);
  $("key-name").textContent = `${data.key.name} (${data.key.key || data.key.api_key_id})`;
  const b = data.budget;
  $("key-budget").textContent = b
    ? `Budget: ${usd(b.spent_usd)} spent and ${usd(b.reserved_usd)} reserved by ${int(b.live_calls)} live calls of ${usd(b.limit_usd)} (${b.period}); ${usd(b.remaining_usd)} remaining${b.resets_at ? ", resets " + utc(b.resets_at) : ""}`
    : "No budget.";
  $("key-kinds").replaceChildren(...sortKinds(Object.keys(data.cost_by_kind)).map((k) =>
    el("span", { class: "chip", style: `border-color:${kindColour(k)}` }, `${kindLabel(k)} ${usd(data.cost_by_kind[k])}`)));
  for (const b of $("key-tabs").querySelectorAll("button")) b.classList.toggle("active", b.dataset.group === state.group);
  const groups = data.report.groups;
  $("key-chart-caption").textContent = `Cost by ${state.group.replace("_", " ")} (USD)`;
  draw("chart-key", {
    type: "bar",
    data: {
      labels: groups.map((g) => state.group === "kind" ? kindLabel(g.key) : (g.key ?? "(none)")),
      datasets: [{ label: "cost", data: groups.map((g) => Number(g.cost_usd)), backgroundColor: groups.map((g) => state.group === "kind" ? kindColour(g.key) : "#1f3b8f") }],
    },
    options: { responsive: true, maintainAspectRatio: false, animation: false, plugins: { legend: { display: false } } },
  });
  $("key-groups").replaceChildren(FlowCalls.table(
    [state.group, "Calls", "LLM calls", "Input tok", "Output tok", "TTS chars", "STT s", "Phone s", "Unpriced", "Cost"],
    groups.map((g) => ({ cells: [g.key ?? "(none)", int(g.calls), int(g.llm_calls), int(g.input_tokens), int(g.output_tokens), int(g.tts_characters), Number(g.stt_seconds).toFixed(1), Number(g.telephony_seconds).toFixed(1), int(g.unpriced_events), usd(g.cost_usd)] })),
    { class: "groups" }));
  if (!state.keyCalls || state.keyCalls.extra.api_key_id !== state.key) {
    state.keyCalls = new FlowCalls.CallList($("key-calls"), api, "/api/admin/calls", null, { api_key_id: state.key });
  }
  await state.keyCalls.load();
  $("key").hidden = false;
}

async function showDetail(id) {
  if (!id) { $("detail").hidden = true; return; }
  const [thread, usage] = await Promise.all([api("/api/admin/calls/" + id), api(`/api/admin/calls/${id}/usage`)]);
  $("detail-id").textContent = id;
  FlowCalls.renderCall($("detail-body"), thread, usage.events);
  $("detail").hidden = false;
  $("detail").scrollIntoView();
}

async function route() {
  const key = location.hash.match(/^#key\/([0-9a-f-]{36})$/);
  const call = location.hash.match(/^#call\/([0-9a-f-]{36})$/);
  if (key) {
    state.key = key[1];
    $("detail").hidden = true;
    await showKey();
    $("key").scrollIntoView();
  } else if (call) {
    await showDetail(call[1]);
  } else {
    state.key = null;
    $("key").hidden = true;
    $("detail").hidden = true;
  }
}

async function load() {
  if (!sessionStorage.getItem("flow.operator")) return;
  try {
    render(await api("/api/admin/usage?" + period()));
    await route();
  } catch (err) {
    showError(err.message);
  }
}

async function downloadCsv(e) {
  e.preventDefault();
  try {
    const blob = await (await request("/api/usage/export.csv?" + period())).blob();
    const link = el("a", { href: URL.createObjectURL(blob), download: `flow-usage-${$("start").value}-${$("end").value}.csv` });
    link.click();
    URL.revokeObjectURL(link.href);
  } catch (err) {
    showError(err.message);
  }
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("flow.operator", $("token").value.trim());
  $("token").value = "";
  load();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem("flow.operator");
  location.hash = "";
  location.reload();
});
$("period").addEventListener("submit", (e) => { e.preventDefault(); load(); });
for (const b of $("period").querySelectorAll("button[data-days]")) b.addEventListener("click", () => { setDays(Number(b.dataset.days)); load(); });
for (const b of $("key-tabs").querySelectorAll("button")) b.addEventListener("click", () => { state.group = b.dataset.group; showKey().catch((err) => showError(err.message)); });
$("csv").addEventListener("click", downloadCsv);
window.addEventListener("hashchange", () => route().catch((err) => showError(err.message)));
setDays(30);
load();
