/**
 * Face2Diffusion: the score table of Face Similarity, CLIP Score and Best of N, shown on the node.
 *
 * Each of these nodes returns its table as `ui.text`; after a run the frontend hands that to the
 * node's `onExecuted`, and this puts it in a read-only monospace box under the widgets.
 */
import { app } from "../../scripts/app.js";

const NODE_TYPES = new Set(["F2DFaceSimilarity", "F2DCLIPScore", "F2DBestOfN"]);
const TABLE_WIDGET = "f2d_score_table";

/** The table text of an execution message ({text: [..]}), "" when there is none. */
export function tableText(message) {
  const text = message?.text;
  return Array.isArray(text) ? text.join("\n") : typeof text === "string" ? text : "";
}

function addTable(node) {
  const box = document.createElement("pre");
  box.className = "f2d-score-table";
  box.textContent = "scores appear here after a run";
  Object.assign(box.style, {
    font: "11px monospace",
    margin: "0",
    padding: "4px",
    overflow: "auto",
    whiteSpace: "pre",
    color: "var(--input-text, #ddd)",
    background: "var(--comfy-input-bg, #222)",
  });
  const widget = node.addDOMWidget(TABLE_WIDGET, "f2d_table", box, {
    serialize: false,
    getValue: () => box.textContent,
    setValue: () => {},
    getMinHeight: () => 80,
  });
  widget.serialize = false;
  const previous = node.onExecuted;
  node.onExecuted = function (message) {
    previous?.apply(this, arguments);
    const text = tableText(message);
    if (text) box.textContent = text;
    this.setDirtyCanvas?.(true, false);
  };
  node.f2dScoreTable = box;
}

app.registerExtension({
  name: "face2diffusion.ScoreTable",
  nodeCreated(node) {
    if (NODE_TYPES.has(node.comfyClass)) addTable(node);
  },
});
