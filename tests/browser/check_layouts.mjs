#!/usr/bin/env node
/**
 * Open each bundled template the way the template browser does, in a 1600×1000 window with the frontend's
 * default settings, and report what the user sees at the fit the frontend picks: its zoom against the zoom
 * below which LiteGraph draws no text, every node's and group's rectangle, overlaps, and DOM widgets whose
 * text does not fit. Before measuring, the nodes that report text when they run (Encode Face, the save
 * nodes, the score tables) are shown a typical message, and the nodes that show pictures when they run (Face
 * Similarity's strip) typical pictures, through the frontend's own `executed` handling, so the room they take
 * is measured too. test_browser.py asserts.
 *
 *   node tests/browser/check_layouts.mjs CONFIG.json
 *
 * CONFIG: {url, pack, workflows: [name], titles: {name: title}, messages: {node type: [text lines]},
 * pictures: {node type: count}, picture: an input file's name, out}.
 * Writes `<out>/layouts.json` and a screenshot per template (`<out>/layout_<name>.png`).
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { launch, openComfy, prepareServer, VIEWPORT } from "./comfy_page.mjs";

/** The frontend's default of "LiteGraph.Canvas.MinFontSizeForLOD" (other scripts store 0 for screenshots). */
const DEFAULT_MIN_FONT_SIZE_FOR_LOD = 8;

/** Runs in the page: each node's typical run output (text, pictures), handed to the frontend as the server's
 * `executed` event is. */
function showMessagesInPage({ messages, pictures, picture }) {
  const { app } = window;
  for (const node of app.graph.nodes) {
    const text = messages[node.comfyClass];
    const count = pictures[node.comfyClass] ?? 0;
    if (!text && !count) continue;
    const output = {};
    if (text) output.text = text;
    if (count) output.images = Array.from({ length: count }, () => ({ filename: picture, subfolder: "", type: "input" }));
    const id = String(node.id);
    app.api.dispatchCustomEvent("executed", { node: id, display_node: id, output, prompt_id: "layout-check" });
  }
  app.graph.setDirtyCanvas(true, true);
}

/**
 * Runs in the page: the view; every node's and group's rectangle (graph units, a node's with its title); a
 * group's title width and each node's (and the room the node draws it in); on screen, each node's rectangle, its DOM widgets' rectangles and whether their text
 * is cut off; and the minimap's rectangle.
 */
function measureInPage() {
  const { app, LiteGraph } = window;
  const canvas = app.canvas;
  const box = canvas.canvas.getBoundingClientRect();
  const toScreen = ([x, y, w, h]) => {
    const [sx, sy] = canvas.ds.convertOffsetToCanvas([x, y]);
    return [box.left + sx, box.top + sy, w * canvas.ds.scale, h * canvas.ds.scale];
  };
  const screenRect = (element) => {
    const r = element.getBoundingClientRect();
    return [r.left, r.top, r.width, r.height];
  };
  const nodes = app.graph.nodes.map((node) => {
    const rect = [...node.boundingRect];
    const widgets = (node.widgets ?? [])
      .filter((widget) => widget.element?.isConnected && widget.element.offsetParent)
      .map((widget) => {
        const e = widget.element;
        // a text box scrolls by design, a picture scales; a status or message line, or a score table, must show
        // all its rows (a table may scroll sideways)
        const scrolls = e.tagName === "TEXTAREA" || getComputedStyle(e).overflow === "auto";
        const picture = Boolean(e.querySelector?.("svg, canvas, img"));
        const rowsCut = e.scrollHeight > e.clientHeight + 1;
        const table = e.classList?.contains("f2d-score-table");
        const cut = !picture && (table ? rowsCut : !scrolls && (rowsCut || e.scrollWidth > e.clientWidth + 1));
        return { name: widget.name, text: e.textContent ?? "", cut, screen: screenRect(e) };
      });
    // LGraphNode.drawTitleText shortens a title with "..." beyond the node's width less two title heights
    canvas.ctx.font = node.titleFontStyle ?? `${LiteGraph.NODE_TEXT_SIZE}px ${LiteGraph.NODE_FONT}`;
    const titleFit = {
      width: canvas.ctx.measureText(node.title).width,
      room: node.size[0] - 2 * LiteGraph.NODE_TITLE_HEIGHT,
    };
    const screen = toScreen(rect);
    return { id: String(node.id), type: node.type, title: node.title, rect, screen, widgets, titleFit };
  });
  const ctx = canvas.ctx;
  const groups = app.graph.groups.map((group) => {
    ctx.font = `${group.font_size || LiteGraph.DEFAULT_GROUP_FONT_SIZE}px ${LiteGraph.GROUP_FONT}`; // as LGraphGroup.draw
    return { title: group.title, rect: [...group._bounding], titleWidth: ctx.measureText(group.title).width + 4 };
  });
  const minimap = [...document.querySelectorAll(".litegraph-minimap, .minimap-container, [class*='minimap']")]
    .filter((e) => e.offsetParent && e.getBoundingClientRect().width > 50)
    .map(screenRect);
  return {
    scale: canvas.ds.scale,
    lowQuality: canvas.low_quality,
    lowQualityBelow: canvas._lowQualityZoomThreshold,
    minFontSizeForLod: canvas.min_font_size_for_lod,
    devicePixelRatio: window.devicePixelRatio,
    canvasSize: [box.width, box.height],
    nodes,
    groups,
    minimap,
  };
}

async function checkLayout(context, config, name) {
  const { page, errors } = await openComfy(context, config.url);
  await page.evaluate(
    (value) => window.app.extensionManager.setting.set("LiteGraph.Canvas.MinFontSizeForLOD", value),
    DEFAULT_MIN_FONT_SIZE_FOR_LOD,
  );
  const title = config.titles[name];
  const response = await page.request.get(
    `${config.url}/api/workflow_templates/${config.pack}/${encodeURIComponent(title)}.json`,
  );
  const ui = await response.json();
  // What the template browser does on a click: load with the view fitted to the nodes (ui has no saved view).
  await page.evaluate(({ ui, title }) => window.app.loadGraphData(ui, true, true, title), { ui, title });
  await page.waitForTimeout(1500); // previews load, DOM widgets are placed
  await page.evaluate(showMessagesInPage, config);
  await page.waitForTimeout(2500); // pictures load, nodes grow to them
  const result = { name, title, ...(await page.evaluate(measureInPage)) };
  result.screenshot = join(config.out, `layout_${name}.png`);
  await page.screenshot({ path: result.screenshot });
  result.errors = errors;
  await page.close();
  return result;
}

async function main() {
  const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
  await prepareServer(config.url);
  const { context, close } = await launch({ viewport: VIEWPORT });
  const report = { viewport: VIEWPORT, workflows: {} };
  try {
    for (const name of config.workflows) report.workflows[name] = await checkLayout(context, config, name);
  } finally {
    await close();
    writeFileSync(join(config.out, "layouts.json"), JSON.stringify(report, null, 1));
  }
}

await main();
