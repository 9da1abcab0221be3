// A real browser against `switchyard demo` (SPEC §1): headless Debian Chromium, driven by
// playwright-core, loads the demo page over h2 and opens its WebSockets through the gateway.
//
// What it proves:
//   1. wss:// on :8443: the page arrives over h2; offering ["chat.v1","echo.v1"] selects chat.v1
//      (select = "client"), chat messages are broadcast to every chat client, echo.v1 reaches the
//      echo upstream.
//   2. RFC 8441: every one of those WebSocket handshakes went over HTTP/2 — the gateway's access
//      log says http_version "HTTP/2" with status 200 (an h1 upgrade would be 101), and /metrics
//      counts them under status="200".
//   3. ws:// on :8080 over HTTP/1.1 (status 101), and an unmapped subprotocol refused with 400.
//   4. RFC 9220: a second browser with QUIC on (forced for :8443, WebSockets over HTTP/3
//      enabled) loads the page over HTTP/3 and opens echo.v1 over HTTP/3 — the access log says
//      http_version "HTTP/3" with status 200.
//   5. Ctrl-C (SIGINT) drains and exits 0.
// Screenshots and the gateway's log go to $ARTIFACTS_DIR (default target/browser-artifacts).
//
// Run it with .ci/browser-test (installs Chromium and playwright-core, builds, runs this).

import { spawn } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.SWITCHYARD_BIN ?? join(ROOT, "target/release/switchyard");
const ARTIFACTS = process.env.ARTIFACTS_DIR ?? join(ROOT, "target/browser-artifacts");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

// SPEC §1 fixes the demo's ports; this test is their only user.
const HTTP = "127.0.0.1:8080";
const HTTPS = "127.0.0.1:8443";
const ADMIN = "127.0.0.1:9090";

const READY_MS = 20_000; // the demo logging all three `listening` events
const STEP_MS = 15_000; // one browser step (navigation, a message arriving)
const EXIT_MS = 20_000; // SIGINT to exit: drain_timeout is 5 s in the demo
const WATCHDOG_MS = 150_000; // the whole run

// The flags Chromium needs on this machine: no GPU, no sandbox as root, and no background
// traffic (the network is closed; Chromium would otherwise retry Google's hosts forever).
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let demo = null;
let browser = null;
const results = [];

function killDemo() {
  const child = demo && demo.child;
  if (child && child.exitCode === null && child.signalCode === null) {
    child.kill("SIGKILL");
  }
}
// The demo never outlives this script, whatever path it leaves by.
process.on("exit", killDemo);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    killDemo();
    process.exit(130);
  });
}
const watchdog = setTimeout(() => {
  console.log(`FAIL watchdog: the run took longer than ${WATCHDOG_MS} ms`);
  killDemo();
  process.exit(1);
}, WATCHDOG_MS);
watchdog.unref();

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/// Starts `switchyard --log-format json demo` and collects its JSON log events from stderr.
function startDemo() {
  const events = [];
  const lines = [];
  const waiters = new Set();
  // The demo writes its config and certificates under TMPDIR; ours is removed even after a kill.
  const tmp = mkdtempSync(join(tmpdir(), "switchyard-browser-"));
  const child = spawn(BIN, ["--log-format", "json", "--log-level", "info", "demo"], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: "", TMPDIR: tmp },
  });
  let stdout = "";
  child.stdout.on("data", (d) => {
    stdout += d;
  });
  const notify = () => {
    for (const w of waiters) w();
  };
  createInterface({ input: child.stderr }).on("line", (line) => {
    lines.push(line);
    try {
      const ev = JSON.parse(line);
      if (ev && typeof ev === "object") events.push(ev);
    } catch {
      // a non-JSON line (e.g. the final `switchyard: ...` error message) is kept in `lines`
    }
    notify();
  });
  const exited = new Promise((resolveExit) => {
    child.on("exit", (code, signal) => {
      notify();
      resolveExit({ code, signal });
    });
  });
  child.on("error", (e) => {
    lines.push(`spawn error: ${e.message}`);
    notify();
  });
  // Resolves with the first event matching `pred`; rejects if the process exits first.
  const waitEvent = (what, pred, ms) =>
    withTimeout(
      new Promise((res, rej) => {
        const check = () => {
          const found = events.find(pred);
          if (found) {
            waiters.delete(check);
            res(found);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            waiters.delete(check);
            rej(new Error(`${what}: the demo exited (${child.exitCode ?? child.signalCode}) first\n${lines.join("\n")}`));
          }
        };
        waiters.add(check);
        check();
      }),
      ms,
      what,
    );
  return { child, events, lines, exited, waitEvent, stdout: () => stdout, tmp };
}

