// A word-level diff of two texts (longest common subsequence), for the run comparison page.

import { h } from "./dom.js";

// Above this many cells the table would be too big: the changed middle is shown whole.
const MAX_CELLS = 4_000_000;

function tokens(text) {
  return String(text || "").match(/\s+|[^\s]+/g) || [];
}

/** [{op: "eq" | "del" | "ins", text}] turning `before` into `after`, word by word. */
export function diffWords(before, after) {
  const a = tokens(before);
  const b = tokens(after);
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start += 1;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA -= 1;
    endB -= 1;
  }
  const ops = [];
  const push = (op, text) => {
    const last = ops[ops.length - 1];
    if (last && last.op === op) last.text += text;
    else ops.push({ op, text });
  };
  for (let i = 0; i < start; i += 1) push("eq", a[i]);

  const midA = a.slice(start, endA);
  const midB = b.slice(start, endB);
  const n = midA.length;
  const m = midB.length;
  if (n * m > MAX_CELLS) {
    for (const word of midA) push("del", word);
    for (const word of midB) push("ins", word);
  } else if (n || m) {
    // lengths[i][j]: LCS length of midA[i:] and midB[j:], in one flat array.
    const width = m + 1;
    const lengths = new Uint32Array((n + 1) * width);
    for (let i = n - 1; i >= 0; i -= 1) {
      for (let j = m - 1; j >= 0; j -= 1) {
        lengths[i * width + j] =
          midA[i] === midB[j]
            ? lengths[(i + 1) * width + j + 1] + 1
            : Math.max(lengths[(i + 1) * width + j], lengths[i * width + j + 1]);
      }
    }
    let i = 0;
    let j = 0;
    while (i < n && j < m) {
      if (midA[i] === midB[j]) {
        push("eq", midA[i]);
        i += 1;
        j += 1;
      } else if (lengths[(i + 1) * width + j] >= lengths[i * width + j + 1]) {
        push("del", midA[i]);
        i += 1;
      } else {
        push("ins", midB[j]);
        j += 1;
      }
    }
    while (i < n) push("del", midA[i++]);
    while (j < m) push("ins", midB[j++]);
  }
  for (let i = endA; i < a.length; i += 1) push("eq", a[i]);
  return ops;
}

/** The two sides of a diff as elements: removed words marked on the left, added on the right. */
export function diffSides(before, after) {
  const ops = diffWords(before, after);
  const left = h("p", { class: "diff-text" });
  const right = h("p", { class: "diff-text" });
  for (const { op, text } of ops) {
    if (op === "eq") {
      left.append(text);
      right.append(text);
    } else if (op === "del") {
      left.append(h("del", { title: "only in the original" }, text));
    } else {
      right.append(h("ins", { title: "only in the re-run" }, text));
    }
  }
  return { left, right };
}
