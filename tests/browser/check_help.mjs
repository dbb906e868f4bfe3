#!/usr/bin/env node
/**
 * Open a node's help page as a user does, in ComfyUI's real frontend: the node library (sidebar), search
 * for the node, its "?" (learn more) button; report what the help panel shows. test_help_pages.py asserts
 * on the report.
 *
 *   node tests/browser/check_help.mjs CONFIG.json
 *
 * CONFIG: {url, pack, search, displayName, out}. Writes `<out>/help_report.json` and `<out>/help.png`.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { launch, openComfy, prepareServer } from "./comfy_page.mjs";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
await prepareServer(config.url);
const { context, close } = await launch();
try {
  const { page, errors } = await openComfy(context, config.url);
  const fetched = [];
  page.on("response", (response) => {
    const path = new URL(response.url()).pathname;
    if (path.includes("/docs/")) fetched.push({ path, status: response.status() });
  });

  await page.evaluate(() => window.app.extensionManager.command.execute("Workspace.ToggleSidebarTab.node-library"));
  const search = page.locator(".node-lib-search-box input").first();
  await search.waitFor({ timeout: 30_000 });
  await search.fill(config.search);
  const leaf = page.locator(".node-lib-node-container", { hasText: config.displayName }).first();
  await leaf.waitFor({ timeout: 30_000 });
  await leaf.hover();
  await leaf.locator(".help-button").click();

  const content = page.locator(".node-help-content");
  await content.waitFor({ timeout: 30_000 });
  await page.waitForFunction(
    () => document.querySelector(".node-help-content h1") !== null,
    null,
    { timeout: 30_000 },
  );
  // Pictures: wait until each has loaded (or failed), then record their natural size.
  await page.waitForFunction(
    () => [...document.querySelectorAll(".node-help-content img")].every((img) => img.complete),
    null,
    { timeout: 30_000 },
  );
  const shown = await page.evaluate(() => {
    const root = document.querySelector(".node-help-content");
    return {
      heading: root.querySelector("h1")?.textContent ?? null,
      headings: [...root.querySelectorAll("h2")].map((h) => h.textContent),
      text: root.textContent,
      images: [...root.querySelectorAll("img")].map((img) => ({
        src: img.getAttribute("src"),
        alt: img.getAttribute("alt"),
        width: img.naturalWidth,
        height: img.naturalHeight,
      })),
    };
  });
  await page.screenshot({ path: join(config.out, "help.png") });
  writeFileSync(join(config.out, "help_report.json"), JSON.stringify({ ...shown, fetched, errors }, null, 1));
} finally {
  await close();
}
