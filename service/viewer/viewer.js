// The before/after viewer: sends the user's files to the real POST /refine (or /segment)
// with include_coarse=true, then draws the coarse and refined outlines the server returned
// over the image, pixel-exact at any zoom. No second code path: every mask shown is one the
// API answered (ground truth, which the API never sees, is decoded here).

import { decodeSegmentation, idPng, maskIoU, paintMask } from "./masks.js";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

const files = { image: null, instances: null, gt: null };
let shown = null;  // the current result: {bitmap, width, height, answer, coarse, refined, gt, rows, layers}
let mode = "after", selected = -1;
const view = { scale: 1, tx: 0, ty: 0 };

// ------------------------------------------------------------------ status and errors

function setState(s) { document.body.dataset.state = s; }

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
  setState("error");
}

function clearError() { $("error").hidden = true; $("error").textContent = ""; }

async function apiError(res) {
  // the service's errors are {"detail", "code"}: the detail is shown as the server wrote it
  let detail = `${res.status} ${res.statusText}`, code = "";
  try {
    const body = await res.json();
    if (typeof body.detail === "string") detail = body.detail;
    else if (body.detail !== undefined) detail = JSON.stringify(body.detail);
    code = body.code || "";
  } catch { /* not JSON: keep the status line */ }
  return `${detail}\n(HTTP ${res.status}${code ? ", " + code : ""})`;
}

function apiHeaders() {
  const key = $("api-key").value;
  return key ? { "X-API-Key": key } : {};
}

// ------------------------------------------------------------------ inputs

function setFile(kind, file) {
  files[kind] = file;
  $(`${kind}-name`).textContent = file ? `${file.name} (${Math.ceil(file.size / 1024)} KB)` : "";
}

for (const [kind, input] of [["image", "image-file"], ["instances", "instances-file"], ["gt", "gt-file"]]) {
  $(input).addEventListener("change", () => setFile(kind, $(input).files[0] || null));
}

for (const zone of document.querySelectorAll(".drop")) {
  const kind = { "image-file": "image", "instances-file": "instances", "gt-file": "gt" }[zone.dataset.for];
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) setFile(kind, e.dataTransfer.files[0]);
  });
}
// a file dropped beside the zones must not replace the page
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

function stem(name) { return name.replace(/\.[^.]*$/, ""); }
function baseName(name) { return String(name).split(/[\\/]/).pop(); }

async function readJson(file) {
  try {
    return JSON.parse(await file.text());
  } catch {
    return undefined;
  }
}

/** The COCO image id of the picked image: from a ground-truth file's `images` (by file
 * name), else a numeric file name (COCO's 000000139.jpg); null when neither says. */
function imageIdFromName(gtJson, imageName) {
  const name = baseName(imageName);
  if (gtJson && Array.isArray(gtJson.images)) {
    const hit = gtJson.images.find((im) => baseName(im.file_name) === name);
    if (hit) return hit.id;
  }
  return /^\d+$/.test(stem(name)) ? Number(stem(name)) : null;
}

/** Entries of this image from a results list that may hold many images. */
function entriesOfImage(entries, imageId, what) {
  const ids = new Set(entries.map((e) => e && e.image_id).filter((v) => v !== undefined));
  if (ids.size <= 1) return entries;
  if (imageId === null) {
    throw new Error(`${what}: the file holds entries of ${ids.size} images; drop the ground-truth JSON too ` +
      "(its 'images' name this one) or a file of this image only");
  }
  const mine = entries.filter((e) => e && e.image_id === imageId);
  if (!mine.length) throw new Error(`${what}: no entries with image_id ${imageId} (the picked image)`);
  return mine;
}

/** The `instances` form part: a PNG or unreadable JSON goes as given (the server's message
 * says what is wrong); a results file of many images is cut to the picked one. */
async function instancesPart(gtJson) {
  const file = files.instances;
  const head = new Uint8Array(await file.slice(0, 8).arrayBuffer());
  if (head[0] === 0x89 && head[1] === 0x50) return file;
  const parsed = await readJson(file);
  if (!Array.isArray(parsed)) return file;
  const mine = entriesOfImage(parsed, imageIdFromName(gtJson, files.image.name), "instances");
  return mine === parsed ? file : new File([JSON.stringify(mine)], file.name, { type: "application/json" });
}

