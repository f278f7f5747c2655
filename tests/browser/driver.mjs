// A line-oriented remote control for headless Chromium, so a Rust integration test
// (tests/browser.rs) can drive the live page while it publishes events itself.
//
// Reads one JSON command per line on stdin and answers each with one JSON line on stdout:
// {"ok":true,"value":...} or {"ok":false,"error":"..."}. Every page command takes an optional
// "page" (a tab of the same browser context, named by newPage; default "main", the first tab).
// Commands:
//   {"cmd":"goto","url":U}
//   {"cmd":"waitFor","selector":S,"text":T?,"state":S?,"timeoutMs":N}  an element matching S
//       (whose text contains T, if given) exists
//   {"cmd":"evaluate","expression":E}   the JSON value of a page expression
//   {"cmd":"screenshot","path":P}
//   {"cmd":"select","selector":S,"value":V}  choose an option of a <select>
//   {"cmd":"click","selector":S}        click the element matching S
//   {"cmd":"newPage","page":N}          open another tab N (same context: same origin's locks,
//       channels and storage)
//   {"cmd":"closePage","page":N}        close tab N (as a user closing it)
//   {"cmd":"subscribeRequests","page":N?}  the bodies (base64) of the Subscribe calls so far, of
//       every tab or of tab N
//   {"cmd":"log"}                      console messages and page errors seen so far
//   {"cmd":"serveConsole","origin":O,"script":P,"tokens":[T...],"userTokens":{U:T}?}  serve the
//       React test console at origin O (intercepted: nothing listens there) in every tab with the
//       bundle at path P, and play its HTTP API: /api/token?user=U answers userTokens[U] when
//       given, otherwise the tokens in turn (the last one again and again); /api/balance/<user>
//       and /api/devices answer made-up data; every call is counted
//   {"cmd":"apiCalls"}                 those counts, by endpoint: {"token":n,"balance":n,...}
//   {"cmd":"close"}
// playwright-core comes from web/node_modules (scripts/test installs it); Chromium is
// Debian's (CHROMIUM, default /usr/bin/chromium).
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const require = createRequire(new URL("../../web/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // The React test console is served on an intercepted localhost origin, which Chromium counts
  // as a public page calling the loopback server: its local-network checks would refuse it.
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests",
  ],
});
const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
// Both lists keep only their latest entries, so a long or chatty page cannot grow them forever.
const KEEP = 200;
const remember = (list, item) => {
  list.push(item);
  if (list.length > KEEP) list.shift();
};
const log = [];
// The test decodes these to check which cursor each (re)subscription resumed from, and which
// tab made it.
const subscribes = [];
const pages = new Map();
function openPage(name, page) {
  pages.set(name, page);
  const tag = name === "main" ? "" : `[${name}] `;
  page.on("console", (m) => remember(log, `${tag}console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => remember(log, `${tag}pageerror: ${e.message}`));
  page.on("request", (request) => {
    if (request.url().endsWith("/cloudphone.notify.v1.NotificationService/Subscribe")) {
      remember(subscribes, { page: name, body: (request.postDataBuffer() ?? Buffer.alloc(0)).toString("base64") });
    }
  });
}
openPage("main", await context.newPage());
function pageOf(command) {
  const page = pages.get(command.page ?? "main");
  if (page === undefined) throw new Error(`no tab ${command.page}`);
  return page;
}

// The React test console's origin and its API's call counts.
const apiCalls = {};
const count = (name) => (apiCalls[name] = (apiCalls[name] ?? 0) + 1);

async function serveConsole({ origin, script, tokens, userTokens }) {
  const { readFile } = await import("node:fs/promises");
  const bundle = await readFile(script);
  const pending = [...tokens];
  await context.route(`${origin}/**`, async (route) => {
    const url = new URL(route.request().url());
    const json = (body) => route.fulfill({ contentType: "application/json", body: JSON.stringify(body) });
    if (url.pathname === "/") {
      return route.fulfill({
        contentType: "text/html",
        body: '<!doctype html><meta charset="utf-8"><div id="root"></div><script src="/app.js"></script>',
      });
    }
    if (url.pathname === "/app.js") return route.fulfill({ contentType: "text/javascript", body: bundle });
    if (url.pathname === "/api/token") {
      count("token");
      const own = userTokens?.[url.searchParams.get("user") ?? ""];
      if (own !== undefined) return json({ token: own });
      return json({ token: pending.length > 1 ? pending.shift() : pending[0] });
    }
    if (url.pathname.startsWith("/api/balance/")) {
      // The balance changes with every fetch, so a refetch shows.
      return json({ balance: `${100 + count("balance")}.00` });
    }
    if (url.pathname === "/api/devices") {
      count("devices");
      return json({
        items: [
          { id: "d-console-1", name: "phone-1", status: "stopped" },
          { id: "d-console-2", name: "phone-2", status: "stopped" },
        ],
      });
    }
    return route.fulfill({ status: 404, body: "not found" });
  });
}

async function run(command) {
  switch (command.cmd) {
    case "goto":
      await pageOf(command).goto(command.url);
      return null;
    case "waitFor":
      await pageOf(command).waitForFunction(
        ([selector, text]) =>
          [...document.querySelectorAll(selector)].some(
            (e) => text == null || e.textContent.includes(text),
          ),
        [command.selector, command.text ?? null],
        { timeout: command.timeoutMs ?? 10000, polling: 50 },
      );
      return null;
    case "evaluate":
      return await pageOf(command).evaluate(command.expression);
    case "screenshot":
      await pageOf(command).screenshot({ path: command.path, fullPage: true });
      return null;
    case "select":
      await pageOf(command).selectOption(command.selector, command.value);
      return null;
    case "click":
      await pageOf(command).click(command.selector);
      return null;
    case "newPage":
      if (pages.has(command.page)) throw new Error(`tab ${command.page} is open`);
      openPage(command.page, await context.newPage());
      return null;
    case "closePage":
      await pageOf(command).close({ runBeforeUnload: false });
      pages.delete(command.page);
      return null;
    case "subscribeRequests":
      return subscribes
        .filter((request) => command.page == null || request.page === command.page)
        .map((request) => request.body);
    case "log":
      return log;
    case "serveConsole":
      await serveConsole(command);
      return null;
    case "apiCalls":
      return apiCalls;
    case "close":
      await browser.close();
      return null;
    default:
      throw new Error(`unknown command ${command.cmd}`);
  }
}

const lines = createInterface({ input: process.stdin });
process.stdout.write(JSON.stringify({ ok: true, value: "ready" }) + "\n");
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    const command = JSON.parse(line);
    answer = { ok: true, value: await run(command) };
    if (command.cmd === "close") {
      // stdin stays open (the test holds it), which would keep Node alive: exit explicitly.
      process.stdout.write(JSON.stringify(answer) + "\n", () => process.exit(0));
      continue;
    }
  } catch (error) {
    answer = { ok: false, error: String(error && error.message ? error.message : error) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
await browser.close().catch(() => {});
