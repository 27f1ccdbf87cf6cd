// The filter bar of the logs and usage pages: pick a property, then a value; the bar composes
// an AIP-160 filter string, which stays visible and editable and is what gets applied.

import { api } from "./api.js";
import { h, uid } from "./dom.js";
import { STATUS_NAMES, localInputToRfc3339, quote } from "./format.js";

const METHODS = ["GenerateContent", "StreamGenerateContent"];

const PROPERTIES = {
  model: "Model",
  method: "Method",
  status: "Status",
  label: "Label",
  caller: "Caller",
  time: "Time range",
  text: "Free text",
};

let modelNames = null;

/** Model names for suggestions: base models from the face, then tuned models; [] if neither. */
export async function knownModels() {
  if (modelNames) return modelNames;
  const names = [];
  try {
    const answer = await api.listModels({ pageSize: 1000 });
    for (const model of answer.models || []) {
      const methods = model.supportedGenerationMethods;
      if (!methods || methods.includes("generateContent")) names.push(model.name);
    }
  } catch {
    // The face may not forward ListModels: a free text field is enough.
  }
  try {
    const answer = await api.listTunedModels({ pageSize: 100 });
    for (const model of answer.tunedModels || []) names.push(model.name);
  } catch {
    // Same for tuned models.
  }
  modelNames = names;
  return names;
}

/** A <datalist> of `values`, filled when they arrive. */
function datalist(values) {
  const list = h("datalist", { id: uid("suggestions") });
  Promise.resolve(values)
    .then((items) => {
      list.replaceChildren(...items.map((value) => h("option", { value })));
    })
    .catch(() => {});
  return list;
}

async function labelKeys() {
  try {
    const answer = await api.listLabelKeys({ pageSize: 200 });
    return (answer.labelKeys || []).map((item) => item.key);
  } catch {
    return [];
  }
}

async function labelValues(key) {
  if (!key) return [];
  try {
    const answer = await api.listLabelValues(key, { pageSize: 200 });
    return (answer.labelValues || []).map((item) => item.value);
  } catch {
    return [];
  }
}

function labelled(text, control) {
  if (!control.id) control.id = uid("filter");
  return h("div", { class: "field" }, h("label", { for: control.id }, text), control);
}

/**
 * A filter bar. `properties` lists the property keys offered (see PROPERTIES); `timeField`
 * names the timestamp field of time ranges (logs: `create_time`); `onApply(filter)` runs
 * with the filter text to apply.
 */
