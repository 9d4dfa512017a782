// The web console in a real headless Chromium (Debian's, never a downloaded one), driven
// by playwright-core, every page checked by axe-core run inside it. Started by the e2e
// test `it/console.rs`, which sets up the stack, two partners and their messages, and
// passes them here:
//   CONSOLE_API   the API's base URL          ADMIN_TOKEN  an admin token
//   PARTNER       partner A                   SUBSCRIPTION A's subscription
//   FAILED_ID, FAILED2_ID   A's dead-lettered messages (its server answered 400 with markup)
//   OTHER_SUBSCRIPTION, OTHER_ID   partner B's subscription and one of its messages
//   PARTNER_TOKEN A's API token (to enrol its authenticator)
//   SCREENSHOTS   a folder: save a screenshot of each page there (scripts/console-screenshots.sh)
import { createHmac } from "node:crypto";
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
const FAILED2_ID = env("FAILED2_ID");
const OTHER_SUBSCRIPTION = env("OTHER_SUBSCRIPTION");
const OTHER_ID = env("OTHER_ID");
const PARTNER_TOKEN = env("PARTNER_TOKEN");
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

/// A portal link from the admin API (`code`: the partner's authenticator code, for a
/// manage link once it enrolled one).
async function portalLink(partner, scope, ttl_secs = 600, code = undefined) {
  const headers = { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" };
  if (code) headers["x-second-factor"] = code;
  const response = await fetch(`${API}/v1/admin/portal-links`, {
    method: "POST",
    headers,
    body: JSON.stringify({ partner, scope, ttl_secs }),
  });
  const body = await response.json();
  assert.equal(response.status, 201, JSON.stringify(body));
  return body.url;
}

/// Script dialogs and page errors seen by any page: nothing a partner's server sent
/// may run (checked after each test).
const ran = [];

/// A page of a fresh browser context (its own cookies).
async function freshPage() {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  page.on("dialog", async (dialog) => {
    ran.push(`dialog: ${dialog.message()}`);
    await dialog.dismiss();
  });
  page.on("pageerror", (error) => ran.push(`page error: ${error.message}`));
  return page;
}

/// Opens a portal link in `page` and continues into the console.
async function signIn(page, link) {
  await page.goto(link);
  await page.getByRole("button", { name: "Continue" }).click();
  await page.waitForURL(`${API}/console/`);
}

/// The CSRF token of the page's session (the sign-out form carries it).
async function csrfOf(page) {
  return page.locator('input[name="csrf"]').first().inputValue();
}

/// axe-core inside the page: no serious or critical violation. (Evaluated by the
/// browser's DevTools protocol, which the page's CSP does not govern; the page's own
/// scripts stay forbidden.)
async function accessible(page, name) {
  // Every page: the policy that forbids scripts.
  const again = await page.request.get(page.url());
  assert.match(again.headers()["content-security-policy"] ?? "", /default-src 'none'/, name);
  assert.equal(again.headers()["x-frame-options"], "DENY", name);
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
  const [cookie] = await page.context().cookies();
  assert.equal(cookie.httpOnly, true, "the session cookie is HttpOnly");
  assert.equal(cookie.sameSite, "Strict", "the session cookie is SameSite=Strict");
  const row = page.getByRole("row").filter({ hasText: SUBSCRIPTION });
  await assert.doesNotReject(row.waitFor());
  assert.ok(
    !(await page.content()).includes(OTHER_SUBSCRIPTION),
    "the overview shows only the partner's own subscriptions",
  );
  // The partner's health, its open failures and the hourly chart.
  assert.match(await page.locator("dl.facts").first().innerText(), /Health\s+(unknown|healthy|degraded|failing)/);
  assert.match(await row.innerText(), /0 failing, 2 dead-lettered/);
  const chart = row.locator('svg[role="img"]');
  assert.match(await chart.getAttribute("aria-label"), /Success rate per hour over the last 24 hours: 1 hours? with attempts, the lowest 0\.0 %/);
  await accessible(page, "overview");

  // The subscription's log, filtered to what failed.
  await page.getByRole("link", { name: SUBSCRIPTION }).click();
  await page.getByLabel("Status", { exact: true }).selectOption("dead_lettered");
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

  // Recover: the dry run's count first (the resent message is no longer failed), then
  // the confirmed recover, and its attempt in the log.
  await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  await page.getByRole("button", { name: "Count what would be sent" }).click();
  await assert.doesNotReject(page.getByRole("heading", { name: /Recover failed messages/ }).waitFor());
  assert.equal(await page.locator("#recover-count").innerText(), "1", "one still dead-lettered");
  await accessible(page, "recover");
  await page.getByRole("button", { name: "Send 1 again" }).click();
  await assert.doesNotReject(page.getByText("Recovered: 1 message sent again").waitFor());
  let recovered = "";
  for (let i = 0; i < 100; i++) {
    await page.goto(`${API}/console/messages/${FAILED2_ID}`);
    recovered = await page.locator("ol.attempts").innerText();
    if (/recover · delivered/.test(recovered)) break;
    await page.waitForTimeout(200);
  }
  assert.match(recovered, /recover · delivered/, "the recovered message arrived");

  // Rotate the secret: the new one shown once.
  await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  await page.getByRole("button", { name: "Rotate the secret" }).click();
  assert.match(await page.locator("code.secret").innerText(), /^whsec_/);
  await accessible(page, "secret");

  // Change the URL: a bad one is refused naming the field, a good one is shown.
  await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  const url = await page.getByLabel("URL", { exact: true }).inputValue();
  await page.getByLabel("URL", { exact: true }).fill("ftp://hooks.example/x");
  await page.getByRole("button", { name: "Save changes" }).click();
  assert.match(await page.locator("main").innerText(), /url: /);
  await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  await page.getByLabel("URL", { exact: true }).fill(`${url}?v=2`);
  await page.getByRole("button", { name: "Save changes" }).click();
  await page.waitForURL(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  assert.match(await page.locator("dd.url").first().innerText(), /\?v=2$/);

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
  // A form of another site: refused even with the right token.
  const csrf = await csrfOf(page);
  const crossSite = await page.request.post(`${API}/console/subscriptions/${SUBSCRIPTION}/pause`, {
    form: { csrf },
    headers: { "sec-fetch-site": "cross-site" },
  });
  assert.equal(crossSite.status(), 403);
  // Another partner's subscription, with the real token: not found, not paused.
  const theirs = await page.request.post(`${API}/console/subscriptions/${OTHER_SUBSCRIPTION}/pause`, {
    form: { csrf },
  });
  assert.equal(theirs.status(), 404);
  // An id that smuggles another operation into the API's path stays one (unknown) id.
  const smuggled = await page.request.post(
    `${API}/console/subscriptions/${SUBSCRIPTION}%2Frotate-secret%3F/pause`,
    { form: { csrf }, maxRedirects: 0 },
  );
  assert.equal(smuggled.status(), 404, "not a rotation of the secret");

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

  // Signed out: the old cookie is refused, even put back.
  const cookies = await page.context().cookies();
  await page.goto(`${API}/console/`);
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(`${API}/console/login`);
  await page.context().addCookies(cookies);
  await page.goto(`${API}/console/`);
  assert.equal(page.url(), `${API}/console/login`, "a signed-out session stays out");
  await page.context().close();
  assert.deepEqual(ran, [], "nothing a partner's server sent ran");
});

test("a partner tries a payload filter, sets it, sees a bad one refused where it is wrong, and removes it", async () => {
  const page = await freshPage();
  await signIn(page, await portalLink(PARTNER, "manage"));
  await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  // Tried first against the latest events, by keyboard: nothing changes.
  await page.getByLabel("Filter", { exact: true }).fill("event.order.total.amount_minor >= 0");
  await page.getByLabel("Latest events").focus();
  await page.keyboard.press("Tab"); // Try it
  await page.keyboard.press("Enter");
  await assert.doesNotReject(page.getByRole("heading", { name: /Filter test of/ }).waitFor());
  const tried = await page.locator("tbody tr").count();
  assert.ok(tried >= 1, "the partner's latest events were tried");
  assert.equal(await page.locator("#filter-matched").innerText(), `${tried} of ${tried} would be delivered.`);
  await accessible(page, "filter-test");
  // One that matches nothing, and one the events fail on (a field only cancellations have).
  await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  await page.getByLabel("Filter", { exact: true }).fill('event.order.status == "REFUNDED"');
  await page.getByRole("button", { name: "Try it" }).click();
  assert.match(await page.locator("#filter-matched").innerText(), /^0 of \d+ would be delivered/);
  assert.match(await page.locator("tbody").innerText(), /no match/);

  // Set through the change form: a bad one is refused naming the line and column.
  await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  await page.getByLabel("Payload filter").fill("event.order.total.amount_minor >=");
  await page.getByRole("button", { name: "Save changes" }).click();
  assert.match(await page.locator("main").innerText(), /filter: at line 1, column 34: /);
  await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  await page.getByLabel("Payload filter").fill('event.order.status != "<b>CANCELLED</b>"');
  await page.getByRole("button", { name: "Save changes" }).click();
  assert.match(await page.locator("main").innerText(), /not a value of this field/);
  const filter = "event.order.total.amount_minor >= 100 && event.order.status != \"CANCELLED\"";
  await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  await page.getByLabel("Payload filter").fill(filter);
  await page.getByRole("button", { name: "Save changes" }).click();
  await page.waitForURL(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  assert.equal(await page.locator("code.filter").innerText(), filter);
  assert.match(await page.locator("#filtered").innerText(), /^\d+ filtered out, \d+ the filter failed on$/);
  await accessible(page, "subscription-filter");
  // Removed: every event again.
  await page.getByLabel("Payload filter").fill("");
  await page.getByRole("button", { name: "Save changes" }).click();
  await page.waitForURL(`${API}/console/subscriptions/${SUBSCRIPTION}`);
  assert.match(await page.locator("dl.facts").innerText(), /Filter\s+none/);
  await page.context().close();
});

test("a read-only session sees the log and cannot change anything", async () => {
  const page = await freshPage();
  await signIn(page, await portalLink(PARTNER, "read"));
  await page.goto(`${API}/console/messages/${FAILED_ID}`);
  await assert.doesNotReject(page.getByRole("heading", { name: `Message ${FAILED_ID}` }).waitFor());
  assert.equal(await page.getByRole("link", { name: "Resend this message" }).count(), 0);
  const refused = await page.goto(`${API}/console/messages/${FAILED_ID}/resend`);
  assert.equal(refused.status(), 403);
  // The event catalog: every type, its fields, an example, and how to verify.
  await page.getByRole("link", { name: "Event catalog" }).click();
  for (const type of ["order.created", "order.status_changed", "order.cancelled"]) {
    await assert.doesNotReject(page.getByRole("heading", { name: type, exact: true }).waitFor());
  }
  const catalog = await page.locator("main").innerText();
  for (const language of ["Rust", "Python", "TypeScript"]) {
    assert.match(catalog, new RegExp(`${language} \\(`), language);
  }
  assert.match(catalog, /Webhook\(secret\)/);
  await page.getByText("Example body of order.created").click();
  assert.match(await page.locator("pre.code").nth(3).innerText(), /"order_id": "order-4711"/);
  await accessible(page, "catalog");
  // With the session's own CSRF token, a change is still refused.
  const csrf = await csrfOf(page);
  for (const path of [
    `/console/subscriptions/${SUBSCRIPTION}/pause`,
    `/console/messages/${FAILED_ID}/resend`,
  ]) {
    const posted = await page.request.post(`${API}${path}`, { form: { csrf } });
    assert.equal(posted.status(), 403, path);
  }
  await page.context().close();
});

test("an expired, altered or ended link shows a page that says so", async () => {
  const page = await freshPage();
  const link = await portalLink(PARTNER, "read");
  const altered = await page.goto(link.replace(/.$/, (c) => (c === "A" ? "B" : "A")));
  assert.equal(altered.status(), 404);
  assert.match(await page.locator("main").innerText(), /not a valid portal link/);
  await accessible(page, "link-invalid");
  // A link of one second, opened until it has expired (at most 5 s).
  const short = await portalLink(PARTNER, "read", 1);
  let expired = await page.goto(short);
  for (const deadline = Date.now() + 5000; expired.status() !== 410 && Date.now() < deadline; ) {
    expired = await page.goto(short);
  }
  assert.equal(expired.status(), 410);
  assert.match(await page.locator("main").innerText(), /has expired/);
  await page.context().close();
});

test("ending a partner's sessions signs them out and voids its earlier links", async () => {
  const page = await freshPage();
  await signIn(page, await portalLink(PARTNER, "read"));
  const unused = await portalLink(PARTNER, "read");
  const ended = await fetch(`${API}/v1/admin/partners/${PARTNER}/portal-sessions/expire`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}` },
  });
  assert.equal(ended.status, 200);
  await page.goto(`${API}/console/`);
  assert.equal(page.url(), `${API}/console/login`, "the session is over");
  const late = await page.goto(unused);
  assert.equal(late.status(), 410, "a link issued before is void");
  // A link issued after works.
  await signIn(page, await portalLink(PARTNER, "read"));
  await page.context().close();
});

test("a disconnected partner reconnects itself from the overview", async () => {
  const other = OTHER_SUBSCRIPTION.replace(/-s$/, "");
  const cut = await fetch(`${API}/v1/partners/${other}/disconnect`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: JSON.stringify({ reason: "console test" }),
  });
  assert.equal(cut.status, 200);
  const page = await freshPage();
  await signIn(page, await portalLink(other, "manage"));
  assert.match(await page.locator("dl.facts").first().innerText(), /Health\s+disconnected/);
  await accessible(page, "overview-disconnected");
  await page.getByRole("button", { name: "Reconnect" }).click();
  await page.waitForURL(`${API}/console/`);
  let health = "";
  for (let i = 0; i < 50; i++) {
    health = await page.locator("dl.facts").first().innerText();
    if (!/disconnected/.test(health)) break;
    await page.waitForTimeout(300);
    await page.reload();
  }
  assert.doesNotMatch(health, /disconnected/, "reconnected");
  assert.equal(await page.getByRole("button", { name: "Reconnect" }).count(), 0);
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
  // B's event was delivered on its first attempt: its hourly time to webhook is drawn.
  const theirs = page.getByRole("row").filter({ hasText: OTHER_SUBSCRIPTION }).last();
  assert.match(
    await theirs.locator('svg[role="img"]').last().getAttribute("aria-label"),
    /Mean time to webhook per hour over the last 24 hours: 1 hours? with deliveries, the slowest \d+ ms/,
  );
  await accessible(page, "overview-operator");

  // Every partner with its health as the dispatchers report it (every 5 s), sortable.
  let row = "";
  for (let i = 0; i < 50; i++) {
    row = await page.getByRole("row").filter({ hasText: `Dead letters of ${PARTNER}` }).innerText();
    if (!/unknown/.test(row)) break;
    await page.waitForTimeout(300);
    await page.reload();
  }
  assert.match(row, /healthy|degraded|failing/, `the dispatchers' view of the partner: ${row}`);
  await page.getByRole("link", { name: "Lag", exact: true }).click();
  await page.waitForURL(/sort=lag/);
  assert.match(await page.locator("caption").first().innerText(), /sorted by Lag/);
  await accessible(page, "partners");

  // One partner's dead letters, replayed with a dry run first.
  await page.getByRole("link", { name: `Dead letters of ${PARTNER}` }).click();
  await assert.doesNotReject(page.getByRole("heading", { name: `Dead letters of ${PARTNER}` }).waitFor());
  const pending = Number(await page.locator("#pending").innerText());
  assert.ok(pending >= 1, `a pending dead letter (${pending})`);
  assert.match(await page.locator("table").innerText(), /status 400/);
  await accessible(page, "dead-letters");
  // One of them in full: its headers and the body that was to be sent.
  await page.locator("table tbody tr").first().getByRole("link").click();
  await assert.doesNotReject(page.getByRole("heading", { name: /^Dead letter \d+\/\d+ of / }).waitFor());
  const shown = await page.locator("main").innerText();
  assert.match(shown, /dlq-reason/);
  assert.match(shown, /"order_id": "order-console-/);
  await accessible(page, "dead-letter");
  await page.getByRole("link", { name: /Back to the dead letters/ }).click();
  await page.getByLabel("Reason contains").fill("status 400");
  await page.getByRole("button", { name: "Count what would be replayed" }).click();
  assert.equal(Number(await page.locator("#replay-count").innerText()), pending, "the dry run counts the pending ones");
  await accessible(page, "replay");
  await page.getByRole("button", { name: `Replay ${pending}` }).click();
  await assert.doesNotReject(page.getByText(`Replayed: ${pending} dead letters`).waitFor());
  await page.goto(`${API}/console/partners/${PARTNER}/dead-letters`);
  assert.equal(await page.locator("#pending").innerText(), "0", "nothing pending after the replay");

  // The audit trail, filtered by partner and actor: what the partner did in the
  // console, and the replay just made.
  await page.getByRole("link", { name: "Audit trail" }).click();
  await page.getByLabel("Partner").fill(PARTNER);
  await page.getByRole("button", { name: "Filter" }).click();
  const trail = await page.locator("table").innerText();
  for (const action of ["pause", "resume", "rotate-secret", "recover", "resend", "portal-link-issued", "dlq-replay"]) {
    assert.match(trail, new RegExp(`\\b${action}\\b`), action);
  }
  await accessible(page, "audit");
  await page.getByLabel("Actor contains").fill("api: admin");
  await page.getByRole("button", { name: "Filter" }).click();
  const byOperator = await page.locator("table").innerText();
  assert.match(byOperator, /dlq-replay/);
  assert.doesNotMatch(byOperator, /partner:/, "only the operator's records");

  // A partner's session cannot open the operators' pages.
  const partnerPage = await freshPage();
  await signIn(partnerPage, await portalLink(PARTNER, "manage"));
  for (const path of [`/console/partners/${PARTNER}/dead-letters`, "/console/audit"]) {
    const refused = await partnerPage.goto(`${API}${path}`);
    assert.equal(refused.status(), 403, path);
  }
  assert.equal(await partnerPage.getByRole("link", { name: "Audit trail" }).count(), 0);
  await partnerPage.context().close();
  await page.context().close();
});

/// RFC 6238: the 6-digit code of the step `offset` steps from now.
function totp(secret, offset = 0) {
  const step = Math.floor(Date.now() / 1000 / 30) + offset;
  const counter = Buffer.alloc(8);
  counter.writeBigInt64BE(BigInt(step));
  const digest = createHmac("sha1", secret).update(counter).digest();
  const at = digest[19] & 0x0f;
  const value = (digest.readUInt32BE(at) & 0x7fffffff) % 1_000_000;
  return String(value).padStart(6, "0");
}

function base32(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let buffer = 0;
  const out = [];
  for (const c of text.replace(/=+$/, "")) {
    buffer = (buffer << 5) | alphabet.indexOf(c.toUpperCase());
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((buffer >> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

// (Last: it enrols partner A's authenticator, and resets it at the end.)
test("with an authenticator enrolled, a URL change in the console asks for its code", async () => {
  const call = (method, path, token, body, code) =>
    fetch(`${API}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        "content-type": "application/json",
        ...(code ? { "x-second-factor": code } : {}),
      },
      body: body ? JSON.stringify(body) : undefined,
    });
  const enrolled = await call("POST", `/v1/partners/${PARTNER}/totp`, PARTNER_TOKEN);
  assert.equal(enrolled.status, 201);
  const uri = (await enrolled.json()).otpauth_uri;
  const secret = base32(new URL(uri).searchParams.get("secret"));
  const confirmed = await call("POST", `/v1/partners/${PARTNER}/totp/confirm`, PARTNER_TOKEN, { code: totp(secret, -1) });
  assert.equal(confirmed.status, 200);
  try {
    // A manage link now needs the partner's code, from the operator too.
    const refused = await call("POST", "/v1/admin/portal-links", ADMIN, { partner: PARTNER, scope: "manage", ttl_secs: 600 });
    assert.equal(refused.status, 403);
    const page = await freshPage();
    await signIn(page, await portalLink(PARTNER, "manage", 600, totp(secret, 0)));
    await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
    const url = await page.getByLabel("URL", { exact: true }).inputValue();
    // Without the code: refused, saying what is missing.
    await page.getByLabel("URL", { exact: true }).fill(`${url.replace(/\?.*$/, "")}?v=3`);
    await page.getByRole("button", { name: "Save changes" }).click();
    assert.match(await page.locator("main").innerText(), /X-Second-Factor|second factor|authenticator/i);
    await accessible(page, "second-factor-required");
    // With it, by keyboard: the change is made, and the new URL is checked.
    await page.goto(`${API}/console/subscriptions/${SUBSCRIPTION}`);
    // (Seen once in CI: no URL field on this page; say what the page was instead.)
    const shown = await page.locator("body").innerText();
    await assert.doesNotReject(
      page.getByLabel("URL", { exact: true }).waitFor({ timeout: 10000 }),
      `the change form, on: ${shown}`,
    );
    await page.getByLabel("URL", { exact: true }).fill(`${url.replace(/\?.*$/, "")}?v=3`);
    await page.locator("#edit_code").focus();
    await page.keyboard.type(totp(secret, 1));
    const saved = page.waitForNavigation();
    await page.keyboard.press("Enter");
    await saved;
    assert.equal(page.url(), `${API}/console/subscriptions/${SUBSCRIPTION}`, await page.locator("main").innerText());
    // (Seen once in CI: no facts on the page after the save; say what the page was.)
    const after = await page.locator("body").innerText();
    await assert.doesNotReject(
      page.locator("dl.facts").first().waitFor({ timeout: 10000 }),
      `the subscription's facts after the save, on: ${after}`,
    );
    const facts = await page.locator("dl.facts").first().innerText();
    assert.match(facts, /\?v=3/);
    assert.match(facts, /URL check\s+(pending_verification|verified)/, facts);
    let check = facts;
    for (let i = 0; i < 50 && !/URL check\s+verified/.test(check); i++) {
      await page.waitForTimeout(200);
      await page.reload();
      check = await page.locator("dl.facts").first().innerText();
    }
    assert.match(check, /URL check\s+verified/, "the example receiver answered the challenge");
    await accessible(page, "subscription-verified");
    await page.context().close();
  } finally {
    const reset = await call("POST", `/v1/admin/partners/${PARTNER}/totp/reset`, ADMIN);
    assert.equal(reset.status, 200);
  }
});
