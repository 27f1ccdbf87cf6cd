// One log: the exchange as a conversation, its figures, and the raw JSON on demand.

import { api } from "../api.js";
import { errorBanner, fill, h, uid } from "../dom.js";
import { lastSegment, seconds, showDuration, showInt, showTime, statusCode, statusName } from "../format.js";
import { labelChips } from "../logtable.js";

function json(value) {
  return JSON.stringify(value, null, 2);
}

function blobSize(data) {
  const length = String(data || "").length;
  return `${showInt(Math.floor((length * 3) / 4))} bytes`;
}

/** The parts of one Content, each as an element. */
function parts(content) {
  return (content.parts || []).map((part) => {
    if (typeof part.text === "string") {
      return part.thought
        ? h("p", { class: "part-thought" }, h("span", { class: "visually-hidden" }, "Thought: "), part.text)
        : h("p", { class: "part-text" }, part.text);
    }
    if (part.functionCall) {
      return h(
        "div",
        { class: "part-call" },
        h("span", { class: "kind" }, `Function call: ${part.functionCall.name}`),
        part.functionCall.id ? h("span", { class: "muted" }, ` (id ${part.functionCall.id})`) : null,
        "\n",
        json(part.functionCall.args || {}),
      );
    }
    if (part.functionResponse) {
      return h(
        "div",
        { class: "part-call" },
        h("span", { class: "kind" }, `Function response: ${part.functionResponse.name}`),
        "\n",
        json(part.functionResponse.response || {}),
      );
    }
    if (part.inlineData) {
      return h("div", { class: "part-data" }, `Inline ${part.inlineData.mimeType || "data"}, ${blobSize(part.inlineData.data)}`);
    }
    if (part.fileData) {
      return h("div", { class: "part-data" }, `File ${part.fileData.fileUri} (${part.fileData.mimeType || "unknown type"})`);
    }
    if (part.executableCode) {
      return h(
        "div",
        { class: "part-call" },
        h("span", { class: "kind" }, `Code (${part.executableCode.language || "?"})`),
        "\n",
        part.executableCode.code || "",
      );
    }
    if (part.codeExecutionResult) {
      return h(
        "div",
        { class: "part-call" },
        h("span", { class: "kind" }, `Code result: ${part.codeExecutionResult.outcome || ""}`),
        "\n",
        part.codeExecutionResult.output || "",
      );
    }
    return h("div", { class: "part-data" }, json(part));
  });
}

function turn({ role, kind, extra, content }) {
  return h(
    "li",
    { class: `turn ${kind}` },
    h("div", { class: "turn-head" }, h("strong", null, role), extra),
    parts(content),
  );
}

function safetyTable(ratings) {
  if (!ratings || !ratings.length) return null;
  return h(
    "table",
    { class: "safety" },
    h("caption", null, "Safety ratings"),
    h("thead", null, h("tr", null, h("th", { scope: "col" }, "Category"), h("th", { scope: "col" }, "Probability"), h("th", { scope: "col" }, "Blocked"))),
    h(
      "tbody",
      null,
      ratings.map((r) =>
        h("tr", null, h("td", null, r.category || "—"), h("td", null, r.probability || "—"), h("td", null, r.blocked ? "yes" : "no")),
      ),
    ),
  );
}

function conversation(log) {
  const request = log.request || {};
  const response = log.response || {};
  const items = [];
  if (request.systemInstruction) {
    items.push(turn({ role: "System instruction", kind: "system", content: request.systemInstruction }));
  }
  (request.contents || []).forEach((content, index) => {
    const role = content.role || "user";
    items.push(
      turn({
        role: role.charAt(0).toUpperCase() + role.slice(1),
        kind: role === "model" ? "model" : "user",
        extra: h("span", null, `turn ${index + 1}`),
        content,
      }),
    );
  });
  const candidates = response.candidates || [];
  candidates.forEach((candidate, index) => {
    const item = turn({
      role: candidates.length > 1 ? `Response, candidate ${index + 1}` : "Response",
      kind: "model response",
      extra: [
        candidate.finishReason ? h("span", null, `finish reason ${candidate.finishReason}`) : null,
        candidate.finishMessage ? h("span", null, candidate.finishMessage) : null,
      ],
      content: candidate.content || {},
    });
    const safety = safetyTable(candidate.safetyRatings);
    if (safety) item.append(safety);
    items.push(item);
  });
  if (response.promptFeedback && response.promptFeedback.blockReason) {
    items.push(
      h(
        "li",
        { class: "turn model response" },
        h("div", { class: "turn-head" }, h("strong", null, "Prompt blocked")),
        h("p", null, `Block reason: ${response.promptFeedback.blockReason}`),
        safetyTable(response.promptFeedback.safetyRatings),
      ),
    );
  }
  if (statusCode(log.status) !== 0) {
    items.push(
      h(
        "li",
        { class: "turn model response" },
        h("div", { class: "turn-head" }, h("strong", null, `Error: ${statusName(log.status)}`)),
        h("p", { class: "part-text" }, (log.status && log.status.message) || ""),
      ),
    );
  }
  if (!candidates.length && statusCode(log.status) === 0 && !(response.promptFeedback && response.promptFeedback.blockReason)) {
    items.push(h("li", { class: "turn model" }, h("p", { class: "muted" }, "No response was recorded.")));
  }
  return h("ol", { class: "conversation", "aria-label": "Conversation, in order" }, items);
}

function fact(label, value) {
  return h("div", { class: "fact" }, h("dt", null, label), h("dd", null, value));
}