const isAccess = (ev) => ev.target === "access";
const wsHandshakes = (events) =>
  events.filter((ev) => isAccess(ev) && ev.message === "handshake" && ev.path === "/ws");

/// SHA-256 of the dev certificate's SubjectPublicKeyInfo, base64: Chromium then accepts exactly
/// this key (and nothing else) without a certificate warning, so h2 pooling works as with a
/// trusted certificate.
function devCertSpkiHash() {
  const cert = new X509Certificate(readFileSync(join(ROOT, "certs/server.pem")));
  const spki = cert.publicKey.export({ type: "spki", format: "der" });
  return createHash("sha256").update(spki).digest("base64");
}

async function step(name, body) {
  try {
    await body();
    results.push([name, null]);
    console.log(`PASS ${name}`);
  } catch (e) {
    results.push([name, e]);
    console.log(`FAIL ${name}: ${e && e.message ? e.message : e}`);
  }
}

/// Picks `protocols` on the page, connects, and returns the subprotocol the page reports.
async function connect(page, protocols) {
  await page.selectOption("#protocols", protocols);
  await page.click("#connect");
  await page.waitForSelector('#status:is([data-state="open"], [data-state="closed"])');
  const state = await page.getAttribute("#status", "data-state");
  assert(state === "open", `offering ${protocols}: the WebSocket did not open (state ${state})`);
  return page.getAttribute("#status", "data-protocol");
}

/// Sends `text` from the page and waits for a log line `expected` (exact text after the tag).
async function sendAndExpect(page, text, expected) {
  await page.fill("#message", text);
  await page.click("#send");
  await waitLogLine(page, expected);
}

async function waitLogLine(page, expected) {
  await page.waitForFunction(
    (want) => [...document.querySelectorAll("#log li.in")].some((li) => li.textContent.endsWith(" " + want)),
    expected,
  );
}

