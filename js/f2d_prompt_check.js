/**
 * Face2Diffusion: on every Apply F2D Tokens and Add F2D Person node, a status line under the prompt says whether (and how
 * often) the identifier occurs; queueing a graph where an active node's prompt lacks it shows a warning,
 * since that node would stop the run with "The prompt does not contain the identifier".
 */
import { app } from "../../scripts/app.js";
import { DEFAULT_IDENTIFIER, countIdentifier } from "./f2d_identifier.js";

const NODE_TYPES = new Set(["F2DApplyTokens", "F2DAddPerson"]); // nodes whose prompt needs the identifier
const STATUS_WIDGET = "f2d_identifier_status";
const LINE_HEIGHT = 18;
const MARGIN = 3;
const MUTED_MODES = new Set([2, 4]); // LiteGraph's NEVER (muted) and BYPASS: such nodes don't run
const COLORS = { ok: "var(--descrip-text, #999)", warn: "#f0a030", info: "var(--descrip-text, #999)" };

const widgetNamed = (node, name) => node.widgets?.find((w) => w.name === name);
const isLinked = (node, name) => node.inputs?.some((input) => input.name === name && input.link != null);

/**
 * `{state: "ok" | "warn" | "info", count, text}` for one Apply F2D Tokens / Add F2D Person node; a warning
 * names the widget to change: the identifier widget when it is empty, else the prompt.
 */
function identifierStatus(node) {
  const identifier = String(widgetNamed(node, "identifier")?.value ?? DEFAULT_IDENTIFIER).trim();
  if (!identifier) {
    return { state: "warn", count: 0, text: `⚠ the identifier widget is empty: set it to '${DEFAULT_IDENTIFIER}'` };
  }
  if (isLinked(node, "text")) {
    return { state: "info", count: null, text: `prompt comes from a link: '${identifier}' is checked when it runs` };
  }
  const count = countIdentifier(widgetNamed(node, "text")?.value, identifier);
  if (count === 0) {
    return { state: "warn", count, text: `⚠ no '${identifier}' in the prompt: write it where the person goes` };
  }
  return { state: "ok", count, text: `identifier '${identifier}' found ${count}×` };
}

/** Nodes the next warning lists: the status widgets' `beforeQueued` add to it while a queue starts. */
const missing = new Set();

/** One toast per queue for all nodes that lack the identifier (the queue's checks run synchronously). */
function warnBeforeQueue(node) {
  if (missing.size === 0) {
    queueMicrotask(() => {
      const lines = [...missing].map((n) => `#${n.id} ${n.title}: ${identifierStatus(n).text.replace(/^⚠ /, "")}`);
      missing.clear();
      app.extensionManager?.toast?.add({
        severity: "warn",
        summary: "Face2Diffusion: identifier missing",
        detail: `${lines.join("\n")}\n${lines.length > 1 ? "These nodes" : "This node"} would stop the run.`,
        life: 10000,
      });
    });
  }
  missing.add(node);
}

function addStatusLine(node) {
  const element = document.createElement("div");
  element.className = "f2d-identifier-status";
  Object.assign(element.style, {
    font: "12px sans-serif",
    lineHeight: `${LINE_HEIGHT}px`,
    whiteSpace: "nowrap",
    overflow: "hidden",
    textOverflow: "ellipsis",
  });

  const update = () => {
    const status = identifierStatus(node);
    element.textContent = status.text;
    element.dataset.state = status.state;
    element.style.color = COLORS[status.state];
    return status;
  };
  const widget = node.addDOMWidget(STATUS_WIDGET, "f2d_status", element, {
    serialize: false, // neither saved in the workflow nor sent to the server
    hideOnZoom: true,
    getValue: () => element.textContent,
    setValue: () => {},
    getMinHeight: () => LINE_HEIGHT + 2 * MARGIN,
    getMaxHeight: () => LINE_HEIGHT + 2 * MARGIN,
    margin: MARGIN,
  });
  widget.serialize = false;
  widget.beforeQueued = () => {
    if (!MUTED_MODES.has(node.mode) && update().state === "warn") warnBeforeQueue(node);
  };

  for (const name of ["text", "identifier"]) {
    const watched = widgetNamed(node, name);
    if (!watched) continue;
    const original = watched.callback;
    watched.callback = function (...args) {
      const result = original?.apply(this, args);
      update();
      return result;
    };
  }
  const onConnectionsChange = node.onConnectionsChange;
  node.onConnectionsChange = function (...args) {
    const result = onConnectionsChange?.apply(this, args);
    update();
    return result;
  };
  node.f2dUpdateIdentifierStatus = update;
  update();
}

app.registerExtension({
  name: "face2diffusion.IdentifierCheck",
  nodeCreated(node) {
    if (NODE_TYPES.has(node.comfyClass)) addStatusLine(node);
  },
  loadedGraphNode(node) {
    node.f2dUpdateIdentifierStatus?.(); // widget values arrive after nodeCreated
  },
});
