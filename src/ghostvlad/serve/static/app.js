// The ghostvlad page: record or upload clips, enrol / identify / verify through the HTTP API, and a live
// "who is speaking" view over the WebSocket. Plain JavaScript, no build step.
"use strict";

const RATE = 16000;                     // what the model takes; the browser resamples the microphone
const SEND_SAMPLES = 1600;              // 0.1 s of audio per WebSocket message
const $ = (id) => document.getElementById(id);
const clips = { a: null, b: null };     // Blob of each slot (a recorded WAV or a chosen file)

// -- talking to the server ---------------------------------------------------------------------------
const tokenInput = $("token");
tokenInput.value = sessionStorage.getItem("ghostvlad-token") || "";
tokenInput.addEventListener("change", () => { sessionStorage.setItem("ghostvlad-token", tokenInput.value.trim()); refresh(); });

async function api(method, path, body) {
  const headers = {};
  const token = tokenInput.value.trim();
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { method, body, headers });
  const data = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(data.detail || `${response.status} ${response.statusText}`);
  return data;
}

function show(message, ok, details) {
  const result = $("result");
  result.textContent = message;
  result.className = ok ? "ok" : "error";
  $("details").textContent = details || "";
}

async function run(action) {
  show("working…", true);
  try {
    await action();
  } catch (error) {
    show(error.message, false);
  }
}

async function refresh() {
  try {
    const health = await api("GET", "healthz");
    $("status").textContent = `model ${health.model}` + (health.gallery ? "" : " (no gallery: enrol and identify are off)");
    const list = $("speakers");
    list.replaceChildren();
    if (!health.gallery) return;
    for (const speaker of (await api("GET", "v1/speakers")).speakers) {
      const item = document.createElement("li");
      item.textContent = `${speaker.name} (${speaker.utterances} recording${speaker.utterances === 1 ? "" : "s"})`;
      const remove = document.createElement("button");
      remove.textContent = "remove";
      remove.addEventListener("click", () => run(async () => {
        const removed = await api("DELETE", "v1/speakers/" + encodeURIComponent(speaker.name));
        show(`removed ${removed.name} (${removed.removed} recordings)`, true);
        await refresh();
      }));
      item.append(remove);
      list.append(item);
    }
  } catch (error) {
    $("status").textContent = error.message;
  }
}

// -- microphone ----------------------------------------------------------------------------------------
async function openMicrophone(onSamples) {
  const stream = await navigator.mediaDevices.getUserMedia(
    { audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const context = new AudioContext({ sampleRate: RATE });
  await context.audioWorklet.addModule("static/capture.js");
  const node = new AudioWorkletNode(context, "capture");
  node.port.onmessage = (event) => onSamples(event.data);
  context.createMediaStreamSource(stream).connect(node);
  node.connect(context.destination);    // keeps the graph running; the node outputs silence
  await context.resume();
  return {
    rate: context.sampleRate,
    close() { stream.getTracks().forEach((t) => t.stop()); context.close(); },
  };
}

function wavBlob(chunks, rate) {
  const n = chunks.reduce((sum, c) => sum + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (at, s) => [...s].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * n, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, 2 * n, true);
  let at = 44;
  for (const chunk of chunks) for (const x of chunk) { view.setInt16(at, Math.max(-1, Math.min(1, x)) * 32767, true); at += 2; }
  return new Blob([view], { type: "audio/wav" });
}

function setClip(slot, blob, label) {
  clips[slot] = blob;
  $(`clip-${slot}`).textContent = label;
  const player = $(`play-${slot}`);
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
}

for (const slot of ["a", "b"]) {
  let recording = null;
  const button = $(`record-${slot}`);
  button.addEventListener("click", () => run(async () => {
    if (recording) {                    // stop
      const { mic, chunks } = recording;
      recording = null;
      mic.close();
      button.textContent = "Record";
      button.classList.remove("recording");
      const seconds = chunks.reduce((sum, c) => sum + c.length, 0) / mic.rate;
      setClip(slot, wavBlob(chunks, mic.rate), `recorded ${seconds.toFixed(1)} s`);
      show(`recording ${slot.toUpperCase()} ready (${seconds.toFixed(1)} s)`, true);
      return;
    }
    const chunks = [];
    recording = { chunks, mic: await openMicrophone((samples) => chunks.push(samples)) };
    button.textContent = "Stop";
    button.classList.add("recording");
    show(`recording ${slot.toUpperCase()}… press Stop when done`, true);
  }));
  $(`file-${slot}`).addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) setClip(slot, file, file.name);
  });
}

function need(slot) {
  if (!clips[slot]) throw new Error(`record or choose recording ${slot.toUpperCase()} first`);
  return clips[slot];
}

function fileName(slot) {
  return clips[slot].name || `recording-${slot}.wav`;
}

