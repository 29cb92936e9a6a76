// Search: a phrase or an image -> the nearest images of an index, as thumbnails with scores.
import { call } from "./api.js";
import { batchText, imagePicker, meta, modelTimeText, ms, setState, showError } from "./panel.js";

const $ = (id) => document.getElementById(id);
const thumbnails = [];

export async function loadIndexes() {
  try {
    const { indexes } = await (await call("GET", "/search/indexes")).json();
    $("search-index").replaceChildren(...indexes.map((i) => new Option(`${i.name} (${i.size})`, i.name)));
    $("search-index-label").hidden = indexes.length < 2;
    if (!indexes.length) meta("search", ["no index is served: start the server with --index FOLDER"]);
  } catch (_) {
    // a 401 is already on the notice; /search will say the rest
  }
}

function basename(id) {
  return id.split("/").pop();
}

async function search(picker) {
  const text = $("search-text").value.trim();
  showError("search", "");
  if (!text && !picker.dataUrl) return showError("search", "type a phrase or drop an image first");
  const body = { k: Number($("search-k").value) || 8 };
  if (text) body.text = text; else body.image = picker.dataUrl;
  if (!$("search-index-label").hidden) body.index = $("search-index").value;
  setState("search", "busy");
  $("search-send").disabled = true;
  const list = $("search-results");
  const started = performance.now();
  try {
    const response = await call("POST", "/search", body);
    const reply = await response.json();
    const answered = (performance.now() - started) / 1000;
    thumbnails.splice(0).forEach((url) => URL.revokeObjectURL(url));
    list.replaceChildren(...reply.results.map((hit, rank) => resultItem(hit, rank)));
    // Thumbnails need the API key too, so they are fetched here and shown as blob: URLs.
    await Promise.all(reply.results.map((hit, rank) => showThumbnail(reply.index, hit, list.children[rank])));
    meta("search", [
      reply.model,
      `${reply.results.length} results from ${reply.index} by ${text ? "text" : "image"}`,
      "answered in " + ms(answered),
      "thumbnails shown in " + ms((performance.now() - started) / 1000),
      batchText(Number(response.headers.get("X-Raysight-Batch-Size"))),
      modelTimeText(response),
    ]);
    setState("search", "done");
  } catch (error) {
    list.replaceChildren();
    showError("search", error.message);
  } finally {
    $("search-send").disabled = false;
  }
}

function resultItem(hit, rank) {
  const item = document.createElement("li");
  item.className = "hit";
  item.dataset.id = hit.id;
  item.dataset.score = hit.score;
  item.title = hit.id;
  const image = document.createElement("img");
  image.alt = basename(hit.id);
  const caption = document.createElement("span");
  caption.textContent = `${rank + 1}. ${hit.score.toFixed(3)} ${basename(hit.id)}`;
  item.append(image, caption);
  return item;
}

async function showThumbnail(index, hit, item) {
  const query = new URLSearchParams({ index, id: hit.id, size: "160" });
  try {
    const response = await call("GET", "/search/image?" + query);
    const url = URL.createObjectURL(await response.blob());
    thumbnails.push(url);
    item.querySelector("img").src = url;
  } catch (error) {
    item.classList.add("no-image");
    item.querySelector("img").replaceWith(Object.assign(document.createElement("p"), {
      className: "thumb-error", textContent: error.message,
    }));
  }
}

export function mountSearch() {
  const picker = imagePicker("search-picker");
  $("search-form").addEventListener("submit", (event) => { event.preventDefault(); search(picker); });
  return picker;
}
