// What the browser tests share: the stack scripts/browser-test.sh started
// (GENQ_BASE_URL, GENQ_ADMIN_TOKEN), a headless Debian Chromium driven by
// playwright-core (never a downloaded browser), API calls beside the page,
// screenshots kept under GENQ_ARTIFACTS, and polling with a deadline.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const BASE = process.env.GENQ_BASE_URL ?? 'http://127.0.0.1:18381';
const ADMIN_TOKEN = process.env.GENQ_ADMIN_TOKEN;
const ARTIFACTS = process.env.GENQ_ARTIFACTS ?? 'target/browser';
const CHROMIUM = process.env.GENQ_CHROMIUM ?? '/usr/bin/chromium';
mkdirSync(ARTIFACTS, { recursive: true });

export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // No sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
}

/** A fresh browser context (own sessionStorage) and page; uncaught page errors fail the test. */
export async function openPage(browser, t, options = {}, path = '/') {
  const context = await browser.newContext({ viewport: { width: 1000, height: 900 }, ...options });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  page.setDefaultTimeout(20_000);
  t.after(async () => {
    await context.close();
    if (errors.length) throw new Error(`the page threw: ${errors.map(String).join('; ')}`);
  });
  await page.goto(BASE + path);
  // Set once; still there at the end means the page never reloaded.
  await page.evaluate(() => (window.__sameDocument = true));
  return { context, page };
}

export async function stillSameDocument(page) {
  return page.evaluate(() => window.__sameDocument === true);
}

export async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** An API call beside the page: [status, body]. */
export async function api(method, path, token, body, headers = {}) {
  const response = await fetch(BASE + path, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...headers,
    },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  return [response.status, text ? JSON.parse(text) : null];
}

let counter = 0;
/** A new user (dev sign-in, so `dev:<name>`), created with the 8 initial credits; returns its name and token. */
export async function newUser(prefix) {
  const name = `${prefix}-${process.pid}-${Date.now().toString(36)}-${counter++}`;
  const [status, body] = await api('POST', '/v1/dev/sign-in', null, { name });
  if (status !== 200) throw new Error(`dev sign-in: ${status} ${JSON.stringify(body)}`);
  const [s2] = await api('GET', '/v1/credits', body.token);
  if (s2 !== 200) throw new Error(`credits: ${s2}`);
  return { name, sub: body.sub, token: body.token };
}

/** An admin grant, as an operator would make it. */
export async function grant(user, amount) {
  if (!ADMIN_TOKEN) throw new Error('GENQ_ADMIN_TOKEN is not set (run scripts/browser-test.sh)');
  const [status, body] = await api('POST', '/v1/admin/credits', ADMIN_TOKEN, {
    user_id: user.sub,
    amount,
    reason: 'browser test',
    kind: 'grant',
  });
  if (status !== 200) throw new Error(`grant: ${status} ${JSON.stringify(body)}`);
  return body.credits;
}

export async function jobsOf(user) {
  const [status, body] = await api('GET', '/v1/generations?limit=100', user.token);
  if (status !== 200) throw new Error(`list: ${status}`);
  return body.items;
}

/** Polls `check` until it returns a truthy value, or fails after `ms`. */
export async function eventually(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** Signs in on the page by pasting a token. */
export async function pasteToken(page, token) {
  await page.getByLabel('Your API token').fill(token);
  await page.getByRole('button', { name: 'Use this token' }).click();
  await page.locator('#app').waitFor({ state: 'visible' });
}

/** Signs in on the page with the development sign-in. */
export async function devSignIn(page, name) {
  await page.getByLabel('Or sign in for development as').fill(name);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.locator('#app').waitFor({ state: 'visible' });
}

/** Records every status each job row shows, in order (a MutationObserver in the page). */
export async function recordStatuses(page) {
  await page.evaluate(() => {
    window.__statuses = {};
    const note = () => {
      for (const li of document.querySelectorAll('li.job')) {
        const seen = (window.__statuses[li.dataset.id] ??= []);
        const text = li.querySelector('[data-role=status]')?.textContent ?? '';
        if (seen[seen.length - 1] !== text) seen.push(text);
      }
    };
    new MutationObserver(note).observe(document.getElementById('job-list'), {
      subtree: true,
      childList: true,
      characterData: true,
      attributes: true,
    });
    note();
  });
}

export async function statusesOf(page, id) {
  return page.evaluate((id) => window.__statuses?.[id] ?? [], id);
}

export function row(page, id) {
  return page.locator(`li.job[data-id="${id}"]`);
}

/** The newest job row's id, once there is one. */
export async function newestJobId(page) {
  const li = page.locator('li.job').first();
  await li.waitFor();
  return li.getAttribute('data-id');
}
