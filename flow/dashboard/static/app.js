// Flow usage dashboard: signs in with an API key (kept in this tab only) and draws the
// figures of GET /api/dashboard with Chart.js (served locally, no CDN); every call of
// the key, paged and filtered, opens its drill-down (calls.js). Times are UTC.
"use strict";

const $ = (id) => document.getElementById(id);
const charts = {};
// Models get these colours in the cost chart; kinds have their own (FlowCalls.kindColour).
const palette = ["#1f3b8f", "#b5651d", "#1b6f65", "#a2273c", "#5d3a9b", "#4d5656", "#9a7d0a", "#0e6655"];
const { usd, int, utc } = FlowCalls;
let callList = null;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("content").hidden = true;
}

async function api(path) {
  const key = sessionStorage.getItem("flow.key");
  const resp = await fetch(path, { headers: { Authorization: "Bearer " + key } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    throw new Error(body.message || resp.statusText || "request failed");
  }
  return body;
}

function draw(id, config) {
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart($(id), config);
}

function render(data) {
  const t = data.totals;
  $("kpi-cost").textContent = usd(t.cost_usd);
  $("kpi-cost").dataset.value = t.cost_usd;
  $("kpi-calls").textContent = int(t.calls);
  $("kpi-per-call").textContent = t.avg_cost_per_call_usd === null ? "—" : usd(t.avg_cost_per_call_usd);
  $("kpi-per-user").textContent = t.avg_cost_per_end_user_usd === null ? "—" : usd(t.avg_cost_per_end_user_usd);
  $("kpi-latency").textContent = t.llm_latency_p50_ms === null ? "—"
    : `${Math.round(t.llm_latency_p50_ms)} / ${Math.round(t.llm_latency_p95_ms)} ms`;
  $("kpi-latency").title = `over the period's ${int(t.latency_sample)} most recent LLM inferences (at most 10,000)`;
  $("kpi-errors").textContent = t.error_rate === null ? "—" : (Number(t.error_rate) * 100).toFixed(2) + "%";
  $("kpi-tokens").textContent = int(t.tokens);
  $("kpi-unpriced").textContent = int(t.unpriced_events);
  $("kpi-phone").textContent = (Number(t.telephony_seconds || 0) / 60).toFixed(1);
  $("kpi-phone").title = `${t.telephony_seconds || 0} s of phone call legs (each billed per started minute)`;

  const days = [...new Set(data.volume_by_day.map((r) => r.day))];
  const models = [...new Set(data.cost_by_day_model.map((r) => r.model))];
  draw("chart-cost", {
    type: "bar",
    data: {
      labels: days,
      datasets: models.map((m, i) => ({
        label: m,
        backgroundColor: palette[i % palette.length],
        data: days.map((d) => Number((data.cost_by_day_model.find((r) => r.day === d && r.model === m) || {}).cost_usd || 0)),
      })),
    },
    options: { responsive: true, animation: false, scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: "USD" } } } },
  });
  draw("chart-volume", {
    type: "line",
    data: {
      labels: days,
      datasets: [
        { label: "tokens", yAxisID: "y", borderColor: palette[0], backgroundColor: palette[0], data: data.volume_by_day.map((r) => r.tokens) },
        { label: "TTS characters", yAxisID: "y1", borderColor: palette[1], backgroundColor: palette[1], data: data.volume_by_day.map((r) => r.tts_characters) },
      ],
    },
    options: { responsive: true, animation: false, scales: { y: { position: "left" }, y1: { position: "right", grid: { drawOnChartArea: false } } } },
  });
  const kinds = FlowCalls.sortKinds(Object.keys(data.cost_by_kind));
  draw("chart-kind", {
    type: "doughnut",
    data: {
      labels: kinds.map(FlowCalls.kindLabel),
      datasets: [{ data: kinds.map((k) => Number(data.cost_by_kind[k])), backgroundColor: kinds.map(FlowCalls.kindColour) }],
    },
    options: { responsive: true, animation: false },
  });
  $("category-split").textContent = Object.entries(data.cost_by_category)
    .map(([c, v]) => `${c} ${usd(v)}`).join(" · ");

  const tbody = $("top-calls").querySelector("tbody");
  tbody.replaceChildren();
  for (const call of data.top_calls) {
    const tr = document.createElement("tr");
    const link = document.createElement("a");
    link.href = "#call/" + call.workflow_thread_id;
    link.textContent = call.workflow_thread_id.slice(0, 8);
    link.title = call.workflow_thread_id;
    const cells = [link, utc(call.created_at), call.end_user_id || "—", call.status, int(call.tokens), usd(call.cost_usd)];
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  $("error").hidden = true;
  $("content").hidden = false;
  $("logout").hidden = false;
  document.body.dataset.loaded = "true";
}

async function load() {
  if (!sessionStorage.getItem("flow.key")) return;
  try {
    render(await api("/api/dashboard?days=" + encodeURIComponent($("days").value)));
    if (!callList) callList = new FlowCalls.CallList($("calls"), api, "/api/bot");
    await callList.load();
    await showDetail();
  } catch (err) {
    showError(err.message);
  }
}

async function showDetail() {
  const m = location.hash.match(/^#call\/([0-9a-f-]{36})$/);
  if (!m) { $("detail").hidden = true; return; }
  const [thread, usage] = await Promise.all([api("/api/bot/" + m[1]), api(`/api/bot/${m[1]}/usage`)]);
  $("detail-id").textContent = m[1];
  FlowCalls.renderCall($("detail-body"), thread, usage.events);
  $("detail").hidden = false;
  $("detail").scrollIntoView();
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("flow.key", $("key").value.trim());
  $("key").value = "";
  load();
});
$("days").addEventListener("change", load);
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem("flow.key");
  location.hash = "";
  location.reload();
});
window.addEventListener("hashchange", () => showDetail().catch((err) => showError(err.message)));
load();
