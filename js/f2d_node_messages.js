/**
 * Face2Diffusion: the text a node sends back when it runs (its UI text), shown on the node.
 *
 * Encode Face says which detection attempt found each photo's face; Apply F2D Tokens warns when the
 * CLIP has clip skip. An empty text clears the line. Neither saved in the workflow nor sent to the server.
 */
import { app } from "../../scripts/app.js";

const NODE_TYPES = new Set(["F2DEncodeFace", "F2DApplyTokens"]);
const MESSAGE_WIDGET = "f2d_node_message";
const LINE_HEIGHT = 16;

function addMessageLine(node) {
  const element = document.createElement("div");
  element.className = "f2d-node-message";
  Object.assign(element.style, {
    font: "11px sans-serif",
    lineHeight: `${LINE_HEIGHT}px`,
    whiteSpace: "pre-wrap",
    color: "var(--descrip-text, #999)",
    overflow: "hidden",
  });
  const lines = () => (element.textContent ? element.textContent.split("\n").length : 0);
  const widget = node.addDOMWidget(MESSAGE_WIDGET, "f2d_message", element, {
    serialize: false,
    hideOnZoom: true,
    getValue: () => element.textContent,
    setValue: () => {},
    getMinHeight: () => Math.max(1, lines()) * LINE_HEIGHT,
  });
  widget.serialize = false;

  const onExecuted = node.onExecuted;
  node.onExecuted = function (message) {
    const result = onExecuted?.apply(this, arguments);
    const text = (message?.text ?? []).filter((line) => line).join("\n");
    element.textContent = text;
    element.style.color = text.startsWith("Warning:") ? "#f0a030" : "var(--descrip-text, #999)";
    node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
    node.setDirtyCanvas?.(true, true);
    return result;
  };
}

app.registerExtension({
  name: "face2diffusion.NodeMessages",
  nodeCreated(node) {
    if (NODE_TYPES.has(node.comfyClass)) addMessageLine(node);
  },
});
