// Requests to the raysight API with the key typed on the page, and the API's error messages.
// The key lives in sessionStorage, so it goes away with the tab.

const KEY_STORAGE = "raysight-api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function showNotice(text) {
  const notice = document.getElementById("notice");
  notice.textContent = text;
  notice.hidden = !text;
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

// fetch() with the key; resolves to the response when it is 2xx, else throws an ApiError.
export async function call(method, path, body) {
  const headers = body ? { "Content-Type": "application/json" } : {};
  const key = apiKey();
  if (key) headers.Authorization = "Bearer " + key;
  const init = { method, headers };
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