/** Ground-truth masks of the picked image, or null without a file. */
function groundTruth(gtJson, height, width) {
  if (!files.gt) return null;
  if (gtJson === undefined) throw new Error("ground truth: not a JSON file");
  let entries;
  if (Array.isArray(gtJson)) entries = entriesOfImage(gtJson, imageIdFromName(null, files.image.name), "ground truth");
  else if (gtJson && Array.isArray(gtJson.annotations)) {
    let id = imageIdFromName(gtJson, files.image.name);
    if (id === null && Array.isArray(gtJson.images) && gtJson.images.length === 1) id = gtJson.images[0].id;
    if (id === null) throw new Error(`ground truth: no image named ${baseName(files.image.name)} in its 'images'`);
    entries = gtJson.annotations.filter((a) => a.image_id === id);
  } else throw new Error("ground truth: expected a COCO file ({images, annotations}) or a list of entries");
  return entries.filter((a) => !a.iscrowd).map((a, i) => {
    try {
      return decodeSegmentation(a.segmentation, height, width);
    } catch (err) {
      throw new Error(`ground truth: entry ${i}: ${err.message}`);
    }
  });
}

// ------------------------------------------------------------------ the request

function queryString() {
  const q = new URLSearchParams({ include_coarse: "true" });
  const nms = $("nms-iou").value.trim(), passes = $("iterations").value, tta = $("flip-tta").value;
  if (nms) q.set("nms_iou", nms);
  if (passes) q.set("iterations", passes);
  if (tta) q.set("flip_tta", tta);
  return q.toString();
}

function serverTiming(header) {
  const stages = {};
  for (const part of (header || "").split(",")) {
    const m = part.trim().match(/^([\w-]+);dur=([\d.]+)$/);
    if (m) stages[m[1]] = Number(m[2]);
  }
  return stages;
}

async function run(event) {
  event.preventDefault();
  clearError();
  const detector = document.querySelector("input[name=source]:checked").value === "detector";
  if (!files.image) return showError("pick an image first");
  if (!detector && !files.instances) return showError("pick an instances file, or choose 'run the detector'");
  setState("busy");
  $("run").disabled = true;
  try {
    const gtJson = files.gt ? await readJson(files.gt) : null;
    const form = new FormData();
    form.append("image", files.image, files.image.name);
    if (!detector) form.append("instances", await instancesPart(gtJson));
    const url = `${detector ? "/segment" : "/refine"}?${queryString()}`;
    const sent = performance.now();
    let res;
    try {
      res = await fetch(url, { method: "POST", body: form, headers: apiHeaders() });
    } catch (err) {
      return showError(`could not reach the server: ${err.message}`);
    }
    if (!res.ok) {
      const message = await apiError(res);
      if (res.status === 401) $("api-key").focus();
      return showError(message);
    }
    const answer = await res.json();
    const roundTrip = performance.now() - sent;
    const drawStart = performance.now();
    await show(answer, gtJson);
    const drawn = performance.now() - drawStart;
    const stages = serverTiming(res.headers.get("Server-Timing"));
    const server = Object.entries(stages).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ");
    $("timing").textContent = `server: ${server} ms · ${res.headers.get("X-BPR-Patches")} patches, ` +
      `${res.headers.get("X-BPR-Passes")} pass(es) · round trip ${roundTrip.toFixed(0)} ms · ` +
      `drawn in ${drawn.toFixed(0)} ms · ${answer.instances.length} instances`;
    $("download-json").disabled = $("download-png").disabled = false;
    setState("done");
  } catch (err) {
    showError(err.message);
  } finally {
    $("run").disabled = false;
  }
}

// ------------------------------------------------------------------ decoding and layers

function colourOf(k) {
  const h = (k * 137.508) % 360, s = 0.9, l = 0.55;  // golden-angle hues: neighbours differ
  const f = (n) => {
    const a = (n + h / 30) % 12;
    return Math.round(255 * (l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(a - 3, 9 - a, 1))));
  };
  return [f(0), f(8), f(4)];
}

function packed([r, g, b]) { return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; }  // RGBA bytes, little-endian

function layer(width, height, masks) {
  const outline = new ImageData(width, height), fill = new ImageData(width, height);
  const o32 = new Uint32Array(outline.data.buffer), f32 = new Uint32Array(fill.data.buffer);
  masks.forEach((m, k) => paintMask(m, width, height, packed(colourOf(k)), o32, f32));
  const toCanvas = (data) => {
    const c = new OffscreenCanvas(width, height);
    c.getContext("2d").putImageData(data, 0, 0);
    return c;
  };
  return { outline: toCanvas(outline), fill: toCanvas(fill) };
}

function decodeAll(entries, height, width) {
  return entries.map((e) => decodeSegmentation(e.segmentation, height, width));
}

