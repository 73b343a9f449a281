// Talk to your bot: the browser's microphone goes to a Flow bot over WebRTC, its voice
// comes back, and the call's running usage and cost are read from GET /api/bot/{id}
// while it runs. The API key stays in this tab (sessionStorage); nothing loads from a CDN.
// ?raw=1 turns the browser's echo cancellation, noise suppression and gain control off
// (for recorded speech played as the microphone).
"use strict";

const $ = (id) => document.getElementById(id);
const ICE_GATHERING_MS = 3000;
const POLL_MS = 1000;
const FINISHED = ["completed", "failed"];
const state = { pc: null, mic: null, callId: null, timer: null };

const usd = (v) => {
  const n = Number(v || 0);
  return "$" + (n >= 1 ? n.toFixed(2) : n.toFixed(n >= 0.01 ? 4 : 6));
};
const int = (v) => Number(v || 0).toLocaleString("en-US");

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function setStatus(text) {
  $("status").textContent = text;
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem("flow.key");
  const resp = await fetch(path, {
    ...options,
    headers: { Authorization: "Bearer " + key, "Content-Type": "application/json" },
  });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.message || resp.statusText || "request failed");
  return body;
}

function gathered(pc) {
  // The answer must carry our candidates: wait for gathering (bounded).
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ICE_GATHERING_MS);
  });
}

function renderUsage(call) {
  const u = call.usage_stats || {};
  $("cost").textContent = usd(u.total_cost_usd);
  $("cost").dataset.value = u.total_cost_usd || "0";
  $("tokens").textContent = int(u.total_tokens);
  $("chars").textContent = int(u.tts_characters);
  $("seconds").textContent = Number(u.stt_seconds || 0).toFixed(3);
  $("seconds").dataset.value = u.stt_seconds || "0";
  const rows = [
    ["During the call", u.bot_cost_usd],
    ["Insights", u.insights_cost_usd],
  ];
  for (const [model, m] of Object.entries(u.models_used || {})) {
    rows.push([`  ${model} (${int(m.calls)} requests)`, m.cost_usd]);
  }
  $("by-category").replaceChildren(
    ...rows.map(([label, cost]) => {
      const tr = document.createElement("tr");
      for (const text of [label, usd(cost)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }),
  );
  const turns = Array.isArray(call.transcript) ? call.transcript : [];
  $("turns").replaceChildren(
    ...turns.map((t) => {
      const li = document.createElement("li");
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = t.role === "assistant" ? "bot" : "you";
      li.append(role, document.createTextNode(t.content + (t.interrupted ? " [interrupted]" : "")));
      return li;
    }),
  );
}

async function poll() {
  if (!state.callId) return;
  try {
    const call = await api(`/api/bot/${state.callId}`);
    renderUsage(call);
    setStatus(call.status);
    if (FINISHED.includes(call.status)) {
      clearInterval(state.timer);
      state.timer = null;
      const error = call.error ? ` (${call.error.code}: ${call.error.message})` : "";
      $("final").textContent = `Call ${call.status}${error}. Total: ${usd(call.usage_stats.total_cost_usd)}`;
      $("final").dataset.value = call.usage_stats.total_cost_usd || "0";
      $("final").hidden = false;
      $("call").disabled = false;
    }
  } catch (err) {
    showError(err.message);
  }
}

async function startCall() {
  $("error").hidden = true;
  $("final").hidden = true;
  $("call").disabled = true;
  setStatus("connecting");
  const raw = new URLSearchParams(location.search).get("raw") === "1";
  try {
    state.mic = await navigator.mediaDevices.getUserMedia({
      audio: raw ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false } : true,
    });
    const pc = new RTCPeerConnection();
    state.pc = pc;
    for (const track of state.mic.getAudioTracks()) pc.addTrack(track, state.mic);
    pc.ontrack = (event) => {
      $("bot-audio").srcObject = event.streams[0] || new MediaStream([event.track]);
    };
    pc.onconnectionstatechange = () => {
      if (["failed", "closed"].includes(pc.connectionState)) hangUp();
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const botConfig = {};
    if ($("prompt").value.trim()) botConfig.system_prompt = $("prompt").value.trim();
    if ($("greeting").value !== "") botConfig.greeting = $("greeting").value;
    const joined = await api("/api/bot/join", {
      method: "POST",
      body: JSON.stringify({
        transport: "webrtc",
        webrtc_offer: { sdp: pc.localDescription.sdp, type: "offer" },
        bot_config: botConfig,
      }),
    });
    state.callId = joined.workflow_thread_id;
    $("call-id").textContent = state.callId;
    await pc.setRemoteDescription(joined.webrtc_answer);
    $("hangup").disabled = false;
    setStatus("connected");
    state.timer = setInterval(poll, POLL_MS);
  } catch (err) {
    showError(err.message || String(err));
    hangUp();
    $("call").disabled = false;
  }
}

function hangUp() {
  // Closing the peer connection is the hang-up: the bot ends the call gracefully, its
  // usage is flushed and the final bill shows once the call is processed.
  $("hangup").disabled = true;
  if (state.pc) state.pc.close();
  if (state.mic) state.mic.getTracks().forEach((t) => t.stop());
  state.pc = null;
  state.mic = null;
  if (state.callId && !state.timer) state.timer = setInterval(poll, POLL_MS);
  setStatus("hanging up");
}

function signedIn() {
  $("content").hidden = false;
  $("logout").hidden = false;
  $("key").hidden = true;
  $("signin").hidden = true;
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem("flow.key", $("key").value.trim());
  try {
    await api("/api/usage?group_by=kind");
    $("error").hidden = true;
    signedIn();
  } catch (err) {
    sessionStorage.removeItem("flow.key");
    showError(err.message);
  }
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem("flow.key");
  location.reload();
});
$("call").addEventListener("click", startCall);
$("hangup").addEventListener("click", hangUp);
if (sessionStorage.getItem("flow.key")) signedIn();