async function metric(name, labels) {
  const res = await fetch(`http://${ADMIN}/metrics`);
  assert(res.status === 200, `/metrics answered ${res.status}`);
  const text = await res.text();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{")) continue;
    const labelText = line.slice(name.length + 1, line.indexOf("}"));
    if (want.every((w) => labelText.split(",").includes(w))) {
      return Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return 0;
}

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  demo = startDemo();

  await step("demo starts: three `listening` events and /healthz 200", async () => {
    for (const [kind, addr] of [["listener", HTTP], ["listener", HTTPS], ["admin", ADMIN]]) {
      await demo.waitEvent(
        `listening ${kind} ${addr}`,
        (ev) => ev.message === "listening" && ev.kind === kind && ev.addr === addr,
        READY_MS,
      );
    }
    const res = await fetch(`http://${ADMIN}/healthz`);
    assert(res.status === 200, `/healthz answered ${res.status}`);
  });
  if (results.some(([, e]) => e)) return;

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${devCertSpkiHash()}`],
    timeout: STEP_MS * 2,
  });
  const context = await browser.newContext({ viewport: { width: 900, height: 720 } });
  context.setDefaultTimeout(STEP_MS);
  const consoleLines = [];
  context.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));

  const chatA = await context.newPage();
  await step("wss:// page on :8443 arrives over h2", async () => {
    const res = await chatA.goto(`https://${HTTPS}/`);
    assert(res && res.status() === 200, `GET / answered ${res && res.status()}`);
    const proto = await chatA.textContent("#page-protocol");
    assert(proto === "h2", `page nextHopProtocol is ${JSON.stringify(proto)}, want "h2"`);
  });

  await step('wss:// offering ["chat.v1","echo.v1"] selects chat.v1 and chat broadcasts', async () => {
    const selected = await connect(chatA, "chat.v1,echo.v1");
    assert(selected === "chat.v1", `ws.protocol is ${JSON.stringify(selected)}, want "chat.v1"`);
    const chatB = await context.newPage();
    await chatB.goto(`https://${HTTPS}/`);
    const selectedB = await connect(chatB, "chat.v1");
    assert(selectedB === "chat.v1", `second client: ws.protocol ${JSON.stringify(selectedB)}`);
    // A's line reaches A and B: one message, two clients, the chat upstream's broadcast.
    await chatA.fill("#message", "hello from chromium");
    await chatA.click("#send");
    await waitLogLine(chatA, /* own copy */ await chatLine(chatA, "hello from chromium"));
    await waitLogLine(chatB, await chatLine(chatA, "hello from chromium"));
    await chatB.screenshot({ path: join(ARTIFACTS, "demo-chat-second-client.png"), fullPage: true });
  });

  await step('wss:// offering ["echo.v1","chat.v1"] selects echo.v1, answered by the echo upstream', async () => {
    const page = await context.newPage();
    await page.goto(`https://${HTTPS}/`);
    const selected = await connect(page, "echo.v1,chat.v1");
    assert(selected === "echo.v1", `ws.protocol is ${JSON.stringify(selected)}, want "echo.v1"`);
    await sendAndExpect(page, "ping", "echo.v1 upstream: ping");
  });

  await chatA.screenshot({ path: join(ARTIFACTS, "demo-wss-h2.png"), fullPage: true });

  await step("RFC 8441: every wss:// handshake went over HTTP/2 (access log + metrics)", async () => {
    const hs = await demo.waitEvent(
      "access handshake HTTP/2 chat.v1",
      (ev) => isAccess(ev) && ev.path === "/ws" && ev.subprotocol === "chat.v1" && ev.http_version === "HTTP/2",
      STEP_MS,
    );
    assert(hs.status === 200, `h2 handshake status ${hs.status}, want 200 (extended CONNECT)`);
    const all = wsHandshakes(demo.events);
    assert(all.length === 3, `want 3 /ws handshakes (chat A, chat B, echo), got ${all.length}: ${JSON.stringify(all)}`);
    for (const ev of all) {
      assert(
        ev.http_version === "HTTP/2" && ev.status === 200,
        `a wss:// handshake was not RFC 8441: ${JSON.stringify(ev)}`,
      );
    }
    const echo = all.filter((ev) => ev.subprotocol === "echo.v1" && ev.upstream === "echo");
    assert(echo.length === 1, `want one echo.v1 handshake to upstream echo: ${JSON.stringify(all)}`);
    const counted = await metric("switchyard_handshakes_total", { route: "/ws", status: "200" });
    assert(counted === 3, `switchyard_handshakes_total{route="/ws",status="200"} = ${counted}, want 3`);
    console.log(`  access: ${JSON.stringify(hs)}`);
  });

  await step('ws:// page on :8080 over HTTP/1.1: ["echo.v1","chat.v1"] -> echo.v1, status 101', async () => {
    const page = await context.newPage();
    const res = await page.goto(`http://${HTTP}/`);
    assert(res && res.status() === 200, `GET / answered ${res && res.status()}`);
    const proto = await page.textContent("#page-protocol");
    assert(proto === "http/1.1", `page nextHopProtocol is ${JSON.stringify(proto)}, want "http/1.1"`);
    const selected = await connect(page, "echo.v1,chat.v1");
    assert(selected === "echo.v1", `ws.protocol is ${JSON.stringify(selected)}, want "echo.v1"`);
    await sendAndExpect(page, "over h1", "echo.v1 upstream: over h1");
    const ev = await demo.waitEvent(
      "access handshake HTTP/1.1",
      (e) => isAccess(e) && e.path === "/ws" && e.host === HTTP && e.http_version === "HTTP/1.1",
      STEP_MS,
    );
    assert(ev.status === 101 && ev.subprotocol === "echo.v1", `h1 handshake: ${JSON.stringify(ev)}`);
    await page.screenshot({ path: join(ARTIFACTS, "demo-ws-h1.png"), fullPage: true });
  });

  await step('an unmapped subprotocol ["mqtt"] is refused by the gateway with 400', async () => {
    const page = await context.newPage();
    await page.goto(`https://${HTTPS}/`);
    await page.selectOption("#protocols", "mqtt");
    await page.click("#connect");
    await page.waitForSelector('#status[data-state="closed"]');
    const ev = await demo.waitEvent(
      "access handshake 400",
      (e) => isAccess(e) && e.path === "/ws" && e.status === 400,
      STEP_MS,
    );
    assert(ev.upstream === "-", `a refused handshake named an upstream: ${JSON.stringify(ev)}`);
  });

  await browser.close();
  browser = null;
  writeFileSync(join(ARTIFACTS, "browser-console.log"), consoleLines.join("\n") + "\n");

  // QUIC is off above (so h2 is what is proven there); this browser forces it for :8443, as
  // Chromium does not use QUIC with a certificate outside the public roots otherwise.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      ...CHROMIUM_ARGS.filter((a) => a !== "--disable-quic"),
      "--enable-quic",
      `--origin-to-force-quic-on=${HTTPS}`,
      "--enable-features=EnableWebsocketsOverHttp3",
      `--ignore-certificate-errors-spki-list=${devCertSpkiHash()}`,
    ],
    timeout: STEP_MS * 2,
  });
  const h3 = await browser.newContext({ viewport: { width: 900, height: 720 } });
  h3.setDefaultTimeout(STEP_MS);
  await step("RFC 9220: the page over HTTP/3 opens echo.v1 over HTTP/3 (access log)", async () => {
    const page = await h3.newPage();
    const res = await page.goto(`https://${HTTPS}/`);
    assert(res && res.status() === 200, `GET / answered ${res && res.status()}`);
    const proto = await page.textContent("#page-protocol");
    assert(proto === "h3", `page nextHopProtocol is ${JSON.stringify(proto)}, want "h3"`);
    const selected = await connect(page, "echo.v1,chat.v1");
    assert(selected === "echo.v1", `ws.protocol is ${JSON.stringify(selected)}, want "echo.v1"`);
    await sendAndExpect(page, "over h3", "echo.v1 upstream: over h3");
    const ev = await demo.waitEvent(
      "access handshake HTTP/3",
      (e) => isAccess(e) && e.message === "handshake" && e.path === "/ws" && e.http_version === "HTTP/3",
      STEP_MS,
    );
    assert(ev.status === 200 && ev.subprotocol === "echo.v1", `h3 handshake: ${JSON.stringify(ev)}`);
    console.log(`  access: ${JSON.stringify(ev)}`);
    await page.screenshot({ path: join(ARTIFACTS, "demo-wss-h3.png"), fullPage: true });
  });
  await browser.close();
  browser = null;

  await step("Ctrl-C (SIGINT) drains and exits 0", async () => {
    demo.child.kill("SIGINT");
    const { code, signal } = await withTimeout(demo.exited, EXIT_MS, "exit after SIGINT");
    assert(code === 0, `exit code ${code} signal ${signal}`);
    assert(demo.events.some((e) => e.message === "drained; exiting"), "no `drained; exiting` event");
  });
}

