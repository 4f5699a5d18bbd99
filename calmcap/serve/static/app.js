// The page of `calmcap serve`: caption a dropped video, chart its class anchors, search the index.
// Plain browser JavaScript over the JSON API under /v1 (docs/SERVE.md); no framework, no build step.
"use strict";

const API = "/v1";
const $ = (id) => document.getElementById(id);

function setStatus(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

// Every API error is {"detail": "one line"}; anything else (a proxy's page) is reported by its status.
async function apiError(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return `${response.status}: ${body.detail}`;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function make(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

// ------------------------------------------------------------------------------------ the model

async function describeModel() {
  const line = $("model-line");
  try {
    const response = await fetch(`${API}/model`);
    if (!response.ok) throw new Error(await apiError(response));
    const info = await response.json();
    const d = info.decoding;
    const decoding = `beam ${d.num_beams}, up to ${d.max_length} tokens`;
    const index = info.index ? `${info.index.videos} indexed videos` : "no index";
    line.textContent = `${info.identity.name} (${info.architecture.num_frames} frames, ` +
      `${info.labels.length} anchors; ${decoding}); ${index}`;
    line.title = info.identity.path || "";
    if (!info.index) {
      $("search-query").disabled = true;
      $("search-button").disabled = true;
      setStatus($("search-status"), "This server has no index (start it with --index DIR).");
    }
  } catch (error) {
    setStatus(line, `cannot describe the model: ${error.message}`, true);
  }
}

// ------------------------------------------------------------------------------------ captioning

// The form fields the API takes (the options of `calmcap caption`); empty boxes are left out.
function decodingFields() {
  const fields = new FormData();
  const numbers = { "num-beams": "num_beams", "max-length": "max_length",
                    "num-return-sequences": "num_return_sequences" };
  for (const [id, name] of Object.entries(numbers)) {
    if ($(id).value !== "") fields.append(name, $(id).value);
  }
  if ($("sample").checked) {
    fields.append("sample", "true");
    for (const [id, name] of [["top-p", "top_p"], ["temperature", "temperature"], ["seed", "seed"]]) {
      if ($(id).value !== "") fields.append(name, $(id).value);
    }
  }
  return fields;
}

function showCaptions(answer) {
  const list = $("captions");
  list.replaceChildren();
  const beams = answer.beams || [{ caption: answer.caption, score: answer.score }];
  for (const beam of beams) {
    const item = make("li");
    item.append(make("span", "caption-text", beam.caption), make("span", "score", `score ${beam.score.toFixed(3)}`));
    list.append(item);
  }
  const frames = $("frames");
  frames.replaceChildren();
  (answer.frames || []).forEach((url, i) => {
    const image = make("img");
    image.src = url;
    image.alt = `frame ${i + 1} the model saw`;
    frames.append(image);
  });
}

// One column of bars per distribution; labels in both the video's and the caption's top k are bold.
function showChart(explanation) {
  const chart = $("chart");
  chart.replaceChildren();
  const shared = new Set(explanation.overlap);
  const series = [
    ["video", "the video (V_p)", explanation.video_anchors],
    ["predicted", "the caption, as the VAE predicts it from the video", explanation.predicted_caption_anchors],
    ["caption", `the ${explanation.caption_source} caption (S_p)`, explanation.caption_anchors],
  ];
  for (const [kind, title, values] of series) {
    if (!values) continue;
    const column = make("div", `series ${kind}`);
    column.append(make("h4", "", title));
    const top = Math.max(...values.map((v) => v.probability), 1e-9);
    for (const { label, probability } of values) {
      const row = make("div", shared.has(label) ? "bar-row shared" : "bar-row");
      row.dataset.label = label;
      row.dataset.probability = String(probability);
      const track = make("div", "track");
      const bar = make("div", "bar");
      bar.style.width = `${(100 * probability / top).toFixed(1)}%`;
      track.append(bar);
      row.append(make("span", "label", label), track, make("span", "value", `${(100 * probability).toFixed(1)}%`));
      row.title = `${label}: ${(100 * probability).toFixed(2)}%`;
      column.append(row);
    }
    chart.append(column);
  }
  $("overlap").textContent = explanation.overlap.length
    ? `In both top ${explanation.video_anchors.length}: ${explanation.overlap.join(", ")}`
    : `No label in both top ${explanation.video_anchors.length}.`;
}

async function captionFile(file) {
  const status = $("caption-status");
  $("caption-result").hidden = true;
  setStatus(status, `Captioning ${file.name}\u2026`);
  const form = decodingFields();
  form.append("frames", "true");
  form.append("file", file, file.name);
  try {
    const response = await fetch(`${API}/caption`, { method: "POST", body: form });
    if (!response.ok) throw new Error(await apiError(response));
    const answer = await response.json();
    $("video-name").textContent = answer.video;
    showCaptions(answer);
    $("caption-result").hidden = false;
    setStatus(status, "Explaining the caption\u2026");
    // The chart explains the caption shown above (given, not generated again).
    const explainForm = new FormData();
    explainForm.append("caption", answer.caption);
    explainForm.append("top_k", "10");
    explainForm.append("file", file, file.name);
    const explained = await fetch(`${API}/explain`, { method: "POST", body: explainForm });
    if (!explained.ok) throw new Error(await apiError(explained));
    showChart(await explained.json());
    setStatus(status, "");
  } catch (error) {
    setStatus(status, error.message, true);
  }
}

function setUpDropZone() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => { if (input.files.length) captionFile(input.files[0]); });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) captionFile(event.dataTransfer.files[0]);
  });
}

// ------------------------------------------------------------------------------------ search

async function search(event) {
  event.preventDefault();
  const status = $("search-status");
  const results = $("search-results");
  const query = $("search-query").value.trim();
  if (!query) return;
  setStatus(status, "Searching\u2026");
  results.replaceChildren();
  const params = new URLSearchParams({ q: query, top_k: $("search-top-k").value || "8" });
  try {
    const response = await fetch(`${API}/search?${params}`);
    if (!response.ok) throw new Error(await apiError(response));
    const answer = await response.json();
    for (const hit of answer.results) {
      const card = make("figure", "hit");
      card.style.margin = "0";
      const image = make("img");
      image.src = hit.frame_url;
      image.alt = `a frame of ${hit.video}`;
      image.loading = "lazy";
      const name = hit.video.split(/[\\/]/).pop();
      const meta = make("figcaption", "meta");
      meta.append(make("div", "name", `${hit.rank}. ${name}`), make("div", "muted", `score ${hit.score.toFixed(3)}`));
      meta.title = hit.video;
      card.append(image, meta);
      results.append(card);
    }
    setStatus(status, `${answer.results.length} videos for \u201c${answer.query}\u201d`);
  } catch (error) {
    setStatus(status, error.message, true);
  }
}

describeModel();
setUpDropZone();
$("search-form").addEventListener("submit", search);
