// Building DOM nodes without innerHTML: every text from the server goes in as a text node.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(parent, child) {
  if (child === null || child === undefined || child === false) return;
  if (Array.isArray(child)) {
    for (const item of child) append(parent, item);
  } else if (child instanceof Node) {
    parent.append(child);
  } else {
    parent.append(document.createTextNode(String(child)));
  }
}

function setAttributes(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key === "value" || key === "checked" || key === "indeterminate") {
      node[key] = value;
    } else if (value === true) {
      node.setAttribute(key, "");
    } else {
      node.setAttribute(key, String(value));
    }
  }
}

/** h("button", {class: "primary", onclick}, "Save") */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  append(node, children);
  return node;
}

/** An SVG element; attributes are set as given. */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attrs);
  append(node, children);
  return node;
}

/** Replaces the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

let ids = 0;
/** A unique id for label/for and aria-describedby pairs. */
export function uid(prefix = "id") {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A labelled form field: {label, input, hint}. */
export function field(labelText, input, hint) {
  if (!input.id) input.id = uid("field");
  const parts = [h("label", { for: input.id }, labelText), input];
  if (hint) {
    const hintId = uid("hint");
    input.setAttribute("aria-describedby", hintId);
    parts.push(h("span", { class: "hint", id: hintId }, hint));
  }
  return h("div", { class: "field" }, parts);
}

/** Says `text` to screen readers (polite). */
export function announce(text) {
  const region = document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  // A separate task, so that the same text twice is announced twice.
  setTimeout(() => {
    region.textContent = text;
  }, 30);
}

/** An error as a banner (role=alert). */
export function errorBanner(error) {
  const message = error && error.message ? error.message : String(error);
  const status = error && error.status ? `${error.status}: ` : "";
  return h("div", { class: "banner error", role: "alert" }, h("p", null, status + message));
}

/** A modal dialog with a form; resolves with the submit result or null when cancelled. */
export function formDialog({ title, fields, submitLabel, onSubmit, description }) {
  return new Promise((resolve) => {
    const error = h("p", { class: "form-error", role: "alert" });
    const cancel = h("button", { type: "button" }, "Cancel");
    const submit = h("button", { type: "submit", class: "primary" }, submitLabel);
    const titleId = uid("dialog-title");
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", { id: titleId }, title),
      description ? h("p", null, description) : null,
      fields,
      error,
      h("div", { class: "actions" }, cancel, submit),
    );
    const dialog = h("dialog", { "aria-labelledby": titleId }, form);
    let result = null;
    const close = () => {
      dialog.close();
    };
    cancel.addEventListener("click", close);
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(result);
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      submit.disabled = true;
      try {
        result = await onSubmit(new FormData(form));
        close();
      } catch (caught) {
        error.textContent = caught && caught.message ? caught.message : String(caught);
        submit.disabled = false;
      }
    });
    document.body.append(dialog);
    dialog.showModal();
    const first = form.querySelector("input, select, textarea");
    if (first) first.focus();
  });
}

/** Starts a download of `blob` as `fileName`. */
export function download(blob, fileName) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: fileName, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
