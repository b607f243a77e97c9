/**
 * The job page's log panel: a terminal-like list of lines (number, time, level, text),
 * coloured by level, filtered by text and level, that follows the tail until the reader
 * scrolls up. Lines go in as text nodes only, never as HTML. Lines added between two
 * frames of the browser go in at once, one fragment per frame, so a fast log costs one
 * layout a frame; at most `maxLines` stay in the DOM, the oldest going first, in blocks
 * that the browser skips while they are off screen.
 */

import { el } from "./dom.js";
import { formatCount } from "./format.js";
import { LOG_LEVELS, lineClock, lineMatches } from "./log-lines.js";

/** @typedef {import("./log-lines.js").LogLine} LogLine */
/** @typedef {import("./log-lines.js").LogLevel} LogLevel */

/** Lines kept in the DOM at most: the server's default JOB_LOG_MAX_LINES, so a default log fits whole. */
export const PANEL_MAX_LINES = 10000;
const AT_END_PX = 24; // this close to the bottom counts as reading the tail
// Lines per block of the list: the browser lays out and paints only the blocks on screen
// (content-visibility), so a new frame costs about the same at 100 lines or at 10,000.
const LINES_PER_BLOCK = 200;

/** @type {Record<LogLevel, string>} */
const LEVEL_LABEL = { debug: "Debug", info: "Info", warning: "Warning", error: "Error" };
/** @type {Record<LogLevel, string>} the level column: one width for all */
const LEVEL_TAG = { debug: "DEBUG", info: "INFO", warning: "WARN", error: "ERROR" };

/** @param {number} count @param {string} one @param {string} many */
function plural(count, one, many) {
  return `${formatCount(count)} ${count === 1 ? one : many}`;
}

/** @param {LogLine} line @returns {HTMLElement} */
function renderLine(line) {
  const row = el("div", `log__line log__line--${line.level}`);
  row.id = `L${line.n}`;
  row.dataset.n = String(line.n);
  row.dataset.level = line.level;
  const number = el("a", "log__n", String(line.n));
  number.setAttribute("href", `#L${line.n}`);
  number.setAttribute("aria-label", `Line ${line.n}`);
  const time = el("span", "log__t", lineClock(line.t));
  time.setAttribute("title", line.t);
  row.append(number, time, el("span", "log__level", LEVEL_TAG[line.level] ?? line.level), el("span", "log__text", line.text));
  return row;
}

/**
 * Builds the panel inside `root` (the page's `[data-log-panel]`).
 * @param {HTMLElement} root
 * @param {{jobId: string, schedule?: (callback: () => void) => void, maxLines?: number, target?: number|null}} options
 *   schedule: runs a callback before the next paint (requestAnimationFrame); target: the line `#L17` names
 */
