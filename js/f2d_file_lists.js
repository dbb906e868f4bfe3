/**
 * Face2Diffusion: after Save F2D Face or Save F2D Mapper runs, the file it wrote is in the lists of the
 * nodes that load such files (Load F2D Face's face_file, Load MSID Encoder's mapper_file, ...), without
 * "Refresh Node Definitions": the lists are read again from the server (/object_info/<node>) and put into
 * every such node of the open graph, and into the ones added later.
 */
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";

/** Save node -> the nodes whose file lists its output joins. */
const LISTS_AFTER_SAVE = {
  F2DSaveFace: ["F2DLoadFace"],
  F2DSaveMapper: ["F2DLoadMSIDEncoder"],
};
/** Node type -> {combo input: its latest options}, once read again; nodes created later get them too. */
const latest = new Map();

/** {input name: options} of an /object_info entry's combo inputs (the old and the new combo spec). */
function comboOptions(definition) {
  const options = {};
  for (const inputs of [definition?.input?.required, definition?.input?.optional]) {
    for (const [name, spec] of Object.entries(inputs ?? {})) {
      if (Array.isArray(spec?.[0])) options[name] = spec[0];
      else if (spec?.[0] === "COMBO" && Array.isArray(spec[1]?.options)) options[name] = spec[1].options;
    }
  }
  return options;
}

/**
 * Put the lists into a node's combo widgets. A widget without a choice (`undefined`, from a list that was
 * empty when the node was added, or the server's "(no saved face yet ...)" placeholder) takes the entry the
 * list gained, the file just saved. A chosen file is kept, even one the list lacks: the run names it.
 */
function applyOptions(node, options) {
  for (const widget of node.widgets ?? []) {
    const values = options[widget.name];
    if (widget.type !== "combo" || !values) continue;
    const added = values.filter((value) => !(widget.options.values ?? []).includes(value));
    widget.options.values = values;
    const unchosen = widget.value == null || widget.value === "" || String(widget.value).startsWith("(");
    if (unchosen && values.length && !values.includes(widget.value)) {
      widget.value = added.at(-1) ?? values[0];
      widget.callback?.(widget.value);
    }
  }
}

/** Read the node types' lists again and put them into their nodes of the graph (and its subgraphs). */
export async function refreshFileLists(nodeTypes) {
  for (const type of nodeTypes) {
    const response = await api.fetchApi(`/object_info/${encodeURIComponent(type)}`, { cache: "no-store" });
    if (!response.ok) continue;
    const options = comboOptions((await response.json())[type]);
    latest.set(type, options);
    const graphs = [app.graph, ...(app.graph.subgraphs?.values?.() ?? [])];
    for (const graph of graphs) {
      for (const node of graph.nodes ?? []) if (node.comfyClass === type) applyOptions(node, options);
    }
  }
  app.graph.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "face2diffusion.FileLists",
  nodeCreated(node) {
    const options = latest.get(node.comfyClass);
    if (options) applyOptions(node, options);
    const lists = LISTS_AFTER_SAVE[node.comfyClass];
    if (!lists) return;
    const onExecuted = node.onExecuted;
    node.onExecuted = function (...args) {
      const result = onExecuted?.apply(this, args);
      refreshFileLists(lists).catch((error) => console.warn("Face2Diffusion: could not refresh file lists", error));
      return result;
    };
  },
});
