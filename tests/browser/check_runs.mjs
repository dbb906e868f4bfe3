#!/usr/bin/env node
/**
 * Run small graphs through the page against the real server (nothing intercepted) and report what the
 * page shows afterwards; test_browser.py asserts.
 *
 *   node tests/browser/check_runs.mjs CONFIG.json
 *
 * CONFIG: {url, checkpoint, faceFile, saveName, out}: the test server's checkpoint, a saved face it has,
 * the name Save F2D Face gets. Writes `<out>/runs.json` and screenshots `<out>/run_*.png`.
 *  - savedFace: Load F2D Face -> Save F2D Face, queued with the Run command; then the message under the
 *    save node, and the face lists of the open Load F2D Face nodes and of one added afterwards (no reload).
 *  - emptyIdentifier: Apply F2D Tokens with an empty identifier, queued; the server's node errors, the
 *    sockets the page marks, the extension's warning toast and the status line.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { launch, openComfy, prepareServer } from "./comfy_page.mjs";

const TOAST = ".p-toast-message";

/** Runs in the page: a new graph of the given nodes ({key: [type, {widget: value}]}) and links. */
function buildGraphInPage({ nodes, links }) {
  const { app, LiteGraph } = window;
  app.graph.clear();
  const made = {};
  let x = 50;
  for (const [key, [type, values]] of Object.entries(nodes)) {
    const node = LiteGraph.createNode(type);
    app.graph.add(node);
    node.pos = [x, 100];
    x += node.size[0] + 60;
    for (const [name, value] of Object.entries(values)) {
      const widget = node.widgets.find((w) => w.name === name);
      if (!widget) throw new Error(`${type} has no widget ${name}`);
      widget.value = value;
    }
    made[key] = node;
  }
  for (const [from, slot, to, input] of links) {
    made[from].connect(slot, made[to], made[to].findInputSlot(input));
  }
  app.canvas.ds.scale = 1;
  app.canvas.ds.offset = [0, 0];
  app.graph.setDirtyCanvas(true, true);
  return Object.fromEntries(Object.entries(made).map(([key, node]) => [key, String(node.id)]));
}

async function queue(page) {
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.QueuePrompt"));
}

/** Runs in the page: a node's combo options, its f2d message line and whether the line shows all its text. */
function nodeStateInPage({ id, combo }) {
  const node = window.app.graph.getNodeById(Number(id));
  const message = node.widgets.find((w) => w.name === "f2d_node_message")?.element;
  return {
    options: node.widgets.find((w) => w.name === combo)?.options?.values ?? null,
    message: message?.textContent ?? null,
    messageCut: message ? message.scrollHeight > message.clientHeight + 1 : null,
  };
}

async function checkSavedFace(context, config) {
  const { page, errors } = await openComfy(context, config.url);
  const ids = await page.evaluate(buildGraphInPage, {
    nodes: {
      load: ["F2DLoadFace", { face_file: config.faceFile }],
      save: ["F2DSaveFace", { name: config.saveName }],
      other: ["F2DLoadFace", { face_file: config.faceFile }],
    },
    links: [["load", 0, "save", "f2d_face"]],
  });
  const before = await page.evaluate(nodeStateInPage, { id: ids.other, combo: "face_file" });
  await queue(page);
  const saved = new RegExp(`^${config.saveName}_\\d{5}\\.safetensors$`);
  await page
    .waitForFunction(
      ({ id, pattern }) =>
        window.app.graph
          .getNodeById(Number(id))
          .widgets.find((w) => w.name === "face_file")
          .options.values.some((v) => new RegExp(pattern).test(v)),
      { id: ids.other, pattern: saved.source },
      { timeout: 60_000 },
    )
    .catch(() => {}); // reported below
  const after = await page.evaluate(nodeStateInPage, { id: ids.other, combo: "face_file" });
  await page.waitForTimeout(500); // the save node grows to its message
  const saveNode = await page.evaluate(nodeStateInPage, { id: ids.save, combo: "name" });
  const added = await page.evaluate(() => {
    const node = window.LiteGraph.createNode("F2DLoadFace");
    window.app.graph.add(node);
    node.pos = [50, 400];
    return node.widgets.find((w) => w.name === "face_file").options.values;
  });
  await page.screenshot({ path: join(config.out, "run_saved_face.png") });
  const reloads = await page.evaluate(() => performance.getEntriesByType("navigation").length);
  await page.close();
  const { message, messageCut } = saveNode;
  return { before: before.options, after: after.options, added, message, messageCut, reloads, errors };
}

async function checkEmptyIdentifier(context, config) {
  const { page, errors } = await openComfy(context, config.url);
  const ids = await page.evaluate(buildGraphInPage, {
    nodes: {
      checkpoint: ["CheckpointLoaderSimple", { ckpt_name: config.checkpoint }],
      face: ["F2DLoadFace", { face_file: config.faceFile }],
      apply: ["F2DApplyTokens", { text: "a photo of f l", identifier: "" }],
      show: ["PreviewAny", {}],
    },
    links: [
      ["checkpoint", 1, "apply", "clip"],
      ["face", 0, "apply", "f2d_face"],
      ["apply", 0, "show", "source"],
    ],
  });
  await queue(page);
  await page
    .waitForFunction((id) => window.app.lastNodeErrors?.[id], ids.apply, { timeout: 30_000 })
    .catch(() => {}); // reported below
  await page.locator(TOAST, { hasText: "identifier" }).first().waitFor({ timeout: 10_000 }).catch(() => {});
  const seen = await page.evaluate((id) => {
    const node = window.app.graph.getNodeById(Number(id));
    const status = node.widgets.find((w) => w.name === "f2d_identifier_status")?.element;
    return {
      serverErrors: window.app.lastNodeErrors?.[id]?.errors ?? null,
      markedSockets: node.inputs.filter((slot) => slot.hasErrors).map((slot) => slot.name),
      status: status?.textContent ?? null,
    };
  }, ids.apply);
  seen.toasts = await page.locator(TOAST).allInnerTexts();
  await page.keyboard.press("Escape"); // the error dialog, so the screenshot shows the node
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(config.out, "run_empty_identifier.png") });
  await page.close();
  return { ...seen, errors };
}

async function main() {
  const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
  await prepareServer(config.url);
  const { context, close } = await launch();
  const report = {};
  try {
    report.savedFace = await checkSavedFace(context, config);
    report.emptyIdentifier = await checkEmptyIdentifier(context, config);
  } finally {
    await close();
    writeFileSync(join(config.out, "runs.json"), JSON.stringify(report, null, 1));
  }
}

await main();