function settingsList(request) {
  const pairs = [];
  const config = request.generationConfig || {};
  for (const [key, value] of Object.entries(config)) {
    pairs.push([`generationConfig.${key}`, typeof value === "object" ? JSON.stringify(value) : String(value)]);
  }
  for (const tool of request.tools || []) {
    for (const declaration of tool.functionDeclarations || []) {
      pairs.push(["tool", `function ${declaration.name}${declaration.description ? `: ${declaration.description}` : ""}`]);
    }
    for (const key of Object.keys(tool).filter((k) => k !== "functionDeclarations")) pairs.push(["tool", key]);
  }
  if (request.toolConfig) pairs.push(["toolConfig", JSON.stringify(request.toolConfig)]);
  for (const setting of request.safetySettings || []) pairs.push(["safety setting", `${setting.category}: ${setting.threshold}`]);
  if (request.cachedContent) pairs.push(["cachedContent", request.cachedContent]);
  if (!pairs.length) return h("p", { class: "muted" }, "Defaults (no generation config, tools or safety settings).");
  return h("dl", { class: "pairs" }, pairs.flatMap(([k, v]) => [h("dt", null, k), h("dd", { class: "mono" }, v)]));
}

function chunkOffsets(log) {
  const offsets = (log.chunkOffsets || []).map(seconds).filter((v) => v !== null);
  if (!offsets.length) return null;
  return [
    h("h3", null, `Chunk arrivals (${offsets.length})`),
    h(
      "ol",
      { class: "offsets", "aria-label": "Time of each chunk from the call's arrival" },
      offsets.map((value, i) => h("li", null, `#${i + 1} ${Math.round(value * 1000)} ms`)),
    ),
  ];
}

export function logPage({ main, params, signal }) {
  const id = params.log;
  fill(
    main,
    h("nav", { class: "breadcrumbs", "aria-label": "Breadcrumbs" }, h("ol", null, h("li", null, h("a", { href: "#/logs" }, "Logs")), h("li", { "aria-current": "page" }, id))),
    h("h1", null, `Log ${id}`),
    h("p", { class: "muted" }, "Loading…"),
  );

  api
    .getLog(id, { signal })
    .then((log) => {
      const tokens = log.tokens || {};
      const rawId = uid("raw");
      const raw = h("pre", { class: "json", id: rawId, hidden: true, tabindex: "0", "aria-label": "Raw JSON of the log" });
      const toggle = h("button", { type: "button", "aria-expanded": "false", "aria-controls": rawId }, "Show raw JSON");
      toggle.addEventListener("click", () => {
        const open = raw.hidden;
        if (open && !raw.textContent) raw.textContent = json(log);
        raw.hidden = !open;
        toggle.setAttribute("aria-expanded", String(open));
        toggle.textContent = open ? "Hide raw JSON" : "Show raw JSON";
      });
      const ok = statusCode(log.status) === 0;
      fill(
        main,
        h("nav", { class: "breadcrumbs", "aria-label": "Breadcrumbs" }, h("ol", null, h("li", null, h("a", { href: "#/logs" }, "Logs")), h("li", { "aria-current": "page" }, id))),
        h(
          "div",
          { class: "page-head" },
          h("h1", null, `Log ${id}`),
          h("span", { class: `badge ${ok ? "ok" : "bad"}` }, statusName(log.status)),
          toggle,
        ),
        h(
          "dl",
          { class: "facts" },
          fact("Time", showTime(log.createTime)),
          fact("Model", log.model || "—"),
          fact("Method", log.method || "—"),
          fact("Latency", showDuration(log.latency)),
          fact("Time to first chunk", log.timeToFirstChunk ? showDuration(log.timeToFirstChunk) : "—"),
          fact("Finish reason", log.finishReason || "—"),
          fact("Prompt tokens", showInt(tokens.prompt)),
          fact("Output tokens", showInt(tokens.candidates)),
          fact("Cached tokens", showInt(tokens.cached)),
          fact("Thought tokens", showInt(tokens.thoughts)),
          fact("Total tokens", showInt(tokens.total)),
          fact("Caller", log.caller || "—"),
        ),
        h(
          "dl",
          { class: "pairs" },
          h("dt", null, "Labels"),
          h("dd", null, labelChips(log.labels)),
          h("dt", null, "Datasets"),
          h(
            "dd",
            null,
            (log.datasets || []).length
              ? (log.datasets || []).map((name, i) => [
                  i ? ", " : "",
                  h("a", { href: `#/datasets/${encodeURIComponent(lastSegment(name))}` }, lastSegment(name)),
                ])
              : h("span", { class: "muted" }, "none"),
          ),
          h("dt", null, "API version"),
          h("dd", null, log.apiVersion || "—"),
          h("dt", null, "Response id"),
          h("dd", { class: "mono" }, log.responseId || "—"),
          log.incomplete ? [h("dt", null, "Incomplete"), h("dd", null, "the stream ended before its last chunk")] : null,
        ),
        h("h2", null, "Conversation"),
        conversation(log),
        h("h2", null, "Request settings"),
        settingsList(log.request || {}),
        chunkOffsets(log),
        raw,
      );
      document.title = `Log ${id} · Gemini gateway`;
    })
    .catch((caught) => {
      if (caught.name === "AbortError") return;
      fill(main, h("nav", { class: "breadcrumbs", "aria-label": "Breadcrumbs" }, h("ol", null, h("li", null, h("a", { href: "#/logs" }, "Logs")))), h("h1", null, `Log ${id}`), errorBanner(caught));
    });
}
