// raysight's try-it page: plain JavaScript modules over the HTTP API, no build step, nothing
// from another host. This one wires the tabs, the API key box and the model lists.
import { apiKey, call, setApiKey, showNotice } from "./api.js";
import { mountAsk } from "./ask.js";
import { mountClassify } from "./classify.js";
import { loadIndexes, mountSearch } from "./search.js";

const $ = (id) => document.getElementById(id);
const PANELS = ["ask", "search", "classify"];

async function loadModels() {
  let models;
  try {
    models = (await (await call("GET", "/v1/models")).json()).data;
  } catch (error) {
    if (error.status !== 401) showNotice("could not list the models: " + error.message);
    return;  // a 401's message is on the notice already
  }
  showNotice("");
  fillModels("ask-model", models, "generate");
  fillModels("classify-model", models, "embed");
}

function fillModels(selectId, models, task) {
  const select = $(selectId);
  const previous = select.value;
  // A model still loading is listed without its task: offer it everywhere.
  select.replaceChildren(...models.filter((m) => !m.task || m.task === task)
    .map((m) => new Option(m.id, m.id)));
  if (previous) select.value = previous;
}

function currentTab() {
  const name = location.hash.slice(1);
  return PANELS.includes(name) ? name : "ask";
}

function showTab(name) {
  for (const tab of document.querySelectorAll("[data-tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  }
  for (const panel of document.querySelectorAll("[data-panel]")) {
    panel.hidden = panel.dataset.panel !== name;
  }
}

const pickers = { ask: mountAsk(), search: mountSearch(), classify: mountClassify() };
document.addEventListener("paste", (event) => {
  const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) pickers[currentTab()].load(file);
});
for (const tab of document.querySelectorAll("[data-tab]")) {
  tab.addEventListener("click", () => { location.hash = tab.dataset.tab; });
}
window.addEventListener("hashchange", () => showTab(currentTab()));
showTab(currentTab());

$("api-key").value = apiKey();
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("api-key").value.trim());
  loadModels();
  loadIndexes();
});
loadModels();
loadIndexes();
