// The demo page: plain JavaScript, no build step, nothing loaded from elsewhere.
// It talks to the same server's REST API (/v1/vocabularies, /v1/tag) with the key the
// person types, kept in this tab's sessionStorage.
"use strict";

const KEY_STORE = "ml2p-api-key";
const $ = (id) => document.getElementById(id);
const state = { file: null, retry: null };

// --- talking to the API -----------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body, headers) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "";
    this.field = error.field || "";
    this.retryAfter = headers.get("Retry-After");
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(0, { error: { code: "network", message: `(${err.message})` } },
                       new Headers());
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) throw new ApiError(response.status, body, response.headers);
  return body;
}

// What a person reads for each of the API's errors (the server's own message follows).
const EXPLAIN = {
  0: "The server could not be reached.",
  400: "The server could not read this file as an image.",
  401: "This server needs an API key.",
  404: "Not found.",
  413: "Too large for this server.",
  415: "The server does not take this kind of upload.",
  422: "The server refused the request.",
  429: "The server is busy.",
  503: "The server is not ready.",
  504: "The request took too long.",
};

function describe(err) {
  let text = `${EXPLAIN[err.status] || `Error ${err.status}.`} ${err.message}`;
  if (err.field) text += ` (field: ${err.field})`;
  if (err.status === 429 && err.retryAfter) text += ` Try again in ${err.retryAfter} s.`;
  return text;
}

function showProblem(text, status) {
  const box = $("error");
  box.textContent = text;
  box.dataset.status = status;
  box.hidden = false;
}

function showError(err) {
  showProblem(describe(err), String(err.status));
  if (err.status === 401) askForKey(err.message, state.retry);
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function askForKey(reason, retry) {
  const form = $("key-form");
  $("key-reason").textContent = sessionStorage.getItem(KEY_STORE)
    ? `The key was refused (${reason}). Type another.`
    : "This server needs an API key for its API.";
  form.hidden = false;
  form.onsubmit = (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key").value);
    form.hidden = true;
    clearError();
    if (retry) retry();
  };
  $("key").focus();
}

// --- what the server offers ------------------------------------------------------------
async function loadServer() {
  state.retry = loadServer;
  try {
    const vocabularies = await api("v1/vocabularies");
    const select = $("vocabulary");
    select.length = 1;  // keep "(the labels typed above)"
    for (const name of vocabularies.vocabularies) select.add(new Option(name, name));
    const model = (await api("v1/models")).models[0];
    $("model").textContent = `Model: ${model.name} ${model.version} (${model.engine}).`;
    const maps = $("maps");
    if (model.explain.available) {
      maps.max = String(model.explain.max_maps);
      $("maps-note").textContent = `At most ${model.explain.max_maps}; 0 for none.`;
    } else {
      // asked anyway, the server would answer 422 explain_unavailable
      maps.value = "0";
      maps.disabled = true;
      $("maps-note").textContent = `No maps from this model: ${model.explain.reason}.`;
    }
  } catch (err) {
    showError(err);
  }
}

// --- the image --------------------------------------------------------------------------
function pickFile(file) {
  if (!file) return;
  state.file = file;
  $("photo").hidden = false;
  $("overlay").hidden = true;
  const preview = $("preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  // a non-image still goes to the server, which says why it cannot read it
  preview.src = URL.createObjectURL(file);
  preview.alt = `the image being tagged: ${file.name}`;
}

function setUpDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => pickFile(event.target.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    pickFile(event.dataTransfer.files[0]);
  });
}

// --- tagging ----------------------------------------------------------------------------
function parseLabels(text) {
  return text.split(/[\n,]/).map((s) => s.trim()).filter((s) => s.length > 0);
}

function requestForm(explain) {
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  const vocabulary = $("vocabulary").value;
  if (vocabulary) form.append("vocabulary", vocabulary);
  else form.append("labels_json", JSON.stringify(parseLabels($("labels").value)));
  if ($("top-k").value) form.append("top_k", $("top-k").value);
  if (explain) {
    form.append("explain", "true");
    form.append("explain_top_k", $("maps").value);
  }
  return form;
}

async function tagImage() {
  state.retry = tagImage;
  clearError();
  if (!state.file) {
    showProblem("Choose an image first.", "");
    $("file").focus();
    return;
  }
  const explain = Number($("maps").value) > 0;
  $("submit").disabled = true;
  $("tags").replaceChildren();  // no answer about the previous image next to this one
  $("cost").replaceChildren();
  $("overlay").hidden = true;
  $("status").textContent = "Tagging…";
  try {
    const body = await api("v1/tag", { method: "POST", body: requestForm(explain) });
    showTags(body);
    showCost(body);
  } catch (err) {
    showError(err);
  } finally {
    $("status").textContent = "";
    $("submit").disabled = false;
  }
}

