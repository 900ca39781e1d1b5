// Runs listener.html in Debian's headless Chromium and prints its log lines on stdout:
//   node bench/browser/listen.mjs <livekit url> <token> <threshold rms> <quiet ms>
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const [url, token, threshold, quietMs] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    // this machine's network is closed: no calls home at start
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    // offer host addresses as they are, not as mDNS names the server cannot resolve
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
  ],
});
const page = await browser.newPage();
page.on("console", (message) => process.stdout.write(`${message.text()}\n`));
page.on("pageerror", (error) => process.stderr.write(`page error: ${error}\n`));
const query = new URLSearchParams({ url, token, threshold, quiet_ms: quietMs });
const here = dirname(fileURLToPath(import.meta.url));
await page.goto(`file://${join(here, "listener.html")}?${query}`);
const close = async () => {
  await browser.close();
  process.exit(0);
};
process.on("SIGTERM", close);
process.on("SIGINT", close);
