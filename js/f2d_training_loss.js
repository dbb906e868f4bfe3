/**
 * Face2Diffusion: a live loss sparkline on the mapper-training node.
 *
 * The server reports each step with
 *   PromptServer.instance.send_sync("f2d.training.progress", {node, step, total, loss, grad_norm})
 * and this draws the recent losses under the widgets of the node whose id is `node`, with the last
 * loss and the mapper's gradient norm.
 */
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";

const NODE_TYPE = "F2DTrainMapper";
const EVENT = "f2d.training.progress";
const LOSS_WIDGET = "f2d_loss_sparkline";
const KEEP = 300; // losses drawn: the most recent ones
const WIDTH = 300; // SVG user units; the SVG stretches to the node's width
const HEIGHT = 48;
const SVG = "http://www.w3.org/2000/svg";

/** The node an execution id names: "12" at the top level, "7:12" inside the subgraph of node 7. */
function nodeByExecutionId(id) {
  let graph = app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById(part) ?? null;
    graph = node?.subgraph;
  }
  return node;
}

/** SVG polyline points for `losses`, scaled to the box (top = highest loss shown). */
export function sparklinePoints(losses, width = WIDTH, height = HEIGHT) {
  if (losses.length === 0) return "";
  const low = Math.min(...losses);
  const span = Math.max(...losses) - low || 1;
  const step = losses.length > 1 ? width / (losses.length - 1) : 0;
  return losses
    .map((loss, i) => `${(i * step).toFixed(1)},${(height - 2 - ((loss - low) / span) * (height - 4)).toFixed(1)}`)
    .join(" ");
}

function addSparkline(node) {
  const element = document.createElement("div");
  element.className = "f2d-loss-sparkline";
  Object.assign(element.style, { font: "12px sans-serif", color: "var(--descrip-text, #999)" });
  const label = document.createElement("div");
  label.textContent = "loss: waiting for training to start";
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute("preserveAspectRatio", "none");
  Object.assign(svg.style, { width: "100%", height: `${HEIGHT}px`, display: "block" });
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#4fa3ff");
  line.setAttribute("stroke-width", "1.5");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(line);
  element.append(label, svg);

  const history = { losses: [], lastStep: -Infinity };
  const widget = node.addDOMWidget(LOSS_WIDGET, "f2d_sparkline", element, {
    serialize: false,
    getValue: () => history.losses.at(-1) ?? "",
    setValue: () => {},
    getMinHeight: () => HEIGHT + 20,
    getMaxHeight: () => HEIGHT + 20,
  });
  widget.serialize = false;

  node.f2dShowProgress = ({ step, total, loss, grad_norm }) => {
    if (step <= history.lastStep) history.losses = []; // a new run starts over
    history.lastStep = step;
    history.losses = [...history.losses, Number(loss)].slice(-KEEP);
    line.setAttribute("points", sparklinePoints(history.losses));
    const norm = grad_norm === undefined ? "" : ` · grad norm ${Number(grad_norm).toPrecision(3)}`;
    label.textContent = `step ${step}/${total} · loss ${Number(loss).toPrecision(4)}${norm}`;
    node.setDirtyCanvas?.(true, false);
  };
  node.f2dLossHistory = history;
}

app.registerExtension({
  name: "face2diffusion.TrainingLoss",
  nodeCreated(node) {
    if (node.comfyClass === NODE_TYPE) addSparkline(node);
  },
  setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      nodeByExecutionId(detail?.node)?.f2dShowProgress?.(detail);
    });
  },
});
