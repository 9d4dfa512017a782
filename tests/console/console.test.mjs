// The web console in a real headless Chromium (Debian's, never a downloaded one), driven
// by playwright-core, every page checked by axe-core run inside it. Started by the e2e
// test `it/console.rs`, which sets up the stack, two partners and their messages, and
// passes them here:
//   CONSOLE_API   the API's base URL          ADMIN_TOKEN  an admin token
//   PARTNER       partner A                   SUBSCRIPTION A's subscription
//   FAILED_ID     A's dead-lettered message (its server answered 400 with markup)
//   OTHER_SUBSCRIPTION, OTHER_ID   partner B's subscription and one of its messages
//   SCREENSHOTS   a folder: save a screenshot of each page there (scripts/console-screenshots.sh)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} is not set (run through the e2e test it/console.rs)`);
  return value;
};
const API = env("CONSOLE_API");
const ADMIN = env("ADMIN_TOKEN");
const PARTNER = env("PARTNER");
const SUBSCRIPTION = env("SUBSCRIPTION");
const FAILED_ID = env("FAILED_ID");
const OTHER_SUBSCRIPTION = env("OTHER_SUBSCRIPTION");
const OTHER_ID = env("OTHER_ID");
const SHOTS = process.env.SCREENSHOTS;

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    // As root on this machine; and no background calls to the closed internet.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});
after(async () => {
  await browser?.close();
});

/// A portal link from the admin API.
async function portalLink(partner, scope) {
  const response = await fetch(`${API}/v1/admin/portal-links`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: JSON.stringify({ partner, scope, ttl_secs: 600 }),
  });
  const body = await response.json();
  assert.equal(response.status, 201, JSON.stringify(body));
  return body.url;
}

/// A page of a fresh browser context (its own cookies) that fails the test on any
/// script dialog: nothing a partner's server sent may run.
async function freshPage() {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  page.on("dialog", (dialog) => {
    throw new Error(`a script ran and opened a dialog: ${dialog.message()}`);
  });
  return page;
}