async function show(answer, gtJson) {
  const bitmap = await createImageBitmap(files.image, { imageOrientation: "from-image" }).catch(() => {
    throw new Error("the browser cannot display this image format (the server read it; try a JPEG or PNG)");
  });
  const { width, height } = bitmap;
  const refined = decodeAll(answer.instances, height, width);
  const coarse = decodeAll(answer.coarse || answer.instances, height, width);
  const gt = groundTruth(gtJson, height, width);
  const rows = refined.map((r, i) => {
    const c = coarse[i], entry = answer.instances[i];
    const row = { index: i, id: entry.id ?? entry.category_id ?? "", coarseArea: c.area, area: r.area, iou: maskIoU(c, r) };
    if (gt && gt.length) {
      const best = gt.reduce((b, g) => { const v = maskIoU(c, g); return v > b.v ? { g, v } : b; }, { g: null, v: -1 });
      row.gtCoarse = best.v;
      row.gtRefined = maskIoU(r, best.g);
    }
    return row;
  });
  rows.sort((a, b) => a.iou - b.iou || a.index - b.index);  // most changed first
  shown = { bitmap, width, height, answer, coarse, refined, gt, rows,
    before: layer(width, height, coarse), after: layer(width, height, refined) };
  selected = -1;
  renderRows();
  fit();
}

// ------------------------------------------------------------------ the instance list

function pct(v) { return `${(100 * v).toFixed(1)}`; }

function renderRows() {
  const body = $("rows");
  body.replaceChildren();
  for (const row of shown.rows) {
    const tr = document.createElement("tr");
    tr.dataset.index = row.index;
    const change = row.coarseArea ? row.area / row.coarseArea - 1 : 0;
    const [r, g, b] = colourOf(row.index);
    const cells = [
      String(row.index + 1), String(row.id), `${row.coarseArea}→${row.area} ${change >= 0 ? "+" : ""}${pct(change)}%`,
      pct(row.iou), row.gtCoarse === undefined ? "" : `${pct(row.gtCoarse)}→${pct(row.gtRefined)}`,
    ];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 0) {
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = `rgb(${r},${g},${b})`;
        td.append(sw);
      }
      td.append(text);
      tr.append(td);
    });
    tr.addEventListener("click", () => select(row.index));
    body.append(tr);
  }
}

function select(index) {
  selected = index;
  for (const tr of $("rows").children) tr.classList.toggle("selected", Number(tr.dataset.index) === index);
  const boxes = [shown.coarse[index], shown.refined[index]].filter((m) => m.area);
  if (!boxes.length) return draw();
  const x0 = Math.min(...boxes.map((m) => m.x0)), y0 = Math.min(...boxes.map((m) => m.y0));
  const x1 = Math.max(...boxes.map((m) => m.x0 + m.w)), y1 = Math.max(...boxes.map((m) => m.y0 + m.h));
  zoomTo(x0, y0, x1 - x0, y1 - y0);
}

// ------------------------------------------------------------------ drawing, zoom, pan

function sizeCanvas() {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * dpr), h = Math.round(canvas.clientHeight * dpr);
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
}

let pending = false;
function draw() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; paint(); });
}

function drawLayer(l, alpha) {
  const fill = Number($("fill").value) / 100;
  if (fill > 0) { ctx.globalAlpha = fill * alpha; ctx.drawImage(l.fill, 0, 0); }
  ctx.globalAlpha = alpha;
  ctx.drawImage(l.outline, 0, 0);
  ctx.globalAlpha = 1;
}

/** Draw now (draw() batches to one per frame; tests call this for a known state). */
function paint() {
  sizeCanvas();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  $("zoom").textContent = `${(view.scale * 100).toFixed(0)}%`;
  if (!shown) return;
  ctx.setTransform(view.scale, 0, 0, view.scale, view.tx, view.ty);
  ctx.imageSmoothingEnabled = view.scale < 1;  // from 1:1 up, image pixels stay square
  ctx.drawImage(shown.bitmap, 0, 0);
  ctx.imageSmoothingEnabled = false;  // outlines are one image pixel wide at every zoom
  if (mode === "before") drawLayer(shown.before, 1);
  else if (mode === "after") drawLayer(shown.after, 1);
  else if (mode === "both") { drawLayer(shown.before, 0.5); drawLayer(shown.after, 1); }
  else {
    const split = (canvas.width * Number($("wipe").value)) / 100;
    const splitX = (split - view.tx) / view.scale;  // in image pixels
    ctx.save();
    ctx.beginPath(); ctx.rect(0, 0, splitX, shown.height); ctx.clip();
    drawLayer(shown.before, 1);
    ctx.restore();
    ctx.save();
    ctx.beginPath(); ctx.rect(splitX, 0, shown.width - splitX, shown.height); ctx.clip();
    drawLayer(shown.after, 1);
    ctx.restore();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(Math.round(split), 0, 1, canvas.height);
    ctx.setTransform(view.scale, 0, 0, view.scale, view.tx, view.ty);
  }
  if (selected >= 0) {
    const m = shown.refined[selected].area ? shown.refined[selected] : shown.coarse[selected];
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 2 / view.scale;
    ctx.strokeRect(m.x0 - 2, m.y0 - 2, m.w + 4, m.h + 4);
  }
}

