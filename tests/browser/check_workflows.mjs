#!/usr/bin/env node
/**
 * Open each bundled workflow in ComfyUI's real frontend, as a user opening it from the template browser,
 * and report what the page shows; test_browser.py asserts on the report.
 *
 *   node tests/browser/check_workflows.mjs CONFIG.json
 *
 * CONFIG: {url, pack, workflows: [name], titles: {name: title}, identifierCases: [[text, identifier]], promptWithoutIdentifier, out}.
 * Writes
 * `<out>/report.json` and a screenshot per workflow (`<out>/<name>.png`). Queueing is intercepted
 * (POST /api/prompt answers without running anything) so that what the frontend would send is recorded.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { launch, openComfy, prepareServer } from "./comfy_page.mjs";

const WARNING_TOAST = ".p-toast-message";

/** Record every queued prompt instead of running it. */
async function interceptQueue(page) {
  const queued = [];
  await page.route("**/api/prompt", async (route) => {
    if (route.request().method() !== "POST") return route.continue();
    queued.push(route.request().postDataJSON().prompt);
    const answer = { prompt_id: `f2d-browser-test-${queued.length}`, number: queued.length, node_errors: {} };
    await route.fulfill({ json: answer });
  });
  return queued;
}

/** Runs in the page: every Apply F2D Tokens node's prompt, identifier and status line. */
function applyNodesInPage() {
  return window.app.graph.nodes
    .filter((node) => ["F2DApplyTokens", "F2DAddPerson"].includes(node.comfyClass))
    .map((node) => {
      const value = (name) => node.widgets.find((w) => w.name === name)?.value;
      const status = node.widgets.find((w) => w.name === "f2d_identifier_status");
      return {
        id: String(node.id),
        text: value("text"),
        identifier: value("identifier"),
        status: status?.element?.textContent ?? null,
        state: status?.element?.dataset.state ?? null,
      };
    });
}

/** Runs in the page: show a node at 100% zoom in the middle of the canvas, and tag its DOM widgets. */
function focusNodeInPage(id) {
  const { app } = window;
  const node = app.graph.getNodeById(id);
  app.canvas.ds.scale = 1;
  app.canvas.centerOnNode(node);
  app.graph.setDirtyCanvas(true, true);
  for (const widget of node.widgets) {
    const element = widget.inputEl ?? widget.element;
    if (element) element.dataset.f2dTest = `${widget.name}-${id}`;
  }
}

/** Whether each Apply F2D Tokens node's status line is visible on screen when the node is shown at 100%. */
async function statusVisibility(page, nodes) {
  const visible = {};
  for (const { id } of nodes) {
    await page.evaluate(focusNodeInPage, id);
    const status = page.locator(`[data-f2d-test="f2d_identifier_status-${id}"]`);
    visible[id] = await status.waitFor({ state: "visible", timeout: 5000 }).then(() => true, () => false);
  }
  return visible;
}

/** Queue through the Run command, as the Run button does; returns the prompt the frontend sent. */
async function queue(page, queued) {
  const before = queued.length;
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.QueuePrompt"));
  for (let i = 0; i < 50 && queued.length === before; i++) await page.waitForTimeout(100);
  return queued.length > before ? queued.at(-1) : null;
}

async function toasts(page) {
  return page.locator(WARNING_TOAST).allInnerTexts();
}

/** Type `prompt` (which lacks the identifier) into the first Apply F2D Tokens node, then queue; null without one. */
async function checkMissingIdentifier(page, queued, prompt) {
  const [first] = await page.evaluate(applyNodesInPage);
  if (!first) return null;
  const nodeId = first.id;
  await page.evaluate(focusNodeInPage, nodeId);
  const textarea = page.locator(`textarea[data-f2d-test="text-${nodeId}"]`);
  await textarea.waitFor({ state: "visible" });
  await textarea.fill(prompt);
  const statusAfterTyping = (await page.evaluate(applyNodesInPage)).find((n) => n.id === nodeId);
  const sent = await queue(page, queued);
  const warning = page.locator(WARNING_TOAST, { hasText: "identifier missing" }).first();
  await warning.waitFor({ timeout: 10_000 }).catch(() => {}); // its absence is reported, not thrown
  return { nodeId, statusAfterTyping, toasts: await toasts(page), sentText: sent?.[nodeId]?.inputs?.text ?? null };
}

