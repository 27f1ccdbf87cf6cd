// Logs: newest first, filtered and paged by the gateway; rows selected into datasets; a live
// tail; the "limit reached" banner.

import { ApiError, api } from "../api.js";
import { announce, errorBanner, field, fill, formDialog, h, uid } from "../dom.js";
import { filterBar } from "../filterbar.js";
import { showInt } from "../format.js";
import { LOG_COLUMNS, logRow } from "../logtable.js";

const PAGE_SIZES = [25, 50, 100, 200];
const DEFAULT_PAGE_SIZE = 50;
const MAX_LIVE_ROWS = 500;
const RECONNECT_MS = 1500;

/** A filter that selects every log listed so far: the filter, or "up to now" when there is none. */
function selectionFilter(filter, newest) {
  if (filter) return filter;
  const until = newest || new Date().toISOString();
  return `create_time <= "${until}"`;
}

export function logsPage({ main, query, signal, navigate }) {
  const state = {
    filter: query.get("filter") || "",
    pageSize: Number(query.get("pageSize")) || DEFAULT_PAGE_SIZE,
    tokens: [""], // page tokens of the pages visited, the current one last
    logs: [],
    next: "",
    selected: new Set(),
    allMatching: false,
    newest: "", // createTime of the newest log of the first page
    live: null, // AbortController of the tail
    loading: null, // AbortController of the listing in flight
  };

  const banner = h("div", { class: "banner-slot" });
  const notice = h("div", { class: "notice-slot", "aria-live": "polite" }); // what an action did
  const problem = h("div", { class: "problem-slot" }); // why the listing failed
  const bar = filterBar({
    name: "Filter logs",
    properties: ["model", "status", "label", "method", "time", "text"],
    filter: state.filter,
    onApply: (filter) => navigate("/logs", { filter, pageSize: state.pageSize === DEFAULT_PAGE_SIZE ? "" : state.pageSize }),
  });

  // Toolbar: selection actions and page size.
  const selectionText = h("span", { class: "muted", id: uid("selection"), "aria-live": "polite" });
  const createButton = h("button", { type: "button", class: "primary", disabled: true }, "Create dataset…");
  const deleteButton = h("button", { type: "button", class: "danger", disabled: true }, "Delete…");
  const pageSize = h(
    "select",
    { id: uid("page-size") },
    PAGE_SIZES.map((size) => h("option", { value: size, selected: size === state.pageSize }, String(size))),
  );
  const toolbar = h(
    "div",
    { class: "toolbar" },
    createButton,
    deleteButton,
    selectionText,
    h("span", { class: "spacer" }),
    h("label", { for: pageSize.id }, "Rows per page"),
    pageSize,
  );

  // Live toggle.
  const liveBox = h("input", { type: "checkbox", id: uid("live"), role: "switch", "aria-checked": "false" });
  const liveDot = h("span", { class: "live-dot", "aria-hidden": "true" });
  const liveState = h("span", { class: "muted", "aria-live": "polite" });
  const liveToggle = h("div", { class: "switch" }, liveBox, liveDot, h("label", { for: liveBox.id }, "Live"), liveState);

  // The table.
  const selectAll = h("input", { type: "checkbox", "aria-label": "Select every log on this page" });
  const tbody = h("tbody");
  const table = h(
    "table",
    { "aria-describedby": selectionText.id },
    h("caption", { class: "visually-hidden" }, "Logs, newest first"),
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        h("th", { scope: "col", class: "check-cell" }, selectAll),
        LOG_COLUMNS.map((c) => h("th", { scope: "col" }, c)),
      ),
    ),
    tbody,
  );
  const selectAllBar = h("div", { class: "select-all-bar", hidden: true });
  const newer = h("button", { type: "button", disabled: true }, "← Newer");
  const older = h("button", { type: "button", disabled: true }, "Older →");
  const pageInfo = h("span", { class: "muted", "aria-live": "polite" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages of logs" }, newer, older, pageInfo);

  fill(
    main,
    h(
      "div",
      { class: "page-head" },
      h("h1", null, "Logs"),
      liveToggle,
      h("a", { href: "#/settings" }, "Logging settings"),
    ),
    banner,
    notice,
    bar.element,
    problem,
    toolbar,
    selectAllBar,
    h("div", { class: "table-wrap" }, table),
    pager,
  );

  // --- selection -------------------------------------------------------------------------

  function checkboxes() {
    return [...tbody.querySelectorAll("input[type=checkbox]")];
  }

  function refreshSelection() {
    const boxes = checkboxes();
    const onPage = boxes.filter((box) => box.checked).length;
    selectAll.checked = boxes.length > 0 && onPage === boxes.length;
    selectAll.indeterminate = onPage > 0 && onPage < boxes.length;
    for (const box of boxes) box.closest("tr").classList.toggle("selected", box.checked || state.allMatching);
    const count = state.selected.size;
    createButton.disabled = deleteButton.disabled = !state.allMatching && count === 0;
    if (state.allMatching) {
      selectionText.textContent = state.filter
        ? "Every log matching the filter is selected"
        : "Every log is selected";
    } else {
      selectionText.textContent = count ? `${showInt(count)} selected` : "";
    }
    // Offer the logs of the other pages once the whole page is ticked.
    const morePages = Boolean(state.next) || state.tokens.length > 1;
    if (state.allMatching) {
      fill(
        selectAllBar,
        `All logs ${state.filter ? "matching this filter " : ""}are selected, on every page. `,
        h("button", { type: "button", class: "linklike", onclick: clearSelection }, "Clear selection"),
      );
      selectAllBar.hidden = false;
    } else if (selectAll.checked && morePages) {
      fill(
        selectAllBar,
        `All ${boxes.length} logs on this page are selected. `,
        h(
          "button",
          {
            type: "button",
            class: "linklike",
            onclick: () => {
              state.allMatching = true;
              refreshSelection();
              announce("Every matching log is selected");
            },
          },
          state.filter ? "Select every log matching this filter" : "Select every log",
        ),
      );
      selectAllBar.hidden = false;
    } else {
      selectAllBar.hidden = true;
    }
  }

  function clearSelection() {
    state.selected.clear();
    state.allMatching = false;
    for (const box of checkboxes()) box.checked = false;
    refreshSelection();
    announce("Selection cleared");
  }

  function checkFor(log) {
    const box = h("input", {
      type: "checkbox",
      "aria-label": `Select log ${log.name.split("/").pop()}`,
      checked: state.allMatching || state.selected.has(log.name),
    });
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(log.name);
      else {
        state.selected.delete(log.name);
        state.allMatching = false;
      }
      refreshSelection();
    });
    return box;
  }

  selectAll.addEventListener("change", () => {
    for (const box of checkboxes()) {
      box.checked = selectAll.checked;
      const name = box.closest("tr").dataset.name;
      if (selectAll.checked) state.selected.add(name);
      else state.selected.delete(name);
    }
    if (!selectAll.checked) state.allMatching = false;
    refreshSelection();
  });

  // --- listing ---------------------------------------------------------------------------

  function showBanner(answer) {
    if (!answer.limitReached) {
      banner.replaceChildren();
      return;
    }
    fill(
      banner,
      h(
        "div",
        { class: "banner", role: "alert" },
        h("p", null, h("strong", null, "Log limit reached: new calls are not logged."), " Delete logs to log again."),
        answer.notice ? h("p", { class: "muted" }, answer.notice) : null,
        h(
          "div",
          { class: "toolbar" },
          h("button", { type: "button", class: "danger", onclick: () => deleteLogs() }, "Delete logs…"),
          h("a", { href: "#/settings" }, "Raise the limit or evict the oldest logs"),
        ),
      ),
    );
  }

  async function load() {
    if (state.loading) state.loading.abort();
    const controller = new AbortController();
    state.loading = controller;
    signal.addEventListener("abort", () => controller.abort(), { once: true });
    table.setAttribute("aria-busy", "true");
    problem.replaceChildren();
    try {
      const answer = await api.listLogs(
        { filter: state.filter, pageSize: state.pageSize, pageToken: state.tokens[state.tokens.length - 1] },
        { signal: controller.signal },
      );
      state.logs = answer.logs || [];
      state.next = answer.nextPageToken || "";
      if (state.tokens.length === 1) state.newest = state.logs.length ? state.logs[0].createTime : "";
      showBanner(answer);
      renderRows();
    } catch (caught) {
      if (caught.name === "AbortError") return;
      state.logs = [];
      state.next = "";
      renderRows();
      fill(problem, errorBanner(caught));
    } finally {
      if (state.loading === controller) state.loading = null;
      table.removeAttribute("aria-busy");
    }
  }

  function renderRows() {
    tbody.replaceChildren(
      ...(state.logs.length
        ? state.logs.map((log) => logRow(log, { check: checkFor(log) }))
        : [
            h(
              "tr",
              null,
              h(
                "td",
                { colspan: LOG_COLUMNS.length + 1, class: "empty" },
                state.filter ? "No logs match this filter." : "No logs yet. Calls appear here when logging is on.",
              ),
            ),
          ]),
    );
    const page = state.tokens.length;
    newer.disabled = page === 1;
    older.disabled = !state.next;
    pageInfo.textContent = `Page ${page}${state.logs.length ? ` · ${state.logs.length} logs` : ""}`;
    refreshSelection();
  }

  newer.addEventListener("click", () => {
    state.tokens.pop();
    load();
  });
  older.addEventListener("click", () => {
    if (!state.next) return;
    state.tokens.push(state.next);
    load();
  });
  pageSize.addEventListener("change", () => {
    navigate("/logs", { filter: state.filter, pageSize: pageSize.value });
  });

  // --- live tail -------------------------------------------------------------------------

  async function follow(controller) {
    let received = 0;
    while (!controller.signal.aborted) {
      try {
        liveState.textContent = "connecting…";
        const onOpen = () => {
          liveState.textContent = received ? `${received} new, following` : "following new logs";
        };
        const messages = api.tailLogs({ filter: state.filter }, { signal: controller.signal, onOpen });
        for await (const message of messages) {
          if (!message.log) continue;
          received += 1;
          addLive(message.log);
          liveState.textContent = `${received} new`;
        }
      } catch (caught) {
        if (controller.signal.aborted) return;
        liveState.textContent = `reconnecting (${caught.message})`;
        if (caught instanceof ApiError && caught.httpStatus >= 400 && caught.httpStatus < 500) {
          stopLive();
          fill(problem, errorBanner(caught));
          return;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  }

  function addLive(log) {
    // Older pages stay as they are; the count in the switch's label says what arrived.
    if (state.tokens.length > 1) return;
    if (state.logs.some((known) => known.name === log.name)) return;
    state.logs.unshift(log);
    const empty = tbody.querySelector("td.empty");
    if (empty) empty.closest("tr").remove();
    const row = logRow(log, { check: checkFor(log) });
    row.classList.add("fresh");
    tbody.prepend(row);
    while (tbody.rows.length > MAX_LIVE_ROWS) tbody.lastElementChild.remove();
    refreshSelection();
  }

  function startLive() {
    if (state.live) return;
    state.live = new AbortController();
    signal.addEventListener("abort", () => state.live && state.live.abort(), { once: true });
    liveBox.checked = true;
    liveBox.setAttribute("aria-checked", "true");
    liveDot.classList.add("on");
    if (state.tokens.length > 1) {
      state.tokens = [""];
      load();
    }
    follow(state.live);
  }

  function stopLive() {
    if (state.live) state.live.abort();
    state.live = null;
    liveBox.checked = false;
    liveBox.setAttribute("aria-checked", "false");
    liveDot.classList.remove("on");
    liveState.textContent = "";
  }

  liveBox.addEventListener("change", () => (liveBox.checked ? startLive() : stopLive()));

  // --- actions ---------------------------------------------------------------------------

  function describeSelection() {
    if (state.allMatching) {
      return state.filter ? `every log matching “${state.filter}”` : "every log";
    }
    return `${showInt(state.selected.size)} selected log${state.selected.size === 1 ? "" : "s"}`;
  }

  createButton.addEventListener("click", async () => {
    const name = h("input", { name: "displayName", required: true, maxlength: 128, autocomplete: "off" });
    const description = h("textarea", { name: "description", maxlength: 10000, rows: 3 });
    const created = await formDialog({
      title: "Create dataset",
      description: `From ${describeSelection()}.`,
      submitLabel: "Create dataset",
      fields: [field("Name", name), field("Description (optional)", description)],
      onSubmit: async (data) => {
        const body = {
          dataset: { displayName: String(data.get("displayName")).trim(), description: String(data.get("description") || "") },
        };
        if (state.allMatching) body.filter = selectionFilter(state.filter, state.newest);
        else body.logNames = [...state.selected];
        return api.createDataset(body);
      },
    });
    if (!created) return;
    const id = created.name.split("/").pop();
    clearSelection();
    fill(
      notice,
      h(
        "div",
        { class: "banner ok", role: "status" },
        h(
          "p",
          null,
          `Dataset “${created.displayName}” created with ${showInt(created.logCount)} logs. `,
          h("a", { href: `#/datasets/${encodeURIComponent(id)}` }, "Open the dataset"),
        ),
      ),
    );
    announce(`Dataset ${created.displayName} created`);
    load();
  });

  async function deleteLogs() {
    const selection = state.allMatching || state.selected.size > 0;
    const everything = h("input", { type: "checkbox", name: "everything" });
    const what = selection
      ? describeSelection()
      : state.filter
        ? `every log matching “${state.filter}”`
        : "every log of the project";
    const deleted = await formDialog({
      title: "Delete logs",
      description: `Delete ${what}? Deleted logs leave their datasets too; this cannot be undone.`,
      submitLabel: "Delete",
      fields: [h("label", { class: "check" }, everything, "Yes, delete them")],
      onSubmit: async (data) => {
        if (!data.get("everything")) throw new Error("Tick the box to confirm.");
        let body;
        if (state.allMatching) body = { filter: selectionFilter(state.filter, state.newest) };
        else if (selection) body = { names: [...state.selected] };
        else if (state.filter) body = { filter: state.filter };
        else body = { all: true };
        return api.deleteLogs(body);
      },
    });
    if (!deleted) return;
    clearSelection();
    fill(notice, h("div", { class: "banner ok", role: "status" }, h("p", null, `${showInt(deleted.deletedCount)} logs deleted.`)));
    state.tokens = [""];
    load();
  }
  deleteButton.addEventListener("click", () => deleteLogs());

  load();

  return {
    update(next) {
      const filter = next.get("filter") || "";
      const size = Number(next.get("pageSize")) || DEFAULT_PAGE_SIZE;
      const filterChanged = filter !== state.filter;
      notice.replaceChildren();
      state.filter = filter;
      state.pageSize = size;
      pageSize.value = String(size);
      bar.setFilter(filter);
      state.tokens = [""];
      if (filterChanged) {
        state.selected.clear();
        state.allMatching = false;
        if (state.live) {
          stopLive();
          startLive();
        }
      }
      load();
    },
    destroy() {
      stopLive();
      if (state.loading) state.loading.abort();
    },
  };
}
