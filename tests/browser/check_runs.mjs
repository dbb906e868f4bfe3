#!/usr/bin/env node
/**
 * Run small graphs through the page against the real server (nothing intercepted) and report what the
 * page shows afterwards; test_browser.py asserts.
 *
 *   node tests/browser/check_runs.mjs CONFIG.json
 *
 * CONFIG: {url, checkpoint, faceFile, saveName, facesDir, facePhoto, noFacePhoto, out}: the test server's
 * checkpoint, a saved face it has, the name Save F2D Face gets, the server's saved-faces folder, uploaded
 * photos with and without a face the test detector finds. Writes `<out>/runs.json` and screenshots
 * `<out>/run_*.png`.
 *  - firstFace: the page opened while no face is saved (facesDir emptied for that moment): Load F2D Face's
 *    value, the server's error when it is queued so, and its value (and a new node's) once Save F2D Face
 *    has written a face.
 *  - failedRun: Encode Face -> Aligned face preview run on a face, then on a photo without one: the
 *    message line and the preview after each run.
 *  - savedFace: Load F2D Face -> Save F2D Face, queued with the Run command; then the message under the
 *    save node, and the face lists of the open Load F2D Face nodes and of one added afterwards (no reload).
 *  - emptyIdentifier: Apply F2D Tokens with an empty identifier, queued; the server's node errors, the
 *    sockets the page marks, the extension's warning toast and the status line.
 */
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
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

/** Runs in the page: a node's widget value, as the page would send it. */
function widgetValueInPage({ id, name }) {
  const value = window.app.graph.getNodeById(Number(id)).widgets.find((w) => w.name === name).value;
  return value === undefined ? "<undefined>" : value;
}

async function checkFirstFace(context, config) {
  const hidden = join(config.out, "faces_hidden_while_the_page_opens");
  mkdirSync(hidden, { recursive: true });
  const names = readdirSync(config.facesDir).filter((name) => name.endsWith(".safetensors"));
  let page;
  let errors;
  let ids;
  let whenEmpty;
  try {
    for (const name of names) renameSync(join(config.facesDir, name), join(hidden, name));
    ({ page, errors } = await openComfy(context, config.url));
    ids = await page.evaluate(buildGraphInPage, {
      nodes: { first: ["F2DLoadFace", {}], preview: ["PreviewImage", {}] },
      links: [["first", 1, "preview", "images"]],
    });
    whenEmpty = await page.evaluate(widgetValueInPage, { id: ids.first, name: "face_file" });
  } finally {
    for (const name of names) renameSync(join(hidden, name), join(config.facesDir, name));
  }
  await queue(page);
  await page
    .waitForFunction((id) => window.app.lastNodeErrors?.[id], ids.first, { timeout: 30_000 })
    .catch(() => {}); // reported below
  const serverErrors = await page.evaluate((id) => window.app.lastNodeErrors?.[id]?.errors ?? null, ids.first);
  await page.keyboard.press("Escape"); // the error dialog
  // Save a face from a node added with a face chosen; the first node is still in the graph, unconnected.
  const saveIds = await page.evaluate(
    ({ faceFile, saveName }) => {
      const { app, LiteGraph } = window;
      const load = LiteGraph.createNode("F2DLoadFace");
      const save = LiteGraph.createNode("F2DSaveFace");
      app.graph.add(load);
      app.graph.add(save);
      load.pos = [50, 400];
      save.pos = [450, 400];
      load.widgets.find((w) => w.name === "face_file").value = faceFile;
      save.widgets.find((w) => w.name === "name").value = saveName;
      load.connect(0, save, save.findInputSlot("f2d_face"));
      return { load: String(load.id), save: String(save.id) };
    },
    { faceFile: config.faceFile, saveName: `${config.saveName}_first` },
  );
  await page.evaluate((id) => {
    const node = window.app.graph.getNodeById(Number(id)); // the unconnected first node would fail the run
    node.mode = 4; // bypass
  }, ids.preview);
  await page.evaluate((id) => {
    window.app.graph.getNodeById(Number(id)).mode = 4;
  }, ids.first);
  await queue(page);
  await page
    .waitForFunction(
      ({ id }) => {
        const value = window.app.graph.getNodeById(Number(id)).widgets.find((w) => w.name === "face_file").value;
        return typeof value === "string" && value.endsWith(".safetensors");
      },
      { id: ids.first },
      { timeout: 60_000 },
    )
    .catch(() => {}); // reported below
  const afterSave = await page.evaluate(widgetValueInPage, { id: ids.first, name: "face_file" });
  const savedMessage = await page.evaluate(nodeStateInPage, { id: saveIds.save, combo: "name" });
  const added = await page.evaluate(() => {
    const node = window.LiteGraph.createNode("F2DLoadFace");
    window.app.graph.add(node);
    node.pos = [50, 700];
    const value = node.widgets.find((w) => w.name === "face_file").value;
    return value === undefined ? "<undefined>" : value;
  });
  await page.screenshot({ path: join(config.out, "run_first_face.png") });
  await page.close();
  return { whenEmpty, serverErrors, afterSave, added, savedMessage: savedMessage.message, errors };
}