function percent(p) {
  return `${(100 * p).toFixed(1)} %`;
}

function showTags(body) {
  const list = $("tags");
  list.replaceChildren();
  list.dataset.request = body.request_id;
  for (const tag of body.tags) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tag";
    button.dataset.label = tag.label;
    button.dataset.score = String(tag.score);
    button.dataset.rank = String(tag.rank);
    if (tag.probability !== null) button.dataset.probability = String(tag.probability);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = tag.label;
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = tag.probability === null ? tag.score.toFixed(3) : percent(tag.probability);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = tag.probability === null ? "0" : percent(tag.probability).replace(" ", "");
    bar.append(fill);
    button.append(name, prob, bar);
    const show = () => showMap(tag, button);
    const hide = () => hideMap(button);
    button.addEventListener("mouseenter", show);
    button.addEventListener("focus", show);
    button.addEventListener("mouseleave", hide);
    button.addEventListener("blur", hide);
    item.append(button);
    list.append(item);
  }
  applyThreshold();
}

function applyThreshold() {
  const threshold = Number($("threshold").value);
  $("threshold-value").textContent = threshold.toFixed(2);
  let hidden = 0;
  for (const item of $("tags").children) {
    const p = item.firstChild.dataset.probability;
    item.hidden = p !== undefined && Number(p) < threshold;
    hidden += item.hidden;
  }
  $("tags-hint").textContent = `Ranked by score; the bar is the calibrated probability.` +
    (hidden ? ` ${hidden} below the threshold hidden.` : "");
}

function showCost(body) {
  const rows = [["model", `${body.model.name} ${body.model.version}`]];
  for (const [stage, ms] of Object.entries(body.timings_ms)) {
    rows.push([`${stage} (ms)`, Number(ms).toFixed(2)]);
  }
  for (const [part, gflops] of Object.entries(body.gflops)) {
    rows.push([`GFLOPs ${part}`, Number(gflops).toPrecision(4)]);
  }
  rows.push(["batch size", String(body.batch_size)]);
  const list = $("cost");
  list.replaceChildren();
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
}

// --- the relevance map overlay ----------------------------------------------------------
function showMap(tag, button) {
  for (const other of document.querySelectorAll(".tag.active")) other.classList.remove("active");
  button.classList.add("active");
  const canvas = $("overlay");
  const caption = $("map-caption");
  const map = tag.relevance;
  if (!map) {
    canvas.hidden = true;
    delete canvas.dataset.label;
    caption.textContent = $("maps").disabled ? `No map for "${tag.label}": this model has none.`
      : `No map for "${tag.label}": maps were asked for the first ${$("maps").value} tags only.`;
    return;
  }
  const { rows, cols, values } = map;
  let lo = Infinity, hi = -Infinity, best = 0;
  values.forEach((v, i) => {
    if (v < lo) lo = v;
    if (v > hi) { hi = v; best = i; }
  });
  const span = hi > lo ? hi - lo : 1;
  canvas.width = cols;
  canvas.height = rows;
  const context = canvas.getContext("2d");
  const image = context.createImageData(cols, rows);
  values.forEach((v, i) => {
    const t = (v - lo) / span;  // 0 at the grid's weakest position, 1 at its strongest
    image.data.set([255, Math.round(220 * (1 - t)), 0, Math.round(200 * t)], 4 * i);
  });
  context.putImageData(image, 0, 0);
  canvas.dataset.label = tag.label;
  canvas.hidden = false;
  const where = `row ${Math.floor(best / cols) + 1} of ${rows}, column ${best % cols + 1} of ${cols}`;
  // the evidence term has no position, so it is told apart rather than drawn
  const evidence = `; the ImageNet-evidence term, which has no position, gives ` +
    `${map.evidence.toFixed(3)} of the score ${tag.score.toFixed(3)}`;
  canvas.setAttribute("aria-label", `relevance map of "${tag.label}", strongest at ${where}`);
  caption.textContent = `"${tag.label}": strongest at ${where}${evidence}.`;
}

function hideMap(button) {
  // the pointer may leave one tag while the keyboard focus stays on another
  const focused = document.activeElement;
  if (focused && focused !== button && focused.classList.contains("tag")) return;
  button.classList.remove("active");
  $("overlay").hidden = true;
  delete $("overlay").dataset.label;
}

// --- start ------------------------------------------------------------------------------
setUpDrop();
$("tag-form").addEventListener("submit", (event) => { event.preventDefault(); tagImage(); });
$("threshold").addEventListener("input", applyThreshold);
loadServer();