async function checkWorkflow(context, config, name) {
  const { page, errors } = await openComfy(context, config.url);
  const queued = await interceptQueue(page);
  const result = { name };
  const template = encodeURIComponent(config.titles[name]);
  const response = await page.request.get(`${config.url}/api/workflow_templates/${config.pack}/${template}.json`);
  result.served = response.ok();
  const ui = await response.json();
  result.missingNodeTypes = await page.evaluate(
    (nodes) => nodes.map((n) => n.type).filter((type) => !(type in window.LiteGraph.registered_node_types)),
    ui.nodes,
  );
  await page.evaluate(({ ui, name }) => window.app.loadGraphData(ui, true, true, name), { ui, name });
  await page.waitForTimeout(1500); // previews load, DOM widgets are placed
  result.dialogs = await page.locator(".p-dialog").allInnerTexts();
  result.loadedNodeTypes = await page.evaluate(() => window.app.graph.nodes.map((n) => n.type));
  result.applyNodes = await page.evaluate(applyNodesInPage);
  result.screenshot = join(config.out, `${name}.png`);
  await page.screenshot({ path: result.screenshot });
  result.statusVisible = await statusVisibility(page, result.applyNodes);
  result.queued = await queue(page, queued);
  result.toastsAfterQueue = await toasts(page);
  result.missingIdentifier = await checkMissingIdentifier(page, queued, config.promptWithoutIdentifier);
  if (result.missingIdentifier) await page.screenshot({ path: join(config.out, `${name}_missing_identifier.png`) });
  result.errors = errors;
  await page.close();
  return result;
}

/** Runs in the page: the served f2d_identifier.js on each case. */
async function countInPage({ pack, cases }) {
  const { countIdentifier } = await import(`/extensions/${pack}/f2d_identifier.js`);
  return cases.map(([text, identifier]) => ({ text, identifier, count: countIdentifier(text, identifier) }));
}

/** Runs in the page: two Train F2D Mapper nodes; progress events (as the server sends them) name one. */
async function sparklineInPage() {
  const { app, LiteGraph } = window;
  const { api } = window.comfyAPI.api;
  const [node, other] = [LiteGraph.createNode("F2DTrainMapper"), LiteGraph.createNode("F2DTrainMapper")];
  app.graph.add(node);
  app.graph.add(other);
  const send = (detail) => api.dispatchCustomEvent("f2d.training.progress", { node: String(node.id), ...detail });
  [0.9, 0.7, 0.8, 0.5, 0.45, 0.3].forEach((loss, i) => send({ step: i + 1, total: 100, loss }));
  const read = (n) => {
    const element = n.widgets?.find((w) => w.name === "f2d_loss_sparkline")?.element;
    return {
      label: element?.querySelector("div")?.textContent ?? null,
      points: element?.querySelector("polyline")?.getAttribute("points")?.split(" ").filter(Boolean).length ?? 0,
    };
  };
  const afterRun = read(node);
  send({ step: 1, total: 50, loss: 1.5 });
  const prompt = await app.graphToPrompt();
  return {
    afterRun,
    otherNode: read(other),
    afterRestart: read(node),
    lastWidget: node.widgets.at(-1).name,
    savedValues: node.serialize().widgets_values.length,
    widgets: node.widgets.length,
    promptInputs: Object.keys(prompt.output[String(node.id)]?.inputs ?? {}),
  };
}

async function main() {
  const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
  await prepareServer(config.url);
  const { context, close } = await launch();
  const report = { workflows: {} };
  try {
    const { page, errors } = await openComfy(context, config.url);
    // Screenshots in full detail at any zoom, so they show the whole graph legibly (a stored setting).
    await page.evaluate(() => window.app.extensionManager.setting.set("LiteGraph.Canvas.MinFontSizeForLOD", 0));
    report.identifierCounts = await page.evaluate(countInPage, { pack: config.pack, cases: config.identifierCases });
    report.sparkline = await page.evaluate(sparklineInPage);
    await page.screenshot({ path: join(config.out, "boot.png") });
    report.bootErrors = errors;
    await page.close();
    for (const name of config.workflows) report.workflows[name] = await checkWorkflow(context, config, name);
  } finally {
    await close();
    writeFileSync(join(config.out, "report.json"), JSON.stringify(report, null, 1));
  }
}

await main();