/** Runs in the page: an Encode Face's message line and a preview node's images (drawn and stored). */
function shownResultInPage({ encode, preview }) {
  const { app } = window;
  const node = app.graph.getNodeById(Number(encode));
  const previewNode = app.graph.getNodeById(Number(preview));
  return {
    message: node.widgets.find((w) => w.name === "f2d_node_message")?.element?.textContent ?? null,
    previewImages: previewNode.imgs?.length ?? 0,
    previewOutputs: app.nodeOutputs?.[String(preview)]?.images?.length ?? 0,
  };
}

async function checkFailedRun(context, config) {
  const { page, errors } = await openComfy(context, config.url);
  const ids = await page.evaluate(buildGraphInPage, {
    nodes: {
      model: ["F2DLoadMSIDEncoder", config.loader],
      photo: ["LoadImage", { image: config.facePhoto }],
      encode: ["F2DEncodeFace", { if_no_face: "error" }],
      preview: ["PreviewImage", {}],
    },
    links: [
      ["model", 0, "encode", "f2d_model"],
      ["photo", 0, "encode", "image"],
      ["encode", 1, "preview", "images"],
    ],
  });
  const shown = () => page.evaluate(shownResultInPage, ids);
  await queue(page);
  await page
    .waitForFunction((id) => window.app.graph.getNodeById(Number(id)).imgs?.length, ids.preview, { timeout: 120_000 })
    .catch(() => {}); // reported below
  const afterSuccess = await shown();
  await page.evaluate(
    ({ id, image }) => {
      window.app.graph.getNodeById(Number(id)).widgets.find((w) => w.name === "image").value = image;
    },
    { id: ids.photo, image: config.noFacePhoto },
  );
  const failed = page.evaluate(
    () => new Promise((resolve) => window.app.api.addEventListener("execution_error", resolve, { once: true })),
  );
  await queue(page);
  await Promise.race([failed, page.waitForTimeout(120_000)]);
  await page.waitForTimeout(500); // the canvas redraws
  const afterFailure = await shown();
  await page.keyboard.press("Escape"); // the error dialog
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(config.out, "run_failed_run.png") });
  await page.close();
  return { afterSuccess, afterFailure, errors };
}

async function main() {
  const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
  await prepareServer(config.url);
  const { context, close } = await launch();
  const report = {};
  try {
    report.savedFace = await checkSavedFace(context, config);
    report.emptyIdentifier = await checkEmptyIdentifier(context, config);
    report.firstFace = await checkFirstFace(context, config);
    report.failedRun = await checkFailedRun(context, config);
  } finally {
    await close();
    writeFileSync(join(config.out, "runs.json"), JSON.stringify(report, null, 1));
  }
}

await main();
