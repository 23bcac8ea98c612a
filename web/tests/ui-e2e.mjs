// The web UI in a real browser (Debian's chromium, driven by playwright-core)
// against a real lab: test/e2e/ui_test.go starts the lab and this script,
// and answers its requests for faults. Lines it prints:
//   STEP text            what it is doing
//   CRASH host           asks the Go test to crash that host; it answers "ok" on stdin
//   SEEN what epoch-ms   when the page showed something (the Go test compares with the cluster's own times)
//   FAIL text            then it exits 1
// Environment: UI_URL (https://.../ui/), ADMIN_TOKEN, VIEWER_TOKEN, VM, CHROMIUM, SHOTS (directory).
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const env = (k) => {
  const v = process.env[k];
  if (!v) fail(`${k} is not set`);
  return v;
};
function fail(msg) {
  console.log("FAIL " + msg);
  process.exit(1);
}
const step = (s) => console.log("STEP " + s);
const seen = (what) => console.log(`SEEN ${what} ${Date.now()}`);

const url = env("UI_URL"), admin = env("ADMIN_TOKEN"), viewer = env("VIEWER_TOKEN"), vm = env("VM"), shots = env("SHOTS");
mkdirSync(shots, { recursive: true });
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const lines = createInterface({ input: process.stdin });
const answers = [];
lines.on("line", (l) => answers.push(l));
async function ask(line) {
  console.log(line);
  const deadline = Date.now() + 60_000;
  while (answers.length === 0) {
    if (Date.now() > deadline) fail(`no answer to ${line}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const a = answers.shift();
  if (a !== "ok") fail(`${line}: ${a}`);
}

// axe checks the page as it is: no serious or critical violation.
async function accessible(page, view) {
  await page.evaluate(axeSource);
  const res = await page.evaluate(async () => await globalThis.axe.run(document, { resultTypes: ["violations"] }));
  const bad = res.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of res.violations.filter((v) => !bad.includes(v))) console.log(`STEP axe ${view}: note ${v.impact} ${v.id}: ${v.help}`);
  for (const v of bad) console.log(`STEP axe ${view}: ${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join("; ")})`);
  if (bad.length) fail(`${view}: ${bad.length} serious accessibility violations (axe-core)`);
  step(`axe ${view}: ${res.violations.length} violations, none serious`);
}

async function shot(page, name) {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

// text polls the page's text until pred holds.
async function waitText(page, what, pred, limitMs) {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const t = await page.evaluate(() => document.body.innerText);
    if (pred(t)) return t;
    if (Date.now() > deadline) fail(`${what}: not shown within ${limitMs / 1000} s; the page shows:\n${t.slice(0, 3000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const vmHost = async (page) =>
  page.evaluate(() => {
    const dt = [...document.querySelectorAll("dl.facts dt")].find((d) => d.textContent === "Host");
    return dt ? dt.nextElementSibling.textContent : "";
  });

const browser = await chromium.launch({ executablePath: env("CHROMIUM"), args: ["--no-sandbox", "--disable-gpu"] });
try {
  // Log in with the admin token at the login form.
  step("log in");
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  let reloads = 0;
  page.on("load", () => reloads++);
  await page.goto(url);
  await page.getByLabel("API token").fill(admin);
  await shot(page, "login");
  await accessible(page, "login");
  await page.getByRole("button", { name: "Log in" }).click();
  await waitText(page, "hosts and the VM", (t) => ["host1", "host2", "host3", vm].every((w) => t.includes(w)), 30_000);
  await waitText(page, "the live stream", (t) => /\blive\b/.test(t), 30_000);
  await shot(page, "overview");
  await accessible(page, "overview");
  const loadsAfterLogin = reloads;

  // Live migration from the UI, followed without a reload.
  step("live migration");
  await page.getByRole("link", { name: vm, exact: true }).first().click();
  await waitText(page, "the VM's page", (t) => t.includes("Disks") && t.includes("Events"), 10_000);
  const from = await vmHost(page);
  await page.getByRole("button", { name: "Migrate…" }).click();
  const dialog = page.getByRole("dialog");
  await dialog.getByRole("radio").first().waitFor();
  const enabled = dialog.locator("input[type=radio]:not([disabled])");
  if ((await enabled.count()) === 0) fail("no feasible destination offered");
  const to = await enabled.first().getAttribute("value");
  await enabled.first().check();
  await shot(page, "migrate-dialog");
  await accessible(page, "migrate dialog");
  await dialog.getByRole("button", { name: "Migrate" }).click();
  let sawProgress = false;
  const deadline = Date.now() + 120_000;
  while ((await vmHost(page)) !== to) {
    if (Date.now() > deadline) fail(`the VM did not show on ${to} within 120 s`);
    if (!sawProgress && (await page.getByRole("heading", { name: "Migration" }).count()) > 0) {
      sawProgress = true;
      seen("migration-progress");
      await shot(page, "migration-progress");
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  seen("migration-done");
  if (!sawProgress) fail(`the migration ${from} -> ${to} completed without its progress ever showing`);
  step(`migrated ${from} -> ${to}, progress shown`);
  await shot(page, "vm");
  await accessible(page, "vm");

  // A crash of the VM's host: the VM's host changes, and the failover
  // group appears in the timeline, without a reload.
  step(`crash ${to}`);
  const crashAt = Date.now();
  await ask(`CRASH ${to}`);
  const crashDeadline = Date.now() + 120_000;
  const away = (h) => h && h !== "–" && h !== to;
  while (!away(await vmHost(page))) {
    if (Date.now() > crashDeadline) fail(`the VM still shows on ${to} 120 s after its host crashed`);
    await new Promise((r) => setTimeout(r, 50));
  }
  seen("host-changed");
  step(`the VM now shows on ${await vmHost(page)}`);
  await page.getByRole("link", { name: "Events", exact: true }).click();
  // The group of this crash: its start is after the crash (a host's lease
  // also lapses while the lab starts, which is no failover).
  await page
    .waitForFunction(
      ([host, after]) =>
        [...document.querySelectorAll("li.group summary")].some(
          (s) => s.textContent.includes(`Failover: host ${host} lost`) && Date.parse(s.querySelector("time").dateTime) >= after,
        ),
      [to, crashAt - 1000],
      { timeout: 60_000, polling: 100 },
    )
    .catch(() => fail(`no failover group for the crash of ${to} in the timeline`));
  seen("failover-group");
  await page.locator("li.group summary", { hasText: `Failover: host ${to} lost` }).first().click();
  await waitText(page, "the failover's steps", (t) => t.includes("vm.fenced") || t.includes("vm.restart-placed"), 30_000);
  await shot(page, "events");
  await accessible(page, "events");

  // Acknowledge the alarm the Go test made fire.
  step("acknowledge an alarm");
  await page.getByRole("link", { name: "Alarms", exact: true }).click();
  const ack = page.getByRole("button", { name: "Acknowledge" }).first();
  await ack.waitFor({ timeout: 120_000 }).catch(() => fail("no firing alarm to acknowledge"));
  await ack.click();
  await page.getByRole("dialog").getByRole("button", { name: "Acknowledge" }).click();
  await waitText(page, "the acknowledgement", (t) => t.includes("acknowledged by"), 30_000);
  await shot(page, "alarms");
  await accessible(page, "alarms");
  for (const [link, name] of [["DRS", "drs"], ["Rules", "rules"]]) {
    await page.getByRole("link", { name: link, exact: true }).click();
    await page.waitForTimeout(500);
    await shot(page, name);
    await accessible(page, name);
  }
  if (reloads !== loadsAfterLogin) fail(`the page was reloaded ${reloads - loadsAfterLogin} times`);

  // Without a mouse: the views are links, reached with Tab and Enter.
  step("keyboard");
  await page.goto(url.replace(/\/ui\/.*$/, "/ui/") + "#/");
  let reached = false;
  for (let i = 0; i < 15 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement?.textContent === "Events");
  }
  if (!reached) fail("the Events link cannot be reached with Tab");
  await page.keyboard.press("Enter");
  await waitText(page, "the timeline by keyboard", (t) => t.includes("Event timeline"), 10_000);
  await ctx.close();

  // A viewer sees no action controls; the token given in the fragment
  // leaves the address bar.
  step("viewer");
  const vctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const vpage = await vctx.newPage();
  await vpage.goto(url + "#token=" + encodeURIComponent(viewer));
  await waitText(vpage, "the viewer's overview", (t) => t.includes("host1") && t.includes(vm), 30_000);
  if (vpage.url().includes("token=")) fail("the token stayed in the address: " + vpage.url());
  const actionNames = /^(Start|Stop|Migrate…|Resize…|Delete|HA test failover|FT test failover|Enter maintenance|Exit maintenance|Acknowledge|Apply)$/;
  for (const route of ["#/", `#/vms/${encodeURIComponent(vm)}`, "#/alarms", "#/drs"]) {
    await vpage.evaluate((r) => (location.hash = r), route);
    await vpage.waitForTimeout(700);
    const buttons = await vpage.getByRole("button").allInnerTexts();
    const acts = buttons.filter((b) => actionNames.test(b.trim()));
    if (acts.length) fail(`a viewer sees action controls on ${route}: ${acts.join(", ")}`);
    if (route.startsWith("#/vms/")) await shot(vpage, "viewer-vm");
  }
  await vctx.close();

  // A phone-sized viewport.
  step("phone viewport");
  const mctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 390, height: 844 }, isMobile: true });
  const mpage = await mctx.newPage();
  await mpage.goto(url + "#token=" + encodeURIComponent(viewer));
  await waitText(mpage, "the phone overview", (t) => t.includes("host1") && t.includes(vm), 30_000);
  const overflow = await mpage.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  if (overflow > 2) fail(`the page is ${overflow} px wider than a phone's screen`);
  await shot(mpage, "phone");
  await accessible(mpage, "phone overview");
  await mctx.close();
  console.log("PASS");
} finally {
  await browser.close();
}
process.exit(0);
