#!/usr/bin/env node
/**
 * Regenerate the bundled workflows with ComfyUI's own frontend:
 *   workflows/api/<name>.json  (read, then rewritten as the frontend's "Export (API)" writes it)
 *   workflows/<title>.json     (the frontend's "Export": UI format, laid out with groups and notes)
 *   workflows/<title>.jpg      (thumbnail: a screenshot of the laid-out graph, `--stamp` as its JPEG comment)
 * where <title> is the template's title for people, from template_titles.json (the template browser shows
 * the file name).
 *
 * Each API graph is loaded with the app's own loader (app.loadApiJson), placed by workflow_layout.mjs,
 * and exported with app.graphToPrompt(), exactly as the Export menu entries do.
 *
 *   node tests/browser/export_workflows.mjs --url http://127.0.0.1:8188 --stamp TEXT [--only f2d_portrait]
 *       [--thumbnail-only]
 *
 * --thumbnail-only opens the committed workflows/<title>.json as a user opens the file and writes only its
 * thumbnail (for a template whose layout was adjusted by hand; the JSON files stay as they are).
 *
 * The server must have this pack loaded; it gets the quiet settings of comfy_page.mjs stored, so use
 * a scratch server: `F2D_EXPORT_WORKFLOWS=1 pytest tests/browser -k export` starts one with test models
 * and uploads the drawn placeholders of placeholders.py under the Load Image names (never a photo: the
 * thumbnails show them), then runs this with the stamp the tests look for (see test_browser.py).
 */
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { launch, openComfy, prepareServer, realErrors } from "./comfy_page.mjs";
import { LAYOUTS } from "./workflow_layout.mjs";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const TITLES = JSON.parse(readFileSync(join(REPO, "tests", "browser", "template_titles.json"), "utf8"));
const THUMBNAIL = { width: 1024, height: 640, maxBytes: 60 * 1024 };
/** Settings for a clean thumbnail (no minimap, menus or stats; full detail when zoomed out); restored after. */
const THUMBNAIL_SETTINGS = {
  "LiteGraph.Canvas.MinFontSizeForLOD": 0,
  "Comfy.Minimap.Visible": false,
  "Comfy.Graph.CanvasMenu": false,
  "Comfy.Graph.CanvasInfo": false,
  "Comfy.Workflow.WorkflowTabsPosition": "Sidebar",
};
/**
 * Room for the pictures these nodes show (their default size has none), and under Encode Face for the
 * line it writes when it runs (which attempt found the face); small enough that a template fits a
 * 1600×1000 window at a zoom where the frontend still draws text (see check_layouts.mjs).
 */
const MIN_SIZE = {
  LoadImage: [240, 300],
  PreviewImage: [220, 220],
  SaveImage: [320, 340],
  F2DEncodeFace: [300, 200],
};
const NOTE_SIZE = [440, 300];

