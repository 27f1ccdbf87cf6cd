// The project's logging settings (on/off, limit, retention, policy at the limit) and state.

import { api } from "../api.js";
import { announce, errorBanner, field, fill, h } from "../dom.js";
import { seconds, showInt, showTime } from "../format.js";

const DAY_S = 86_400;

function fact(label, value) {
  return h("div", { class: "fact" }, h("dt", null, label), h("dd", null, value));
}

export function settingsPage({ main, signal }) {
  const enabled = h("input", { type: "checkbox", name: "enabled", id: "logging-enabled" });
  const maxLogs = h("input", { type: "number", name: "maxLogs", min: 1, step: 1, required: true });
  const retention = h("input", { type: "number", name: "retentionDays", min: 0.01, step: "any", required: true });
  const atLimit = h(
    "select",
    { name: "atLimit" },
    h("option", { value: "STOP_LOGGING" }, "Stop logging (as AI Studio)"),
    h("option", { value: "EVICT_OLDEST" }, "Evict the oldest logs not in a dataset"),
  );
  const save = h("button", { type: "submit", class: "primary" }, "Save settings");
  const status = h("div", { role: "status", "aria-live": "polite" });
  const state = h("div");
  const form = h(
    "form",
    { "aria-label": "Logging settings" },
    h("p", null, h("label", { class: "check switch" }, enabled, "Log generate calls of this project")),
    h(
      "div",
      { class: "form-grid" },
      field("Most logs kept", maxLogs),
      field("Retention (days)", retention, "Older logs are deleted unless they belong to a dataset."),
      field("At the limit", atLimit),
    ),
    h("div", { class: "toolbar" }, save),
    status,
  );
  fill(
    main,
    h("h1", null, "Logging settings"),
    h("p", { class: "muted" }, "Changes apply to the next call, with no restart."),
    form,
    h("h2", null, "State"),
    state,
  );

  function show(settings) {
    enabled.checked = Boolean(settings.enabled);
    maxLogs.value = settings.maxLogs ?? "";
    const retentionS = seconds(settings.retention);
    retention.value = retentionS === null ? "" : String(Math.round((retentionS / DAY_S) * 100) / 100);
    atLimit.value = settings.atLimit === "EVICT_OLDEST" ? "EVICT_OLDEST" : "STOP_LOGGING";
    fill(
      state,
      settings.limitReached || settings.notice
        ? h("div", { class: "banner", role: "alert" }, h("p", null, settings.notice || "The log limit is reached: new calls are not logged."), h("p", null, h("a", { href: "#/logs" }, "Delete logs on the logs page.")))
        : null,
      h(
        "dl",
        { class: "facts" },
        fact("Logging", settings.enabled ? "on" : "off"),
        fact("Logs kept", `${showInt(settings.logCount)} of ${showInt(settings.maxLogs)}`),
        fact("Skipped at the limit", showInt(settings.skippedAtLimitCount)),
        fact("Skipped (video, GIF, PDF)", showInt(settings.skippedMediaCount)),
        fact("Evicted", showInt(settings.evictedCount)),
        fact("Expired", showInt(settings.expiredCount)),
        fact("Last changed", settings.updateTime ? showTime(settings.updateTime) : "configured defaults"),
      ),
    );
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    save.disabled = true;
    status.replaceChildren();
    try {
      const days = Number(retention.value);
      const settings = await api.updateLoggingSettings({
        enabled: enabled.checked,
        maxLogs: Math.round(Number(maxLogs.value)),
        retention: `${Math.round(days * DAY_S)}s`,
        atLimit: atLimit.value,
      });
      show(settings);
      fill(status, h("p", { class: "banner ok" }, `Saved: logging is ${settings.enabled ? "on" : "off"}.`));
      announce(`Settings saved; logging is ${settings.enabled ? "on" : "off"}`);
    } catch (caught) {
      fill(status, errorBanner(caught));
    } finally {
      save.disabled = false;
    }
  });

  api
    .getLoggingSettings({ signal })
    .then(show)
    .catch((caught) => {
      if (caught.name !== "AbortError") fill(state, errorBanner(caught));
    });
}
