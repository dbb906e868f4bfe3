/**
 * Face2Diffusion: the score table of Face Similarity, CLIP Score and Best of N, shown on the node.
 *
 * Each of these nodes returns its table as `ui.text`; after a run the frontend hands that to the
 * node's `onExecuted`, and this puts it in a read-only monospace box under the widgets. The box is as tall
 * as the table (every row shows, no scroll bar hides one), and the node grows to hold it.
 */
import { app } from "../../scripts/app.js";

const NODE_TYPES = new Set(["F2DFaceSimilarity", "F2DCLIPScore", "F2DBestOfN"]);
const TABLE_WIDGET = "f2d_score_table";
const LINE_HEIGHT = 13; // px, of the 11px monospace text
const PADDING = 4;
const MARGIN = 3; // the DOM widget's margin (the frontend's default, 10, would take 20 px of the rows)

/** The table text of an execution message ({text: [..]}), "" when there is none. */
export function tableText(message) {
  const text = message?.text;
  return Array.isArray(text) ? text.join("\n") : typeof text === "string" ? text : "";
}

/**
 * Grow `node` to hold all it shows, now and over the next frames (the table is laid out after this call).
 */
function growToContent(node, frames = 30) {
  const grow = () => node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  grow();
  let left = frames;
  const step = () => {
    grow();
    node.setDirtyCanvas?.(true, true);
    if (--left > 0) requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
}

function addTable(node) {
  const box = document.createElement("pre");
  // as tall as its rows (and a scroll bar's room for a wide table)
  const tableHeight = () =>
    Math.max(2, box.textContent.split("\n").length) * LINE_HEIGHT + 2 * PADDING + 12 + 2 * MARGIN;
  box.className = "f2d-score-table";
  box.textContent = "scores appear here after a run";
  Object.assign(box.style, {
    font: "11px monospace",
    lineHeight: `${LINE_HEIGHT}px`,
    margin: "0",
    padding: `${PADDING}px`,
    overflowX: "auto", // a wide table scrolls sideways; its rows all show
    overflowY: "hidden",
    whiteSpace: "pre",
    color: "var(--input-text, #ddd)",
    background: "var(--comfy-input-bg, #222)",
  });
  const widget = node.addDOMWidget(TABLE_WIDGET, "f2d_table", box, {
    serialize: false,
    getValue: () => box.textContent,
    setValue: () => {},
    getMinHeight: tableHeight,
    getMaxHeight: tableHeight,
    margin: MARGIN,
  });
  widget.serialize = false;
  const previous = node.onExecuted;
  node.onExecuted = function (message) {
    previous?.apply(this, arguments);
    const text = tableText(message);
    if (text) box.textContent = text;
    growToContent(this);
  };
  node.f2dScoreTable = box;
}

app.registerExtension({
  name: "face2diffusion.ScoreTable",
  nodeCreated(node) {
    if (NODE_TYPES.has(node.comfyClass)) addTable(node);
  },
});