// -- enrol, identify, verify ------------------------------------------------------------------------
$("enrol").addEventListener("click", () => run(async () => {
  const form = new FormData();
  form.append("name", $("name").value.trim());
  form.append("file", need("a"), fileName("a"));
  const done = await api("POST", "v1/enroll", form);
  show(`enrolled ${done.name}: ${done.utterances} recording${done.utterances === 1 ? "" : "s"} in all; ` +
       `${done.speakers} speaker${done.speakers === 1 ? "" : "s"} in the gallery`, true);
  await refresh();
}));

function pointText(point) {
  return point ? `${point.name}, threshold ${point.threshold.toFixed(3)}` : "no threshold known";
}

$("identify").addEventListener("click", () => run(async () => {
  const form = new FormData();
  form.append("file", need("a"), fileName("a"));
  const found = await api("POST", "v1/identify", form);
  const best = found.matches[0];
  const verdict = found.identified ? `identified: ${found.identified}`
    : best.accepted === false ? `unknown speaker (best match ${best.name})` : `best match: ${best.name}`;
  show(`${verdict} (score ${best.score.toFixed(3)}; ${pointText(found.operating_point)})`, true,
       found.matches.map((m, i) => `${i + 1}. ${m.name}  ${m.score.toFixed(4)}`).join("\n"));
}));

$("verify").addEventListener("click", () => run(async () => {
  const form = new FormData();
  form.append("a", need("a"), fileName("a"));
  form.append("b", need("b"), fileName("b"));
  const v = await api("POST", "v1/verify", form);
  const verdict = { same: "same speaker", different: "different speakers" }[v.decision] || "score";
  const llr = v.llr === null ? "" : `; LLR ${v.llr.toFixed(2)}, P(same) ${v.p_same.toFixed(3)}`;
  show(`${verdict}: ${v.score.toFixed(3)} (${pointText(v.operating_point)}${llr})`, true);
}));

// -- live: who is speaking ---------------------------------------------------------------------------
let live = null;

function streamUrl(rate) {
  const url = new URL("v1/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("sample_rate", rate);
  return url.href;
}

function stopLive(message) {
  if (!live) return;
  const { socket, mic } = live;
  live = null;
  mic.close();
  if (socket && socket.readyState <= WebSocket.OPEN) socket.close();
  $("live-start").disabled = false;
  $("live-stop").disabled = $("live-reset").disabled = true;
  if (message) show(message, false);
}

function showLive(update) {
  const best = update.matches[0];
  let who = "(no speakers enrolled)", note = "";
  if (update.embedding === null) {
    who = "listening…";
  } else if (best) {
    who = best.accepted === false ? "unknown" : best.name;
    note = (best.accepted === false ? `closest ${best.name}, ` : "") + `score ${best.score.toFixed(3)}` +
           (best.accepted === null ? " (no threshold known)" : "");
  }
  $("live-speaker").textContent = who;
  $("live-score").textContent = note;
  $("live-seconds").textContent = `${update.seconds.toFixed(1)} s heard`;
}

$("live-start").addEventListener("click", () => run(async () => {
  $("live-start").disabled = true;
  let pending = [], count = 0;
  const mic = await openMicrophone((samples) => {   // 16-bit PCM to the server every SEND_SAMPLES samples
    pending.push(samples);
    count += samples.length;
    const socket = live && live.socket;
    if (count < SEND_SAMPLES || !socket || socket.readyState !== WebSocket.OPEN) return;
    const pcm = new Int16Array(count);
    let at = 0;
    for (const chunk of pending) for (const x of chunk) pcm[at++] = Math.max(-1, Math.min(1, x)) * 32767;
    socket.send(pcm.buffer);
    pending = [];
    count = 0;
  });
  const socket = new WebSocket(streamUrl(mic.rate));
  live = { socket: null, mic };
  socket.addEventListener("message", (event) => {
    const update = JSON.parse(event.data);
    if (update.error) stopLive(update.error);
    else showLive(update);
  });
  socket.addEventListener("close", (event) => stopLive(event.code === 1000 || event.code === 1005 ? ""
                                                       : `live view closed: ${event.reason || event.code}`));
  await new Promise((resolve, reject) => {
    socket.addEventListener("open", resolve, { once: true });
    socket.addEventListener("error", () => reject(new Error("cannot open the live stream")), { once: true });
  });
  const token = tokenInput.value.trim();
  if (token) socket.send(JSON.stringify({ token }));
  live.socket = socket;
  $("live-stop").disabled = $("live-reset").disabled = false;
  show("live: listening", true);
}));

$("live-reset").addEventListener("click", () => {
  if (live && live.socket) live.socket.send(JSON.stringify({ reset: true }));
});
$("live-stop").addEventListener("click", () => stopLive(""));

refresh();
