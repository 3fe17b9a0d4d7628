// tinysam-edge browser UI: upload an image, click / drag prompts, draw the masks the API returns. No build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("view");
const ctx = canvas.getContext("2d");
const COLOURS = [[30, 144, 255], [255, 99, 71], [60, 179, 113], [238, 130, 238], [255, 215, 0], [0, 206, 209], [244, 164, 96], [147, 112, 219]];
const ui = { image: null, imageId: null, points: [], labels: [], box: null, drag: null, masks: [], records: [], name: "image" };

function setStatus(text, state, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
  if (state) document.body.dataset.state = state;
}

async function api(path, options = {}) {
  const key = $("api-key").value;
  const headers = Object.assign({}, options.headers || {}, key ? { Authorization: "Bearer " + key } : {});
  const reply = await fetch(path, Object.assign({}, options, { headers }));
  const body = await reply.json().catch(() => ({ error: reply.statusText }));
  if (!reply.ok) throw new Error(`${reply.status}: ${body.error || reply.statusText}`);
  return body;
}

// COCO compressed RLE (pycocotools' string form) -> Uint8Array of h*w in row-major order.
function decodeRle(rle) {
  const [h, w] = rle.size;
  const s = rle.counts;
  const counts = [];
  for (let p = 0; p < s.length; ) {
    let x = 0, k = 0, more = 1, c = 0;
    while (more) {
      c = s.charCodeAt(p++) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const mask = new Uint8Array(h * w);
  let i = 0;
  counts.forEach((run, j) => {
    if (j % 2) for (let r = i; r < i + run; r++) mask[(r % h) * w + Math.floor(r / h)] = 1;
    i += run;
  });
  return mask;
}

function draw() {
  if (!ui.image) return;
  ctx.drawImage(ui.image, 0, 0);
  if (ui.masks.length) {
    const frame = ctx.getImageData(0, 0, canvas.width, canvas.height);
    ui.masks.forEach((mask, m) => {
      const [r, g, b] = COLOURS[m % COLOURS.length];
      for (let i = 0; i < mask.length; i++) {
        if (!mask[i]) continue;
        const o = 4 * i;
        frame.data[o] = (frame.data[o] + r) >> 1;
        frame.data[o + 1] = (frame.data[o + 1] + g) >> 1;
        frame.data[o + 2] = (frame.data[o + 2] + b) >> 1;
      }
    });
    ctx.putImageData(frame, 0, 0);
  }
  const box = ui.drag && ui.drag.moved ? ui.drag.box : ui.box;
  if (box) {
    ctx.strokeStyle = "#00ff00";
    ctx.lineWidth = 2;
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  ui.points.forEach(([x, y], i) => {
    ctx.fillStyle = ui.labels[i] ? "#00c853" : "#d50000";
    ctx.beginPath();
    ctx.arc(x, y, 4, 0, 2 * Math.PI);
    ctx.fill();
  });
}

function showResult(records, text) {
  ui.records = records;
  ui.masks = records.map((r) => decodeRle(r.segmentation));
  $("scores").textContent = text;
  ["download-png", "download-json"].forEach((id) => ($(id).disabled = records.length === 0));
  draw();
}

async function upload(file) {
  setStatus("Uploading and embedding…", "busy");
  try {
    const image = await createImageBitmap(file, { imageOrientation: "from-image" });
    const form = new FormData();
    form.append("image", file);
    const reply = await api("/v1/images", { method: "POST", body: form });
    Object.assign(ui, { image, imageId: reply.image_id, points: [], labels: [], box: null, name: file.name.replace(/\.[^.]*$/, "") });
    canvas.width = reply.width;
    canvas.height = reply.height;
    document.body.dataset.imageId = reply.image_id;
    ["clear", "everything"].forEach((id) => ($(id).disabled = false));
    showResult([], "");
    setStatus(`Image ${reply.width}x${reply.height}, encoder ${reply.timings_ms.encoder} ms. Click or drag on it.`, "ready");
  } catch (err) {
    setStatus(`Upload failed: ${err.message}`, "error", true);
  }
}

async function predict() {
  if (!ui.points.length && !ui.box) return showResult([], "");
  setStatus("Decoding…", "busy");
  const prompt = { points: ui.points, labels: ui.labels, box: ui.box, multimask_output: false };
  document.body.dataset.prompt = JSON.stringify(prompt);
  try {
    const reply = await api(`/v1/images/${ui.imageId}/predict`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(prompt) });
    const m = reply.masks[0];
    showResult(reply.masks, `score ${m.score.toFixed(3)}, area ${m.area} px`);
    setStatus(`Decoder ${reply.timings_ms.decoder} ms.`, "mask");
  } catch (err) {
    setStatus(`Predict failed: ${err.message}`, "error", true);
  }
}

async function everything() {
  setStatus("Segmenting everything (this takes a while)…", "busy");
  try {
    const reply = await api(`/v1/images/${ui.imageId}/everything`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    Object.assign(ui, { points: [], labels: [], box: null });
    showResult(reply.masks, `${reply.masks.length} masks`);
    setStatus(`Everything: ${reply.masks.length} masks.`, "mask");
  } catch (err) {
    setStatus(`Everything failed: ${err.message}`, "error", true);
  }
}

function imageXY(event) {
  const rect = canvas.getBoundingClientRect();
  return [(event.clientX - rect.left) * (canvas.width / rect.width), (event.clientY - rect.top) * (canvas.height / rect.height)];
}

canvas.addEventListener("contextmenu", (event) => event.preventDefault());
canvas.addEventListener("mousedown", (event) => {
  if (!ui.imageId) return;
  const start = imageXY(event);
  ui.drag = { start, box: null, moved: false, negative: event.button === 2 || event.shiftKey || $("negative").checked };
});
canvas.addEventListener("mousemove", (event) => {
  if (!ui.drag) return;
  const [x, y] = imageXY(event);
  const [x0, y0] = ui.drag.start;
  ui.drag.moved = ui.drag.moved || Math.hypot(x - x0, y - y0) > 5;
  ui.drag.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)].map((v, i) => Math.max(0, Math.min(v, i % 2 ? canvas.height : canvas.width)));
  if (ui.drag.moved) draw();
});
window.addEventListener("mouseup", (event) => {
  if (!ui.drag) return;
  const drag = ui.drag;
  ui.drag = null;
  if (drag.moved) {
    ui.box = drag.box.map(Math.round);
  } else if (event.target === canvas) {
    ui.points.push(imageXY(event).map(Math.round));
    ui.labels.push(drag.negative ? 0 : 1);
  } else {
    return draw();
  }
  draw();
  predict();
});

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

$("file").addEventListener("change", (event) => event.target.files[0] && upload(event.target.files[0]));
$("clear").addEventListener("click", () => {
  Object.assign(ui, { points: [], labels: [], box: null });
  showResult([], "");
});
$("everything").addEventListener("click", everything);
$("download-png").addEventListener("click", () => {
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  const octx = out.getContext("2d");
  const frame = octx.createImageData(out.width, out.height);
  ui.masks.forEach((mask, m) => mask.forEach((v, i) => v && frame.data.fill(ui.masks.length > 1 ? m + 1 : 255, 4 * i, 4 * i + 3)));
  for (let i = 3; i < frame.data.length; i += 4) frame.data[i] = 255;
  octx.putImageData(frame, 0, 0);
  out.toBlob((blob) => download(blob, `${ui.name}_masks.png`), "image/png");
});
$("download-json").addEventListener("click", () => {
  const coco = ui.records.map((r, i) => ({ id: i + 1, image_id: 1, category_id: 1, iscrowd: 0, ...r }));
  download(new Blob([JSON.stringify(coco)], { type: "application/json" }), `${ui.name}_masks.json`);
});

// Live source (serve --source): poll the newest annotated frame; clicks become persistent prompts.
const live = { points: [], labels: [], url: null };

async function pollLive() {
  const key = $("api-key").value;
  try {
    const reply = await fetch("/v1/live/frame.jpg", { headers: key ? { Authorization: "Bearer " + key } : {} });
    if (reply.ok) {
      const url = URL.createObjectURL(await reply.blob());
      $("live").src = url;
      if (live.url) URL.revokeObjectURL(live.url);
      live.url = url;
      $("live-status").textContent = `frame ${reply.headers.get("X-Frame-Number")}`;
    }
  } catch (err) {
    $("live-status").textContent = err.message;
  }
  setTimeout(pollLive, 100);
}

async function sendLivePrompts() {
  const body = live.points.length ? { points: live.points, labels: live.labels } : {};
  try {
    await api("/v1/live/prompts", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  } catch (err) {
    $("live-status").textContent = `Prompt refused: ${err.message}`;
  }
}

$("live").addEventListener("contextmenu", (event) => event.preventDefault());
$("live").addEventListener("mouseup", (event) => {
  const img = $("live");
  const rect = img.getBoundingClientRect();
  live.points.push([Math.round((event.clientX - rect.left) * (img.naturalWidth / rect.width)), Math.round((event.clientY - rect.top) * (img.naturalHeight / rect.height))]);
  live.labels.push(event.button === 2 || event.shiftKey || $("negative").checked ? 0 : 1);
  sendLivePrompts();
});
$("live-clear").addEventListener("click", () => {
  Object.assign(live, { points: [], labels: [] });
  sendLivePrompts();
});
fetch("/v1/live").then((reply) => {
  if (reply.status === 404) return;
  $("live-section").hidden = false;
  pollLive();
});
