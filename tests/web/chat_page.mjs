// Drives the chat page of stip-client serve --http in headless Chromium
// (Debian's /usr/bin/chromium through playwright-core): lists the models,
// sends a prompt, waits for the streamed answer, keeps a screenshot, then
// checks the stop button on a long answer.
// Usage: node chat_page.mjs NODE_MODULES_DIR URL API_KEY PROMPT MAX_TOKENS SCREENSHOT PROFILE_DIR
// Prints one JSON object for the C++ test to check.
import { createRequire } from 'node:module';
const [modules, url, apiKey, prompt, maxTokens, screenshot, profile] = process.argv.slice(2);
const require = createRequire(modules + '/');
const { chromium } = require('playwright-core');

const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.STIP_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1200, height: 800 },
});
const out = {};
try {
  const page = context.pages()[0] || await context.newPage();
  const consoleErrors = [];
  // (The page lists the models once before the key is typed in: that 401 is expected.)
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().includes('401')) consoleErrors.push(m.text());
  });
  await page.goto(url, { waitUntil: 'load' });
  out.title = await page.title();
  await page.fill('#api-key', apiKey);
  await page.dispatchEvent('#api-key', 'change');
  await page.waitForFunction(() => document.querySelectorAll('#model option').length > 0,
                             null, { timeout: 30000 });
  out.models = await page.$$eval('#model option', (os) => os.map((o) => o.value));
  out.privacy = await page.textContent('#privacy');
  await page.fill('#max-tokens', maxTokens);
  await page.fill('#temperature', '0');
  await page.fill('#prompt', prompt);
  await page.press('#prompt', 'Enter');
  // Streaming: the answer grows while the stop button is enabled.
  await page.waitForFunction(() => {
    const m = document.querySelector('.message.assistant');
    return m && m.textContent.length > 0;
  }, null, { timeout: 60000 });
  await page.waitForSelector('.message.assistant[data-done="true"]', { timeout: 120000 });
  out.answer = await page.textContent('.message.assistant[data-done="true"]');
  out.status = await page.textContent('#status');
  await page.screenshot({ path: screenshot, fullPage: true });

  // A long second turn, stopped mid-answer; the conversation is kept.
  await page.fill('#max-tokens', '400');
  await page.fill('#prompt', 'And Moses said');
  await page.press('#prompt', 'Enter');
  // Stop as soon as the first piece shows (in the page: the answer is fast).
  await page.waitForFunction(() => {
    const ms = document.querySelectorAll('.message.assistant');
    if (ms.length !== 2 || ms[1].textContent.length === 0) return false;
    document.getElementById('stop').click();
    return true;
  }, null, { timeout: 60000, polling: 1 });
  await page.waitForSelector('.message.assistant[data-done="stopped"]', { timeout: 30000 });
  out.messages = await page.$$eval('.message', (ms) => ms.map((m) => m.className));
  out.stopped_status = await page.textContent('#status');
  out.console_errors = consoleErrors;
} finally {
  await context.close();
}
process.stdout.write(JSON.stringify(out) + '\n');