export function createLogPanel(root, { jobId, schedule = (callback) => requestAnimationFrame(callback), maxLines = PANEL_MAX_LINES, target = null }) {
  /** @type {{n: number, line: LogLine, node: HTMLElement}[]} the rendered lines, in order of `n` */
  const rows = [];
  /** @type {LogLine[]} lines waiting for the next frame */
  let pending = [];
  let scheduled = false;
  let following = true;
  let trimmed = 0; // lines that left the DOM for the cap
  let total = 0;
  let dropped = 0;
  /** @type {number|null} */
  let wanted = target; // the line to scroll to once it is here
  /** @type {HTMLElement|null} */
  let highlighted = null;
  /** @type {import("./log-lines.js").LogFilter} */
  const filter = { text: "", levels: new Set(LOG_LEVELS) };
  /** @type {Record<string, number>} rendered lines per level */
  const perLevel = Object.fromEntries(LOG_LEVELS.map((level) => [level, 0]));

  // --- the frame ------------------------------------------------------------------
  const count = el("span", "log__count", "");
  const download = el("a", "button button--small log__download", "Download log");
  download.setAttribute("href", `/api/jobs/${encodeURIComponent(jobId)}/log.txt`);
  download.setAttribute("download", `job-${jobId}.log`);
  const title = el("h2", "log__title", "Log");
  title.id = "log-title";
  const titleWrap = el("div", "log__title-wrap");
  titleWrap.append(title, count);
  const head = el("header", "log__head");
  head.append(titleWrap, download);

  const search = /** @type {HTMLInputElement} */ (el("input", "log__search"));
  search.setAttribute("type", "search");
  search.setAttribute("placeholder", "Filter lines");
  search.setAttribute("aria-label", "Filter lines by text");
  search.dataset.logSearch = "";
  const levels = el("div", "log__levels");
  levels.setAttribute("role", "group");
  levels.setAttribute("aria-label", "Levels shown");
  /** @type {Map<LogLevel, {button: HTMLElement, tally: HTMLElement}>} */
  const toggles = new Map();
  for (const level of LOG_LEVELS) {
    const button = el("button", `log__toggle log__toggle--${level}`, LEVEL_LABEL[level]);
    button.setAttribute("type", "button");
    button.setAttribute("aria-pressed", "true");
    button.dataset.logLevel = level;
    const tally = el("span", "log__tally", "0");
    button.append(" ", tally);
    button.addEventListener("click", () => toggleLevel(level));
    toggles.set(level, { button, tally });
    levels.append(button);
  }
  const tools = el("div", "log__tools");
  tools.append(search, levels);

  const notice = el("p", "log__notice");
  notice.hidden = true;
  const list = el("div", "log__lines");
  const empty = el("p", "log__empty", "No log lines yet.");
  const body = el("div", "log__body");
  body.setAttribute("role", "log");
  body.setAttribute("aria-labelledby", "log-title");
  body.setAttribute("tabindex", "0");
  body.append(list, empty);
  const jump = el("button", "button button--small log__jump", "Jump to the end ↓");
  jump.setAttribute("type", "button");
  jump.hidden = true;
  const screen = el("div", "log__screen");
  screen.append(body, jump);
  root.replaceChildren(head, tools, notice, screen);

  search.addEventListener("input", () => {
    filter.text = search.value.trim();
    refilter();
  });
  body.addEventListener("scroll", () => {
    following = body.scrollHeight - body.scrollTop - body.clientHeight <= AT_END_PX;
    jump.hidden = following || rows.length === 0;
  });
  jump.addEventListener("click", () => {
    following = true;
    jump.hidden = true;
    toEnd();
  });

  // --- drawing --------------------------------------------------------------------
  const toEnd = () => { body.scrollTop = body.scrollHeight; };

  /** @param {LogLevel} level */
  function toggleLevel(level) {
    if (filter.levels.has(level)) filter.levels.delete(level);
    else filter.levels.add(level);
    toggles.get(level)?.button.setAttribute("aria-pressed", String(filter.levels.has(level)));
    refilter();
  }

  function refilter() {
    for (const row of rows) row.node.hidden = !lineMatches(row.line, filter);
    drawState();
    if (following) toEnd();
  }

  function drawState() {
    count.textContent = total ? plural(total, "line", "lines") : "";
    for (const [level, { tally }] of toggles) tally.textContent = formatCount(perLevel[level]);
    const parts = [];
    if (dropped) parts.push(`${plural(dropped, "earlier line", "earlier lines")} not kept`);
    if (trimmed) parts.push(`${plural(trimmed, "earlier line", "earlier lines")} not shown here (the download has them)`);
    notice.textContent = parts.join(" · ");
    notice.hidden = parts.length === 0;
    const anyShown = rows.some((row) => !row.node.hidden);
    empty.textContent = rows.length ? "No lines match the filter." : "No log lines yet.";
    empty.hidden = anyShown;
  }

  /** @param {number} n @returns {number} the index of the first row with an `n` above `n` */
  const indexAfter = (n) => {
    let low = 0;
    let high = rows.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (rows[mid].n <= n) low = mid + 1;
      else high = mid;
    }
    return low;
  };

  function flush() {
    scheduled = false;
    const lines = pending.sort((a, b) => a.n - b.n);
    pending = [];
    const tail = document.createDocumentFragment();
    let block = /** @type {HTMLElement|null} */ (list.lastElementChild);
    let room = block ? LINES_PER_BLOCK - block.childElementCount : 0;
    /** @type {Set<HTMLElement>} blocks that older lines went into */
    const grown = new Set();
    for (const line of lines) {
      const at = indexAfter(line.n);
      if (at > 0 && rows[at - 1].n === line.n) continue; // shown already
      if (rows.length >= maxLines && at === 0) { trimmed += 1; continue; } // older than all kept here
      const node = renderLine(line);
      node.hidden = !lineMatches(line, filter);
      perLevel[line.level] = (perLevel[line.level] ?? 0) + 1;
      if (at < rows.length) {
        const into = /** @type {HTMLElement} */ (rows[at].node.parentNode);
        into.insertBefore(node, rows[at].node);
        grown.add(into);
      } else {
        if (room === 0) {
          if (block) block.append(tail);
          block = el("div", "log__block");
          list.append(block);
          room = LINES_PER_BLOCK;
        }
        tail.append(node);
        room -= 1;
      }
      rows.splice(at, 0, { n: line.n, line, node });
    }
    block?.append(tail);
    for (const into of grown) split(into);
    const excess = rows.length - maxLines;
    if (excess > 0) {
      for (const row of rows.splice(0, excess)) {
        const from = row.node.parentNode;
        row.node.remove();
        if (from && from.childElementCount === 0) from.remove();
        perLevel[row.line.level] -= 1;
      }
      trimmed += excess;
    }
    drawState();
    if (wanted !== null && highlight(wanted)) wanted = null;
    else if (following) toEnd();
  }

  /** Cuts a block that a hole's lines made long into blocks of LINES_PER_BLOCK. @param {HTMLElement} block */
  function split(block) {
    const lines = [...block.children];
    let last = block;
    for (let from = LINES_PER_BLOCK; from < lines.length; from += LINES_PER_BLOCK) {
      const next = el("div", "log__block");
      next.append(...lines.slice(from, from + LINES_PER_BLOCK));
      last.after(next);
      last = next;
    }
  }

  /**
   * Marks line `n` and scrolls to it (the tail stops being followed); false while it is not here.
   * @param {number} n
   */
  function highlight(n) {
    const row = rows[indexAfter(n) - 1];
    if (!row || row.n !== n) return false;
    highlighted?.classList.remove("log__line--target");
    highlighted = row.node;
    highlighted.classList.add("log__line--target");
    following = false;
    row.node.scrollIntoView({ block: "center" });
    jump.hidden = false;
    return true;
  }

  drawState();
  return {
    /** Lines to show, in any order; drawn before the next paint. @param {LogLine[]} lines */
    add(lines) {
      pending.push(...lines);
      if (pending.length > 2 * maxLines) {
        // A page in the background gets no frames: keep what could still be drawn.
        pending.sort((a, b) => a.n - b.n);
        trimmed += pending.length - maxLines;
        pending = pending.slice(-maxLines);
      }
      if (!scheduled) {
        scheduled = true;
        schedule(flush);
      }
    },

    /** The log's counts, as the server says them. @param {number} written @param {number} notKept */
    counts(written, notKept) {
      if (written === total && notKept === dropped) return;
      total = written;
      dropped = notKept;
      drawState();
    },

    /** Goes to line `n` (a `#L17` link), now or once it is here. @param {number} n */
    goTo(n) {
      if (!highlight(n)) wanted = n;
    },

    /** @returns {number[]} the numbers of the lines in the DOM (tests) */
    rendered() { return rows.map((row) => row.n); },
  };
}