/** Runs in the page: place the loaded graph's nodes, add notes and groups. */
async function arrangeInPage({ layout, minSize, noteSize }) {
  const { app, LiteGraph, LGraphGroup } = window;
  const TITLE = LiteGraph.NODE_TITLE_HEIGHT;
  const GAP_X = 50;
  const GAP_SAME_GROUP = TITLE + 20;
  const GAP_OTHER_GROUP = TITLE + 80; // room for a group's title bar and padding
  const PAD = 15;
  const HEADER = 50;
  // Nodes that show a picture, and the frontend's picture widget with its least height (ImagePreviewWidget).
  const PICTURE_NODES = new Set(["LoadImage", "PreviewImage", "SaveImage"]);
  const PICTURE_WIDGET = "$$canvas-image-preview";
  const PICTURE_MIN_HEIGHT = 220;

  const groupOf = new Map();
  layout.groups.forEach((group, g) => group.nodes.forEach((id) => groupOf.set(String(id), g)));
  const byKey = new Map(app.graph.nodes.map((node) => [String(node.id), node]));
  for (const [key, text] of Object.entries(layout.notes ?? {})) {
    const note = LiteGraph.createNode("MarkdownNote");
    note.title = "Read me";
    app.graph.add(note);
    note.widgets[0].value = text;
    note.size = layout.noteSize?.[key] ?? noteSize;
    byKey.set(key, note);
  }

  for (const node of app.graph.nodes) {
    // A layout's size may be below the default, never below what the node's widgets need, with the room
    // the frontend gives a picture once one shows (it grows the node to that); MIN_SIZE only adds.
    const exact = layout.sizes?.[node.id];
    const [width, height] = exact ?? minSize[node.type] ?? [0, 0];
    const needed = node.computeSize();
    if (PICTURE_NODES.has(node.type) && !node.widgets?.some((w) => w.name === PICTURE_WIDGET)) {
      needed[1] += PICTURE_MIN_HEIGHT;
    }
    const least = exact ? needed : [Math.max(node.size[0], needed[0]), Math.max(node.size[1], needed[1])];
    node.setSize([Math.max(least[0], width), Math.max(least[1], height)]);
  }
  for (const [id, value] of Object.entries(layout.seedControl ?? {})) {
    const control = byKey.get(id)?.widgets?.find((w) => w.name === "control_after_generate");
    if (!control) throw new Error(`layout sets the seed control of ${id}, which has none`);
    control.value = value;
  }
  await new Promise((resolve) => setTimeout(resolve, 500)); // DOM widgets settle and may grow their node
  const bottom = (node) => node.pos[1] + node.size[1];
  // Until nothing moves: an entry may start below or beside a node of a later column, placed in an earlier pass.
  for (let pass = 0, moved = true; moved; pass++) {
    if (pass === 10) throw new Error("the layout's columns do not settle: an entry depends on itself");
    const before = JSON.stringify([...byKey.values()].map((node) => [...node.pos]));
    let x = 0;
    for (const column of layout.columns) {
      let y = 0;
      let previous = null;
      let width = 0;
      for (const entry of column) {
        const { id, align, below, free } = typeof entry === "object" ? entry : { id: entry };
        const node = byKey.get(String(id));
        if (!node) throw new Error(`layout names ${id}, which is not in the graph`);
        if (previous) {
          const sameGroup = groupOf.has(String(id)) && groupOf.get(String(id)) === groupOf.get(previous);
          y += sameGroup ? GAP_SAME_GROUP : GAP_OTHER_GROUP;
        }
        if (align != null) y = Math.max(y, byKey.get(String(align)).pos[1]);
        for (const other of below ?? []) y = Math.max(y, bottom(byKey.get(String(other))) + GAP_OTHER_GROUP);
        node.pos = [x, y];
        y = bottom(node);
        if (!free) width = Math.max(width, node.size[0]);
        previous = String(id);
      }
      x += width + GAP_X;
    }
    moved = JSON.stringify([...byKey.values()].map((node) => [...node.pos])) !== before;
  }
  const placed = new Set(layout.columns.flat().map((entry) => String(typeof entry === "object" ? entry.id : entry)));
  const unplaced = [...byKey.keys()].filter((key) => !placed.has(key));
  if (unplaced.length) throw new Error(`layout does not place ${unplaced.join(", ")}`);

  for (const { title, nodes } of layout.groups) {
    const members = nodes.map((id) => byKey.get(String(id)));
    const left = Math.min(...members.map((n) => n.pos[0])) - PAD;
    const top = Math.min(...members.map((n) => n.pos[1] - TITLE)) - HEADER;
    const right = Math.max(...members.map((n) => n.pos[0] + n.size[0])) + PAD;
    const lowest = Math.max(...members.map(bottom)) + PAD;
    const group = new LGraphGroup(title);
    group.pos = [left, top];
    group.size = [right - left, lowest - top];
    app.graph.add(group);
  }
}

/** Runs in the page: zoom so that every node and group fills the canvas. */
function fitInPage(zoom) {
  const { app, LiteGraph } = window;
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const boxes = [
    ...app.graph.nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]),
    ...app.graph.groups.map((g) => [g.pos[0], g.pos[1], g.size[0], g.size[1]]),
  ];
  const x0 = Math.min(...boxes.map((b) => b[0]));
  const y0 = Math.min(...boxes.map((b) => b[1]));
  const x1 = Math.max(...boxes.map((b) => b[0] + b[2]));
  const y1 = Math.max(...boxes.map((b) => b[1] + b[3]));
  app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], { zoom });
  app.graph.setDirtyCanvas(true, true);
}

/**
 * Runs in the page: what the Export and Export (API) menu entries write, without the saved view
 * (`extra.ds`), so that ComfyUI fits the graph to each user's window when it opens the file.
 */
async function exportInPage() {
  const prompt = await window.app.graphToPrompt();
  delete prompt.workflow.extra.ds;
  return { ui: prompt.workflow, api: prompt.output };
}

/** Runs in the page: change settings; returns their previous values. */
async function setInPage(settings) {
  const store = window.app.extensionManager.setting;
  const previous = Object.fromEntries(Object.keys(settings).map((id) => [id, store.get(id)]));
  for (const [id, value] of Object.entries(settings)) await store.set(id, value);
  return previous;
}

const json = (value) => `${JSON.stringify(value, null, 2)}\n`;

/** workflows/<title>.json etc. of `name`, and the title; an error when template_titles.json has none. */
function titleOf(name) {
  const title = TITLES[name];
  if (!title) throw new Error(`no title for ${name} in template_titles.json`);
  return title;
}

