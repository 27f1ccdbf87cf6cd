// The console's entry point: hash routing, the token form, the development notice.

import { ApiError, api, setToken, token } from "./api.js";
import { announce, errorBanner, h } from "./dom.js";
import { datasetPage, datasetsPage } from "./pages/datasets.js";
import { logPage } from "./pages/log.js";
import { logsPage } from "./pages/logs.js";
import { runPage } from "./pages/run.js";
import { settingsPage } from "./pages/settings.js";
import { tunedModelPage, tunedModelsPage } from "./pages/tuned_models.js";
import { usagePage } from "./pages/usage.js";

// Path patterns (`:name` is one segment) and the page each shows.
const ROUTES = [
  ["/logs", "logs", logsPage],
  ["/logs/:log", "logs", logPage],
  ["/datasets", "datasets", datasetsPage],
  ["/datasets/:dataset", "datasets", datasetPage],
  ["/datasets/:dataset/runs/:run", "datasets", runPage],
  ["/usage", "usage", usagePage],
  ["/tuned-models", "tuned-models", tunedModelsPage],
  ["/tuned-models/:model", "tuned-models", tunedModelPage],
  ["/settings", "settings", settingsPage],
];

function match(path) {
  const parts = path.split("/").filter(Boolean);
  for (const [pattern, section, page] of ROUTES) {
    const wanted = pattern.split("/").filter(Boolean);
    if (wanted.length !== parts.length) continue;
    const params = {};
    const fits = wanted.every((segment, i) => {
      if (segment.startsWith(":")) {
        params[segment.slice(1)] = decodeURIComponent(parts[i]);
        return true;
      }
      return segment === parts[i];
    });
    if (fits) return { pattern, section, page, params };
  }
  return null;
}

/** The current hash as {path, query}. */
export function location() {
  const hash = window.location.hash.replace(/^#/, "") || "/logs";
  const [path, search = ""] = hash.split("?");
  return { path, query: new URLSearchParams(search) };
}

/** Goes to `path` with `query` (an object; empty values left out). */
export function navigate(path, query) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  const hash = `#${path}${text ? `?${text}` : ""}`;
  if (window.location.hash !== hash) window.location.hash = hash;
}

let current = null; // {key, view, controller}

function render() {
  const { path, query } = location();
  const found = match(path);
  const main = document.getElementById("main");
  for (const link of document.querySelectorAll(".nav-list a")) {
    if (found && link.dataset.section === found.section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const key = found ? `${found.pattern}|${JSON.stringify(found.params)}` : path;
  if (current && current.key === key && current.view && current.view.update) {
    current.view.update(query);
    return;
  }
  if (current) {
    current.controller.abort();
    if (current.view && current.view.destroy) current.view.destroy();
  }
  const controller = new AbortController();
  main.replaceChildren();
  if (!found) {
    main.append(h("h1", null, "Not found"), h("p", null, "No page here. ", h("a", { href: "#/logs" }, "Go to the logs.")));
    current = { key, view: null, controller };
    return;
  }
  const context = { main, params: found.params, query, signal: controller.signal, navigate };
  let view = null;
  try {
    view = found.page(context) || null;
  } catch (caught) {
    main.append(errorBanner(caught));
  }
  current = { key, view, controller };
  const heading = main.querySelector("h1");
  document.title = `${heading ? heading.textContent : "Console"} · Gemini gateway`;
  main.focus({ preventScroll: true });
}

/** Re-runs the current page from scratch (after the token changes). */
function reload() {
  if (current) current.key = "";
  render();
}

function setUpAuth() {
  const form = document.getElementById("auth-form");
  const input = document.getElementById("auth-token");
  const state = document.getElementById("auth-state");
  const forget = document.getElementById("auth-forget");
  const show = () => {
    state.textContent = token() ? "Token in use for this tab" : "No token";
    forget.disabled = !token();
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    input.value = "";
    show();
    announce(token() ? "Token saved for this tab" : "Token cleared");
    checkMode();
    reload();
  });
  forget.addEventListener("click", () => {
    setToken("");
    show();
    announce("Token forgotten");
    checkMode();
    reload();
  });
  show();
}

/** Says on the page when the gateway runs without identities (development, loopback only). */
async function checkMode() {
  const notice = document.getElementById("dev-notice");
  const say = (text) => {
    notice.textContent = text;
    notice.hidden = !text;
  };
  let info = null;
  try {
    info = await api.consoleInfo();
  } catch {
    // No /console/info: without a token, an answered call means no identities are configured.
    if (!token()) {
      try {
        await api.getLoggingSettings();
        info = { development: true };
      } catch (error) {
        if (error instanceof ApiError && error.httpStatus === 401) {
          say("This gateway has identities configured: enter your access token above.");
          return;
        }
      }
    }
  }
  if (info && info.development) {
    const host = info.host ? ` (${info.host})` : "";
    say(
      "Development mode: no identities are configured, so every call belongs to the project " +
        `“${info.project || "default"}”, and the console is bound to loopback${host} only.`,
    );
  } else {
    say("");
  }
}

window.addEventListener("hashchange", render);
window.addEventListener("DOMContentLoaded", () => {
  if (!window.location.hash) history.replaceState(null, "", "#/logs");
  setUpAuth();
  checkMode();
  render();
});
