// What the three panels share: their state (data-state: idle / busy / done / error, which the
// browser tests wait on), error box, meta line, and image pickers.

const $ = (id) => document.getElementById(id);

export function ms(seconds) {
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

export function setState(panel, state) {
  $("panel-" + panel).dataset.state = state;
}

export function showError(panel, message) {
  const box = $(panel + "-error");
  box.textContent = message || "";
  box.hidden = !message;
  if (message) setState(panel, "error");
}

// The line under an answer: model, latency, batch size (empty parts are left out).
export function meta(panel, parts) {
  $(panel + "-meta").textContent = parts.filter(Boolean).join(" · ");
}

export function batchText(size) {
  return size ? `batch size ${size}` : "";
}

// The model's own share of an answer, from its Server-Timing header ("queue;dur=1.2;...,
// model;dur=5.9;...", in ms): how long the batch it ran in took on the model.
export function modelTimeText(response) {
  const found = /(?:^|,)\s*model;dur=([\d.]+)/.exec(response.headers.get("Server-Timing") || "");
  return found ? `${ms(Number(found[1]) / 1000)} on the model` : "";
}

// Holds an image dropped, picked or pasted, as a data: URL (the form every image route takes).
export function imagePicker(id, onChange) {
  const root = $(id);
  const input = root.querySelector("input[type=file]");
  const preview = root.querySelector("img.preview");
  const hint = root.querySelector(".hint");
  const picker = { dataUrl: null, name: null };

  picker.load = (file) => {
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => {
      picker.dataUrl = reader.result;
      picker.name = file.name || "pasted image";
      preview.hidden = false;
      preview.src = picker.dataUrl;
      hint.textContent = picker.name;
      if (onChange) onChange(picker);
    };
    reader.onerror = () => { hint.textContent = "could not read " + file.name; };
    reader.readAsDataURL(file);
  };
  // A file the browser cannot show may still go to the server, which says what is wrong.
  preview.onerror = () => {
    if (!picker.dataUrl) return;
    preview.hidden = true;
    hint.textContent = `${picker.name}: this browser cannot show it`;
  };
  input.addEventListener("change", () => picker.load(input.files[0]));
  root.addEventListener("dragover", (event) => { event.preventDefault(); root.classList.add("over"); });
  root.addEventListener("dragleave", () => root.classList.remove("over"));
  root.addEventListener("drop", (event) => {
    event.preventDefault();
    root.classList.remove("over");
    picker.load(event.dataTransfer.files[0]);
  });
  return picker;
}