async function exportOne(context, url, name, stamp, thumbnailOnly) {
  const api = JSON.parse(readFileSync(join(REPO, "workflows", "api", `${name}.json`), "utf8"));
  const { page, errors } = await openComfy(context, url);
  await page.evaluate(({ api, name }) => window.app.loadApiJson(api, name), { api, name });
  let exported = null;
  let restore = null;
  if (thumbnailOnly) {
    exported = { ui: JSON.parse(readFileSync(join(REPO, "workflows", `${titleOf(name)}.json`), "utf8")) };
    // The settings first: changed after the committed file is open, the graph view is rebuilt under it and
    // the frontend logs "Attempted to cleanup event listeners for graph that was never set up".
    restore = await page.evaluate(setInPage, THUMBNAIL_SETTINGS);
  } else {
    const layout = LAYOUTS[name];
    if (!layout) throw new Error(`no layout for ${name} in workflow_layout.mjs`);
    await page.evaluate(arrangeInPage, { layout, minSize: MIN_SIZE, noteSize: NOTE_SIZE });
    exported = await page.evaluate(exportInPage);
  }
  // Load the export like a user who opens the file, so the thumbnail shows what they will see.
  await page.evaluate(({ ui, name }) => window.app.loadGraphData(ui, true, true, name), { ui: exported.ui, name });
  restore ??= await page.evaluate(setInPage, THUMBNAIL_SETTINGS);
  await page.evaluate(() => (window.app.extensionManager.focusMode = true));
  await page.addStyleTag({ content: ".comfy-menu-hamburger { display: none !important; }" }); // focus mode's exit
  await page.waitForTimeout(1000); // image previews and DOM widgets settle, the tab bar leaves
  await page.evaluate(fitInPage, 0.96);
  await page.waitForTimeout(500);
  const thumbnail = withComment(await jpegUnder(page, THUMBNAIL.maxBytes - stamp.length - 4), stamp);
  await page.evaluate(setInPage, restore);
  await page.close();
  const problems = realErrors(errors);
  if (problems.length) throw new Error(`${name}: the page reported errors:\n${JSON.stringify(problems, null, 1)}`);
  const title = titleOf(name);
  if (!thumbnailOnly) {
    exported.ui.id = stableId(name); // a fixed workflow id keeps regenerated files diff-free
    writeFileSync(join(REPO, "workflows", "api", `${name}.json`), json(exported.api));
    writeFileSync(join(REPO, "workflows", `${title}.json`), json(exported.ui));
  }
  writeFileSync(join(REPO, "workflows", `${title}.jpg`), thumbnail);
  return { name, nodes: exported.ui.nodes.length, thumbnailBytes: thumbnail.length };
}

/** The canvas as a JPEG no larger than `maxBytes`, at the best quality that fits. */
async function jpegUnder(page, maxBytes) {
  const canvas = page.locator("#graph-canvas");
  for (const quality of [80, 70, 60, 50, 40]) {
    const image = await canvas.screenshot({ type: "jpeg", quality });
    if (image.length <= maxBytes) return image;
  }
  throw new Error(`the thumbnail stays above ${maxBytes} bytes`);
}

/** `jpeg` with a COM segment holding `text` (ASCII), after its JFIF header; PIL reads it as info["comment"]. */
function withComment(jpeg, text) {
  const body = Buffer.from(text, "ascii");
  const header = Buffer.from([0xff, 0xfe, 0, 0]);
  header.writeUInt16BE(body.length + 2, 2);
  const at = jpeg[2] === 0xff && jpeg[3] === 0xe0 ? 4 + jpeg.readUInt16BE(4) : 2;
  return Buffer.concat([jpeg.subarray(0, at), header, body, jpeg.subarray(at)]);
}

/** A UUID-shaped id derived from the workflow's name. */
function stableId(name) {
  const hex = createHash("sha1").update(`face2diffusion/${name}`).digest("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-5${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

async function main() {
  const options = {
    url: { type: "string" },
    stamp: { type: "string" },
    only: { type: "string", multiple: true },
    "thumbnail-only": { type: "boolean" },
  };
  const { values } = parseArgs({ options });
  if (!values.url || !values.stamp) {
    throw new Error(
      "usage: export_workflows.mjs --url http://127.0.0.1:8188 --stamp TEXT [--only NAME] [--thumbnail-only]",
    );
  }
  const url = values.url.replace(/\/$/, "");
  const names =
    values.only ??
    readdirSync(join(REPO, "workflows", "api"))
      .filter((file) => file.endsWith(".json"))
      .map((file) => file.slice(0, -".json".length))
      .sort();
  await prepareServer(url);
  const { context, close } = await launch({ viewport: { width: THUMBNAIL.width, height: THUMBNAIL.height } });
  try {
    for (const name of names) console.log(JSON.stringify(await exportOne(context, url, name, values.stamp, values["thumbnail-only"])));
  } finally {
    await close();
  }
}

await main();