/// The exact line the chat upstream broadcasts for `text` sent by `page`'s client.
async function chatLine(page, text) {
  // The page's own join announcement names its guest number: "[chat.v1] guest-N joined".
  const joined = await page.evaluate(() =>
    [...document.querySelectorAll("#log li.in")].map((li) => li.textContent).find((t) => / joined$/.test(t)),
  );
  const m = joined && joined.match(/\[chat\.v1\] (guest-\d+) joined$/);
  assert(m, `no join announcement on the page (log: ${JSON.stringify(joined)})`);
  return `[chat.v1] ${m[1]}: ${text}`;
}

try {
  await main();
} catch (e) {
  results.push(["run", e]);
  console.log(`FAIL run: ${e && e.stack ? e.stack : e}`);
} finally {
  if (browser) await browser.close().catch(() => {});
  killDemo();
  if (demo) {
    writeFileSync(join(ARTIFACTS, "gateway.log"), demo.lines.join("\n") + "\n");
    writeFileSync(join(ARTIFACTS, "demo-stdout.txt"), demo.stdout());
    rmSync(demo.tmp, { recursive: true, force: true });
  }
}
const failed = results.filter(([, e]) => e).length;
console.log(`${results.length - failed} passed, ${failed} failed (artifacts in ${ARTIFACTS})`);
process.exit(failed === 0 ? 0 : 1);
