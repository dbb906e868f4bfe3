/**
 * ComfyUI's real frontend in headless Chromium (Debian's, through playwright-core): launch, open a
 * server's page ready to use, and collect the page's errors minus the known harmless ones.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

export const CHROMIUM = process.env.F2D_CHROMIUM ?? "/usr/bin/chromium";
export const VIEWPORT = { width: 1600, height: 1000 };

/** Settings a fresh user directory needs so the page opens on the canvas, quietly and offline. */
const QUIET_SETTINGS = {
  "Comfy.TutorialCompleted": true, // no template browser on first start
  "Comfy.Notification.ShowVersionUpdates": false, // no release check against api.comfy.org
  // Frontend 1.27.10 throws "reading 'id'" on a fresh user when NavigationMode's onChange sets these
  // two settings before they are registered; stored values that already match make it a no-op.
  "Comfy.Canvas.LeftMouseClickBehavior": "panning",
  "Comfy.Canvas.MouseWheelScroll": "zoom",
};

/**
 * Errors a page shows on every start against a fresh test server, none of them about this pack:
 * [path of the 404 resource, why it is harmless].
 */
export const HARMLESS_404 = [
  ["/user.css", "optional user stylesheet; the test user has none"],
  ["/api/userdata/user.css", "the same stylesheet, looked up in the user directory"],
  ["/favicon.ico", "ComfyUI serves no favicon at this path"],
  ["/api/userdata?dir=workflows", "the fresh user directory has no saved workflows folder yet"],
  ["/api/userdata?dir=subgraphs", "the fresh user directory has no saved subgraphs folder yet"],
  ["/api/userdata/comfy.templates.json", "no saved node templates yet"],
];

/** Why an error is harmless, or null when it must fail the test. */
export function harmlessReason(error) {
  if (error.kind !== "console" || !/status of 404/.test(error.text)) return null;
  const path = error.url.replace(/^https?:\/\/[^/]+/, "");
  return HARMLESS_404.find(([prefix]) => path.startsWith(prefix))?.[1] ?? null;
}

/**
 * Launch Chromium the way the CI machine can run it (no sandbox, no GPU, no outside connections), with
 * a fresh profile. Returns {context, close}: pages of the context share viewport and scale; `close()`
 * ends Chromium and deletes the profile.
 */
export async function launch({ viewport = VIEWPORT, deviceScaleFactor = 1 } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "f2d-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    deviceScaleFactor,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
  };
  return { context, close };
}

/** Store the quiet settings for the server's (default) user; they persist in its user directory. */
export async function prepareServer(url) {
  const response = await fetch(`${url}/api/settings`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(QUIET_SETTINGS),
  });
  if (!response.ok) throw new Error(`POST ${url}/api/settings answered ${response.status}`);
}

/**
 * Open ComfyUI at `url` and wait until the graph canvas and the pack's nodes are there.
 * Returns {page, errors}: `errors` collects console errors and page errors from then on, each as
 * {kind, text, url, stack, harmless}.
 */
export async function openComfy(context, url) {
  const page = await context.newPage();
  const errors = [];
  const record = (error) => errors.push({ ...error, harmless: harmlessReason(error) });
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    record({ kind: "console", text: message.text(), url: message.location().url ?? "" });
  });
  page.on("pageerror", (error) => record({ kind: "page", text: error.message, url: "", stack: error.stack ?? "" }));
  await page.goto(url);
  await page.waitForFunction(
    () => window.app?.graph && window.app?.canvas && window.LiteGraph?.registered_node_types?.F2DApplyTokens,
    null,
    { timeout: 120_000 },
  );
  await page.evaluate(() => document.fonts.ready);
  return { page, errors };
}

/** Errors that are not known to be harmless. */
export const realErrors = (errors) => errors.filter((error) => !error.harmless);
