// Classify: an image and comma-separated labels -> a bar per label with its probability.
import { call } from "./api.js";
import { batchText, imagePicker, meta, modelTimeText, ms, setState, showError } from "./panel.js";

const $ = (id) => document.getElementById(id);

async function classify(picker) {
  showError("classify", "");
  const labels = $("classify-labels").value.split(",").map((l) => l.trim()).filter(Boolean);
  if (!picker.dataUrl) return showError("classify", "drop, pick or paste an image first");
  if (!labels.length) return showError("classify", "type at least one label");
  setState("classify", "busy");
  $("classify-send").disabled = true;
  const bars = $("classify-bars");
  const started = performance.now();
  try {
    const body = { model: $("classify-model").value || undefined, image: picker.dataUrl, labels };
    const response = await call("POST", "/classify", body);
    const reply = await response.json();
    bars.replaceChildren(...reply.scores.map((score) => bar(score, score.label === reply.label)));
    meta("classify", [
      reply.model,
      "answered in " + ms((performance.now() - started) / 1000),
      batchText(Number(response.headers.get("X-Raysight-Batch-Size"))),
      modelTimeText(response),
    ]);
    setState("classify", "done");
  } catch (error) {
    bars.replaceChildren();
    showError("classify", error.message);
  } finally {
    $("classify-send").disabled = false;
  }
}

function bar(score, top) {
  const item = document.createElement("li");
  item.className = "bar" + (top ? " top" : "");
  item.dataset.label = score.label;
  item.dataset.score = score.score;
  const percent = `${(score.score * 100).toFixed(1)}%`;
  const label = Object.assign(document.createElement("span"), { className: "label", textContent: score.label });
  const track = Object.assign(document.createElement("span"), { className: "track" });
  const fill = Object.assign(document.createElement("span"), { className: "fill" });
  fill.style.width = percent;
  track.append(fill);
  const value = Object.assign(document.createElement("span"), { className: "value", textContent: percent });
  item.append(label, track, value);
  return item;
}

export function mountClassify() {
  const picker = imagePicker("classify-picker");
  $("classify-form").addEventListener("submit", (event) => { event.preventDefault(); classify(picker); });
  return picker;
}