function setView(scale, tx, ty) {
  view.scale = Math.min(64, Math.max(0.02, scale));
  view.tx = tx;
  view.ty = ty;
  draw();
}

function fit() {
  if (!shown) return;
  sizeCanvas();
  const s = Math.min(canvas.width / shown.width, canvas.height / shown.height);
  setView(s, (canvas.width - s * shown.width) / 2, (canvas.height - s * shown.height) / 2);
}

function zoomTo(x, y, w, h) {
  sizeCanvas();
  const s = Math.min(16, 0.8 * Math.min(canvas.width / Math.max(w, 1), canvas.height / Math.max(h, 1)));
  setView(s, canvas.width / 2 - s * (x + w / 2), canvas.height / 2 - s * (y + h / 2));
}

/** Zoom by `factor` keeping the image point under canvas pixel (cx, cy) where it is. */
function zoomAt(factor, cx, cy) {
  const s = Math.min(64, Math.max(0.02, view.scale * factor)), f = s / view.scale;
  setView(s, cx - (cx - view.tx) * f, cy - (cy - view.ty) * f);
}

function canvasPoint(e) {
  const r = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  return [(e.clientX - r.left) * dpr, (e.clientY - r.top) * dpr];
}

canvas.addEventListener("wheel", (e) => {
  e.preventDefault();
  const [x, y] = canvasPoint(e);
  zoomAt(Math.exp(-e.deltaY * 0.0015), x, y);
}, { passive: false });

let drag = null;
canvas.addEventListener("pointerdown", (e) => {
  drag = { x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty };
  canvas.setPointerCapture(e.pointerId);
  canvas.classList.add("panning");
});
canvas.addEventListener("pointermove", (e) => {
  if (!drag) return;
  const dpr = window.devicePixelRatio || 1;
  setView(view.scale, drag.tx + (e.clientX - drag.x) * dpr, drag.ty + (e.clientY - drag.y) * dpr);
});
canvas.addEventListener("pointerup", () => { drag = null; canvas.classList.remove("panning"); });
canvas.addEventListener("dblclick", (e) => { const [x, y] = canvasPoint(e); zoomAt(2, x, y); });

function setMode(m) {
  mode = m;
  for (const b of document.querySelectorAll(".modes button")) b.classList.toggle("on", b.dataset.mode === m);
  draw();
}

for (const b of document.querySelectorAll(".modes button")) b.addEventListener("click", () => setMode(b.dataset.mode));
$("wipe").addEventListener("input", () => { if (mode !== "wipe") setMode("wipe"); else draw(); });
$("fill").addEventListener("input", draw);
$("fit").addEventListener("click", fit);
window.addEventListener("resize", draw);
window.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  if (e.key === "b" || e.key === "B") setMode(mode === "before" ? "after" : "before");
  else if (e.key === "0") fit();
  else if (e.key === "+" || e.key === "=") zoomAt(1.5, canvas.width / 2, canvas.height / 2);
  else if (e.key === "-") zoomAt(1 / 1.5, canvas.width / 2, canvas.height / 2);
});

// ------------------------------------------------------------------ downloads

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

$("download-json").addEventListener("click", () => {
  // the API's instances as it sent them: a COCO results list, ready for bpr-eval
  save(new Blob([JSON.stringify(shown.answer.instances)], { type: "application/json" }),
    `${stem(files.image.name)}.refined.json`);
});
$("download-png").addEventListener("click", async () => {
  save(await idPng(shown.refined, shown.height, shown.width), `${stem(files.image.name)}.refined.png`);
});

// ------------------------------------------------------------------ start

$("api-key").value = sessionStorage.getItem("bpr-api-key") || "";
$("api-key").addEventListener("change", () => { sessionStorage.setItem("bpr-api-key", $("api-key").value); checkDetector(); });
$("inputs").addEventListener("submit", run);
document.querySelector("form.key").addEventListener("submit", (e) => e.preventDefault());

/** Grey out "run the detector" when the server says it has none. */
async function checkDetector() {
  try {
    const res = await fetch("/v1/models", { headers: apiHeaders() });
    if (!res.ok) return;
    const info = await res.json();
    const radio = $("source-detector");
    radio.disabled = info.detector === null;
    radio.parentElement.title = radio.disabled ? "this server has no detector configured (BPR_DETECTOR)" : "";
  } catch { /* the request itself will report an unreachable server */ }
}

checkDetector();
setState("idle");
window.bprViewer = { view, setView, setMode, paint, fit, select, get shown() { return shown; } };
