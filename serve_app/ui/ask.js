// Ask: chat about an image, the answer streamed from /v1/chat/completions; follow-ups keep
// the conversation and the image.
import { ApiError, call } from "./api.js";
import { batchText, imagePicker, meta, ms, setState, showError } from "./panel.js";

const $ = (id) => document.getElementById(id);
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
  const messages = conversation.concat([{ role: "user", content: first ? parts : prompt }]);
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
    conversation.push(messages[messages.length - 1], { role: "assistant", content: answer.textContent });
    meta("ask", [
      last && last.model,
      firstPiece !== null ? "first words " + ms((firstPiece - started) / 1000) : "",
      "complete in " + ms((performance.now() - started) / 1000),
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

// Wires the panel; returns its image picker (paste goes to the picker of the open panel).
export function mountAsk() {
  // A new image starts a new conversation: the old answers were about the old image.
  const picker = imagePicker("ask-picker", () => newConversation());
  $("ask-form").addEventListener("submit", (event) => { event.preventDefault(); ask(picker); });
  $("ask-prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); ask(picker); }
  });
  $("ask-new").addEventListener("click", newConversation);
  return picker;
}