export function filterBar({ properties, filter = "", timeField = "create_time", onApply, name }) {
  const legendId = uid("filter-legend");
  const property = h(
    "select",
    { name: "property" },
    properties.map((key) => h("option", { value: key }, PROPERTIES[key])),
  );
  const operator = h(
    "select",
    { name: "operator" },
    h("option", { value: "=" }, "is"),
    h("option", { value: "!=" }, "is not"),
  );
  const operatorField = labelled("Operator", operator);
  const valueSlot = h("div", { class: "filter-row" });
  const add = h("button", { type: "submit" }, "Add to filter");
  const builder = h(
    "form",
    { class: "filter-row", "aria-label": `${name || "Filter"}: add a condition` },
    labelled("Property", property),
    operatorField,
    valueSlot,
    add,
  );

  const text = h("input", {
    type: "text",
    name: "filter",
    value: filter,
    spellcheck: "false",
    autocomplete: "off",
    placeholder: 'e.g. model = "models/gemini-2.5-flash" AND labels.team = "search"',
  });
  const apply = h("button", { type: "submit", class: "primary" }, "Apply filter");
  const clear = h("button", { type: "button" }, "Clear");
  const textForm = h(
    "form",
    { class: "filter-text-row", "aria-label": `${name || "Filter"}: AIP-160 text` },
    h(
      "div",
      { class: "field" },
      h("label", { for: (text.id = uid("filter-text")) }, "Filter (AIP-160, editable)"),
      text,
    ),
    apply,
    clear,
  );

  let current = {}; // the value controls of the chosen property

  function renderValue() {
    const key = property.value;
    operatorField.hidden = key === "time" || key === "text";
    valueSlot.replaceChildren();
    current = {};
    if (key === "model") {
      const list = datalist(knownModels());
      current.value = h("input", { type: "text", list: list.id, placeholder: "models/gemini-2.5-flash", required: true });
      valueSlot.append(labelled("Model", current.value), list);
    } else if (key === "method") {
      current.value = h("select", null, METHODS.map((m) => h("option", { value: m }, m)));
      valueSlot.append(labelled("Method", current.value));
    } else if (key === "status") {
      current.value = h("select", null, STATUS_NAMES.map((s) => h("option", { value: s }, s)));
      valueSlot.append(labelled("Status", current.value));
    } else if (key === "caller") {
      current.value = h("input", { type: "text", required: true });
      valueSlot.append(labelled("Caller", current.value));
    } else if (key === "label") {
      current.key = h("select", { required: true }, h("option", { value: "" }, "Choose a key…"));
      const values = h("datalist", { id: uid("label-values") });
      current.value = h("input", { type: "text", list: values.id, placeholder: "any value" });
      labelKeys().then((keys) => {
        current.key.append(...keys.map((k) => h("option", { value: k }, k)));
      });
      current.key.addEventListener("change", async () => {
        const found = await labelValues(current.key.value);
        values.replaceChildren(...found.map((value) => h("option", { value })));
      });
      valueSlot.append(labelled("Label key", current.key), labelled("Label value", current.value), values);
    } else if (key === "time") {
      current.from = h("input", { type: "datetime-local", step: "1" });
      current.to = h("input", { type: "datetime-local", step: "1" });
      valueSlot.append(labelled("From", current.from), labelled("To", current.to));
    } else if (key === "text") {
      current.value = h("input", { type: "search", required: true, placeholder: "words in prompt or response" });
      valueSlot.append(labelled("Text", current.value));
    }
  }

  /** The condition the builder's controls describe, or "" when they describe none. */
  function condition() {
    const key = property.value;
    const op = operator.value;
    if (key === "model" || key === "method" || key === "status" || key === "caller") {
      const value = current.value.value.trim();
      return value ? `${key} ${op} ${quote(value)}` : "";
    }
    if (key === "label") {
      const labelKey = current.key.value;
      if (!labelKey) return "";
      const value = current.value.value;
      if (!value) return op === "=" ? `labels.${labelKey}:*` : `NOT labels.${labelKey}:*`;
      return `labels.${labelKey} ${op} ${quote(value)}`;
    }
    if (key === "time") {
      const parts = [];
      const from = localInputToRfc3339(current.from.value);
      const to = localInputToRfc3339(current.to.value);
      if (from) parts.push(`${timeField} >= ${quote(from)}`);
      if (to) parts.push(`${timeField} < ${quote(to)}`);
      return parts.join(" AND ");
    }
    if (key === "text") {
      const value = current.value.value.trim();
      return value ? quote(value) : "";
    }
    return "";
  }

  property.addEventListener("change", renderValue);
  builder.addEventListener("submit", (event) => {
    event.preventDefault();
    const clause = condition();
    if (!clause) return;
    const existing = text.value.trim();
    text.value = existing ? `${existing} AND ${clause}` : clause;
    onApply(text.value.trim());
  });
  textForm.addEventListener("submit", (event) => {
    event.preventDefault();
    onApply(text.value.trim());
  });
  clear.addEventListener("click", () => {
    text.value = "";
    onApply("");
  });
  renderValue();

  const element = h(
    "section",
    { class: "filter-bar", role: "search", "aria-labelledby": legendId },
    h("h2", { id: legendId, class: "visually-hidden" }, name || "Filter"),
    builder,
    textForm,
  );
  return {
    element,
    input: text,
    setFilter(value) {
      text.value = value;
    },
  };
}