/// axe-core inside the page: no serious or critical violation. (Evaluated by the
/// browser's DevTools protocol, which the page's CSP does not govern; the page's own
/// scripts stay forbidden.)
async function accessible(page, name) {
  await page.evaluate(AXE);
  const result = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { resultTypes: ["violations"] }),
  );
  const bad = result.violations.filter((v) => ["serious", "critical"].includes(v.impact));
  assert.deepEqual(
    bad.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`),
    [],
    `${name}: accessibility violations`,
  );
  if (SHOTS) {
    mkdirSync(SHOTS, { recursive: true });
    await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
  }
}

test("a partner opens a portal link, finds a failed message, reads its attempts and resends it", async () => {
  const link = await portalLink(PARTNER, "manage");
  const page = await freshPage();
  const opened = await page.goto(link);
  assert.equal(opened.status(), 200);
  assert.match(opened.headers()["content-security-policy"], /default-src 'none'/);
  await accessible(page, "link");
  // By keyboard: the link page's one button.
  await page.keyboard.press("Tab"); // the skip link
  await page.keyboard.press("Tab"); // the overview link in the header
  await page.keyboard.press("Tab"); // Continue
  await page.keyboard.press("Enter");
  await page.waitForURL(`${API}/console/`);
  await assert.doesNotReject(page.getByRole("heading", { name: "Overview" }).waitFor());
  const row = page.getByRole("row").filter({ hasText: SUBSCRIPTION });
  await assert.doesNotReject(row.waitFor());
  assert.ok(
    !(await page.content()).includes(OTHER_SUBSCRIPTION),
    "the overview shows only the partner's own subscriptions",
  );
  await accessible(page, "overview");

  // The subscription's log, filtered to what failed.
  await page.getByRole("link", { name: SUBSCRIPTION }).click();
  await page.getByLabel("Status").selectOption("dead_lettered");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL(/status=dead_lettered/);
  const failed = page.getByRole("link", { name: FAILED_ID });
  await assert.doesNotReject(failed.waitFor());
  await accessible(page, "subscription");

  // Its attempts, and what the partner's server answered, shown as text.
  await failed.click();
  await assert.doesNotReject(page.getByRole("heading", { name: `Message ${FAILED_ID}` }).waitFor());
  const attempts = page.locator("ol.attempts > li");
  assert.equal(await attempts.count(), 1);
  assert.match(await attempts.first().innerText(), /HTTP 400/);
  // The body, opened by keyboard.
  await page.locator("summary").first().focus();
  await page.keyboard.press("Enter");
  const excerpt = page.locator("pre.excerpt").first();
  assert.match(await excerpt.innerText(), /<script>alert\(1\)<\/script>/);
  assert.match(await excerpt.innerText(), /<img src=x onerror=alert\(2\)>/);
  assert.equal(await page.locator("main img, main script").count(), 0, "the markup is text, not elements");
  await accessible(page, "message");

  // Resend, confirmed; the new attempt arrives.
  await page.getByRole("link", { name: "Resend this message" }).click();
  await assert.doesNotReject(page.getByRole("heading", { name: /Resend message/ }).waitFor());
  await accessible(page, "resend");
  await page.getByRole("button", { name: "Yes, resend it" }).click();
  await assert.doesNotReject(page.getByRole("status").waitFor());
  let seen = "";
  for (let i = 0; i < 100; i++) {
    seen = await page.locator("ol.attempts").innerText();
    if (/resend · delivered/.test(seen)) break;
    await page.waitForTimeout(200);
    await page.reload();
  }
  assert.match(seen, /Attempt \d+ · resend · delivered/, "the resend's attempt is in the log");
  assert.match(seen, /HTTP 204/);

  // Pause and resume, each a form with the session's CSRF token.
  await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  await page.getByRole("button", { name: "Pause deliveries" }).click();
  await assert.doesNotReject(page.getByRole("button", { name: "Resume deliveries" }).waitFor());
  await page.getByRole("button", { name: "Resume deliveries" }).click();
  await assert.doesNotReject(page.getByRole("button", { name: "Pause deliveries" }).waitFor());
  // The same form without the token: refused.
  const forged = await page.request.post(`${API}/console/subscriptions/${SUBSCRIPTION}/pause`, {
    form: { csrf: "forged" },
  });
  assert.equal(forged.status(), 403);

  // Another partner's pages, by editing the URL: not found, and nothing of theirs shown.
  for (const path of [
    `/console/subscriptions/${OTHER_SUBSCRIPTION}`,
    `/console/messages/${OTHER_ID}`,
    `/console/messages/${OTHER_ID}?subscription_id=${OTHER_SUBSCRIPTION}`,
    `/console/messages/${OTHER_ID}/resend?subscription_id=${OTHER_SUBSCRIPTION}`,
  ]) {
    const answer = await page.goto(`${API}${path}`);
    assert.equal(answer.status(), 404, path);
    assert.match(await page.locator("main").innerText(), /Not found/, path);
  }
  await accessible(page, "not-found");

  // The link again: used.
  const reused = await (await freshPage()).goto(link);
  assert.equal(reused.status(), 410);
  assert.match(await reused.text(), /used already/);
  await page.context().close();
});

test("a read-only session sees the log and cannot change anything", async () => {
  const page = await freshPage();
  await page.goto(await portalLink(PARTNER, "read"));
  await page.getByRole("button", { name: "Continue" }).click();
  await page.goto(`${API}/console/messages/${FAILED_ID}`);
  await assert.doesNotReject(page.getByRole("heading", { name: `Message ${FAILED_ID}` }).waitFor());
  assert.equal(await page.getByRole("link", { name: "Resend this message" }).count(), 0);
  const refused = await page.goto(`${API}/console/messages/${FAILED_ID}/resend`);
  assert.equal(refused.status(), 403);
  await page.context().close();
});

test("an expired or altered link shows a page that says so", async () => {
  const page = await freshPage();
  const link = await portalLink(PARTNER, "read");
  const altered = await page.goto(link.replace(/.$/, (c) => (c === "A" ? "B" : "A")));
  assert.equal(altered.status(), 404);
  assert.match(await page.locator("main").innerText(), /not a valid portal link/);
  await accessible(page, "link-invalid");
  await page.context().close();
});

test("an operator signs in with the admin token and sees every partner", async () => {
  const page = await freshPage();
  await page.goto(`${API}/console/`);
  await page.waitForURL(`${API}/console/login`);
  await accessible(page, "login");
  await page.getByLabel("Admin token").fill("not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  assert.match(await page.getByRole("alert").innerText(), /not an admin token/);
  await page.getByLabel("Admin token").fill(ADMIN);
  await page.keyboard.press("Enter");
  await page.waitForURL(`${API}/console/`);
  const text = await page.locator("main").innerText();
  assert.ok(text.includes(SUBSCRIPTION) && text.includes(OTHER_SUBSCRIPTION), text);
  await accessible(page, "overview-operator");
  await page.context().close();
});
