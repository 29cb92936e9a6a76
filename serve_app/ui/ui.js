// raysight's try-it page: plain JavaScript over the HTTP API, no build step, no other host.
// Every request carries the API key typed on the page (kept in sessionStorage, so it goes
// away with the tab). Each panel sets data-state to busy / done / error, which the browser
// tests wait on.
"use strict";

(() => {
  const KEY_STORAGE = "raysight-api-key";
  const $ = (id) => document.getElementById(id);

  // --- API key and requests -------------------------------------------------------------

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function headers(extra) {
    const result = Object.assign({}, extra);
    const key = apiKey();
    if (key) result.Authorization = "Bearer " + key;
    return result;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // The message of the API's error shapes: {"error": {"message"}} or /predict's {"error": "..."}.
  async function errorOf(response) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      const error = body && body.error;
      message = typeof error === "string" ? error : (error && error.message) || message;
    } catch (_) {
      // not JSON (a proxy's page): keep the status line
    }
    if (response.status === 401) {
      message += apiKey() ? " (the key typed above was refused)" : " (type the key in the API key box above)";
      showNotice(message);
    }
    return new ApiError(response.status, message);
  }

  async function call(method, path, body) {
    const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
    if (body) init.body = JSON.stringify(body);
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, "the server did not answer (" + error.message + ")");
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  function showNotice(text) {
    const notice = $("notice");
    notice.textContent = text;
    notice.hidden = !text;
  }

  // --- small helpers --------------------------------------------------------------------

  function ms(seconds) {
    return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
  }

  function setState(panel, state) {
    $("panel-" + panel).dataset.state = state;
  }

  function showError(panel, message) {
    const box = $(panel + "-error");
    box.textContent = message || "";
    box.hidden = !message;
    if (message) setState(panel, "error");
  }

  function meta(panel, parts) {
    $(panel + "-meta").textContent = parts.filter(Boolean).join(" · ");
  }

  function batchText(size) {
    return size ? `batch size ${size}` : "";
  }

  // --- image pickers: drop, pick or paste -----------------------------------------------

  // Holds the image as a data: URL, the form every image route accepts.
  function imagePicker(id, onChange) {
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
    picker.clear = () => {
      picker.dataUrl = null;
      picker.name = null;
      preview.hidden = true;
      preview.removeAttribute("src");
      input.value = "";
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

  // --- models ---------------------------------------------------------------------------

  async function loadModels() {
    let models;
    try {
      models = (await (await call("GET", "/v1/models")).json()).data;
    } catch (error) {
      if (error.status !== 401) showNotice("could not list the models: " + error.message);
      return;
    }
    showNotice("");
    fillModels("ask-model", models, "generate");
    fillModels("classify-model", models, "embed");
  }

  function fillModels(selectId, models, task) {
    const select = $(selectId);
    const previous = select.value;
    select.replaceChildren();
    // A model still loading is listed without its task: offer it everywhere.
    for (const model of models.filter((m) => !m.task || m.task === task)) {
      select.append(new Option(model.id, model.id));
    }
    if (previous) select.value = previous;
  }

  // --- Ask ------------------------------------------------------------------------------

  const conversation = [];

  function addTurn(role, text) {
    const item = document.createElement("li");
    item.className = "turn " + role;
    item.textContent = text;
    $("ask-log").append(item);
    return item;
  }

  function newConversation() {
    conversation.length = 0;
    $("ask-log").replaceChildren();
    meta("ask", []);
    showError("ask", "");
    setState("ask", "idle");
  }

  // Reads OpenAI chat.completion.chunk events; calls onText per piece; returns the last chunk.
  async function readEvents(response, onText) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let last = null;
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return last;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new ApiError(200, chunk.error.message || String(chunk.error));
          const choice = chunk.choices && chunk.choices[0];
          if (choice && choice.delta && choice.delta.content) onText(choice.delta.content);
          last = chunk;
        }
      }
      if (done) return last;
    }
  }

  async function ask(picker) {
    const prompt = $("ask-prompt").value.trim();
    showError("ask", "");
    const first = conversation.length === 0;
    if (first && !picker.dataUrl) return showError("ask", "drop, pick or paste an image first");
    if (!first && !prompt) return showError("ask", "type a follow-up question");
    // The image rides on the first turn (alone, it asks for a caption); follow-ups are text
    // and keep the image through the conversation.
    const parts = [{ type: "image_url", image_url: { url: picker.dataUrl } }];
    if (prompt) parts.push({ type: "text", text: prompt });
    const content = first ? parts : prompt;
    const messages = conversation.concat([{ role: "user", content }]);
    const model = $("ask-model").value || undefined;
    setState("ask", "busy");
    $("ask-send").disabled = true;
    const question = addTurn("user", prompt || "(no question: a caption, please)");
    const answer = addTurn("assistant", "");
    answer.classList.add("streaming");
    const started = performance.now();
    let firstPiece = null;
    try {
      const response = await call("POST", "/v1/chat/completions", { model, messages, stream: true });
      const last = await readEvents(response, (piece) => {
        if (firstPiece === null) firstPiece = performance.now();
        answer.textContent += piece;
      });
      const total = (performance.now() - started) / 1000;
      conversation.push(messages[messages.length - 1], { role: "assistant", content: answer.textContent });
      meta("ask", [
        last && last.model,
        firstPiece !== null ? "first words " + ms((firstPiece - started) / 1000) : "",
        "complete in " + ms(total),
        batchText(last && last.raysight && last.raysight.batch_size),
      ]);
      $("ask-prompt").value = "";
      setState("ask", "done");
    } catch (error) {
      question.remove();
      answer.remove();
      showError("ask", error.message);
    } finally {
      answer.classList.remove("streaming");
      $("ask-send").disabled = false;
    }
  }

  // --- Search ---------------------------------------------------------------------------

  const thumbnails = [];

  async function loadIndexes() {
    try {
      const { indexes } = await (await call("GET", "/search/indexes")).json();
      const select = $("search-index");
      select.replaceChildren(...indexes.map((i) => new Option(`${i.name} (${i.size})`, i.name)));
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

  // --- Classify -------------------------------------------------------------------------

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
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = score.label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(score.score * 100).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(score.score * 100).toFixed(1)}%`;
    item.append(label, track, value);
    return item;
  }

  // --- tabs and wiring ------------------------------------------------------------------

  function showTab(name) {
    for (const tab of document.querySelectorAll("[data-tab]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
    }
    for (const panel of document.querySelectorAll("[data-panel]")) {
      panel.hidden = panel.dataset.panel !== name;
    }
  }

  function currentTab() {
    const name = location.hash.slice(1);
    return ["ask", "search", "classify"].includes(name) ? name : "ask";
  }

  document.addEventListener("DOMContentLoaded", () => {
    const pickers = {
      // A new image starts a new conversation: the old answers were about the old image.
      ask: imagePicker("ask-picker", () => newConversation()),
      search: imagePicker("search-picker"),
      classify: imagePicker("classify-picker"),
    };
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
      sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
      loadModels();
      loadIndexes();
    });
    $("ask-form").addEventListener("submit", (event) => { event.preventDefault(); ask(pickers.ask); });
    $("ask-prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); ask(pickers.ask); }
    });
    $("ask-new").addEventListener("click", newConversation);
    $("search-form").addEventListener("submit", (event) => { event.preventDefault(); search(pickers.search); });
    $("classify-form").addEventListener("submit", (event) => { event.preventDefault(); classify(pickers.classify); });
    loadModels();
    loadIndexes();
  });
})();
