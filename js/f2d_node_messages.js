/**
 * Face2Diffusion: the text a node sends back when it runs (its UI text), shown on the node.
 *
 * Encode Face says which detection attempt found each photo's face; Apply F2D Tokens warns when the
 * CLIP has clip skip; the save nodes name the file they wrote (with its counter); Load F2D Face says which
 * mapper made the S* it gives. An empty text clears the
 * line. Long lines wrap, and the node grows to show every wrapped line. Neither saved in the workflow nor
 * sent to the server.
 *
 * After a failed run, the node that failed and every node after it (Encode Face's line, the Aligned face
 * preview, ...) lose what an earlier run showed: that run's result no longer belongs to this graph.
 */
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";

const NODE_TYPES = new Set(["F2DEncodeFace", "F2DApplyTokens", "F2DSaveFace", "F2DSaveMapper", "F2DLoadFace"]);
const MESSAGE_WIDGET = "f2d_node_message";
const LINE_HEIGHT = 16;
const MARGIN = 3; // the DOM widget's margin (the frontend's default, 10, would eat a one-line message)

function addMessageLine(node) {
  const element = document.createElement("div");
  element.className = "f2d-node-message";
  Object.assign(element.style, {
    font: "11px sans-serif",
    lineHeight: `${LINE_HEIGHT}px`,
    color: "var(--descrip-text, #999)",
    overflow: "hidden",
  });
  const text = element.appendChild(document.createElement("div")); // its height is the text's, not the box's
  text.style.whiteSpace = "pre-wrap";
  // Lines as shown: the text's own lines, or more where they wrap at the node's width (once laid out).
  const lines = () => {
    const own = text.textContent ? text.textContent.split("\n").length : 0;
    return Math.max(own, Math.round(text.offsetHeight / LINE_HEIGHT));
  };
  const widget = node.addDOMWidget(MESSAGE_WIDGET, "f2d_message", element, {
    serialize: false,
    hideOnZoom: true,
    getValue: () => text.textContent,
    setValue: () => {},
    getMinHeight: () => Math.max(1, lines()) * LINE_HEIGHT + 2 * MARGIN,
    margin: MARGIN,
  });
  widget.serialize = false;
  node.f2dClearMessage = () => {
    text.textContent = "";
    node.setDirtyCanvas?.(true, true);
  };

  const onExecuted = node.onExecuted;
  node.onExecuted = function (message) {
    const result = onExecuted?.apply(this, arguments);
    text.textContent = (message?.text ?? []).filter((line) => line).join("\n");
    element.style.color = text.textContent.startsWith("Warning:") ? "#f0a030" : "var(--descrip-text, #999)";
    const grow = () => node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
    grow();
    requestAnimationFrame(() => {
      // once the text is laid out at the node's width, grow to its wrapped lines
      grow();
      node.setDirtyCanvas?.(true, true);
    });
    node.setDirtyCanvas?.(true, true);
    return result;
  };
}

/** The graph node of an execution id ("12", or "3:12" inside subgraph node 3), or null. */
function nodeOfExecutionId(executionId) {
  let graph = app.graph;
  let node = null;
  for (const part of String(executionId).split(":")) {
    node = graph?.getNodeById?.(Number(part)) ?? null;
    graph = node?.subgraph;
  }
  return node;
}

/** `node` and every node its outputs reach, in its graph. */
function withDownstream(node) {
  const seen = new Set([node]);
  const stack = [node];
  while (stack.length) {
    const current = stack.pop();
    for (const output of current.outputs ?? []) {
      for (const linkId of output.links ?? []) {
        const link = current.graph?.getLink?.(linkId) ?? current.graph?.links?.[linkId];
        const target = link && current.graph.getNodeById(link.target_id);
        if (target && !seen.has(target)) {
          seen.add(target);
          stack.push(target);
        }
      }
    }
  }
  return seen;
}

/** Forget what earlier runs showed on a node: its message line, and its images (previews, saved images). */
function clearShownResult(node) {
  node.f2dClearMessage?.();
  const locator = node.graph && node.graph !== app.graph ? `${node.graph.id}:${node.id}` : String(node.id);
  if (app.nodeOutputs?.[locator]) delete app.nodeOutputs[locator];
  if (node.imgs?.length) {
    node.imgs = undefined;
    node.imageIndex = null;
    // the frontend's own image preview widget, removed the way the frontend removes it
    const index = node.widgets?.findIndex((w) => w.name === "$$canvas-image-preview") ?? -1;
    if (index > -1) {
      node.widgets[index].onRemove?.();
      node.widgets.splice(index, 1);
    }
  }
  node.setDirtyCanvas?.(true, true);
}

api.addEventListener("execution_error", ({ detail }) => {
  const failed = nodeOfExecutionId(detail?.node_id);
  if (!failed) return;
  for (const node of withDownstream(failed)) clearShownResult(node);
  app.graph.setDirtyCanvas(true, true);
});

app.registerExtension({
  name: "face2diffusion.NodeMessages",
  nodeCreated(node) {
    if (NODE_TYPES.has(node.comfyClass)) addMessageLine(node);
  },
});
