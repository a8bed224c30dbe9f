// The page in a real browser (Debian's Chromium) against the real API,
// workers and provider simulator that scripts/browser-test.sh started: what
// the incident (a 402 nobody saw) asked to prove, and the rest of the page.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  api,
  devSignIn,
  eventually,
  grant,
  jobsOf,
  launch,
  newestJobId,
  newUser,
  openPage,
  pasteToken,
  recordStatuses,
  row,
  shot,
  statusesOf,
  stillSameDocument,
} from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

const button = (page) => page.locator('#generate-button');
const reason = (page) => page.locator('#generate-reason');

test('a user with 8 credits sees the button disabled with the reason; an admin grant enables it without a reload', async (t) => {
  const user = await newUser('short');
  const { page } = await openPage(browser, t);
  await pasteToken(page, user.token);
  await eventually('the credits', async () => (await page.locator('#credits-available').textContent()) === '8');
  await assert.doesNotReject(button(page).isDisabled());
  assert.equal(await button(page).isDisabled(), true);
  assert.equal((await reason(page).textContent()).trim(), 'A video needs 10 credits; you have 8. Buy credits');
  assert.equal(await reason(page).getByRole('link', { name: 'Buy credits' }).getAttribute('href'), '/pricing');
  assert.equal(await page.locator('#credits-cost').textContent(), '10');
  assert.equal(await page.locator('#price').textContent(), 'This video costs 10 credits.');
  await shot(page, 'short-of-credits');

  await grant(user, 10);
  // The page re-reads the credits every 5 s while they are short (and on focus).
  await eventually('the button to enable', async () => !(await button(page).isDisabled()), 15_000);
  assert.equal(await page.locator('#credits-available').textContent(), '18');
  assert.equal(await reason(page).isHidden(), true);
  assert.ok(await stillSameDocument(page), 'the page reloaded');
  await shot(page, 'after-grant');
});

test('a click makes one job that goes queued → running → succeeded live, and plays its video', async (t) => {
  const user = await newUser('live');
  await grant(user, 10);
  const { page } = await openPage(browser, t);
  await devSignIn(page, user.name);
  await page.locator('#live[data-state="live"]').waitFor();
  await eventually('the button to enable', async () => !(await button(page).isDisabled()));
  await recordStatuses(page);
  await page.getByLabel('What should the video show?').fill('a lighthouse at dusk');
  await button(page).click();
  const id = await newestJobId(page);
  await row(page, id).locator('[data-status="succeeded"]').waitFor({ timeout: 30_000 });
  const seen = await statusesOf(page, id);
  const order = ['Queued', 'Running', 'Succeeded'].map((s) => seen.indexOf(s));
  assert.ok(order.every((i, n) => i >= 0 && (n === 0 || i > order[n - 1])), `statuses seen: ${seen.join(' → ')}`);
  assert.ok(await stillSameDocument(page), 'the page reloaded');
  // The video, fetched with the bearer token, plays from a blob: URL.
  const video = row(page, id).locator('video');
  await video.waitFor();
  assert.match(await video.getAttribute('src'), /^blob:/);
  // A real video: the browser decodes it (the simulator's 2 s, 320x180 MP4)
  // and plays a frame, which the screenshot shows.
  await eventually('the video to decode', async () =>
    video.evaluate((v) => v.readyState >= 1 && v.videoWidth === 320 && Math.round(v.duration) === 2),
  );
  await video.evaluate(async (v) => {
    v.muted = true;
    v.currentTime = 1;
    await new Promise((resolve) => v.addEventListener('seeked', resolve, { once: true }));
  });
  await eventually('the row to say what was spent', async () =>
    /10 credits spent/.test(await row(page, id).locator('.detail').textContent()),
  );
  assert.equal(await page.locator('#credits-available').textContent(), '8');
  await shot(page, 'succeeded-live');
});

test('a double click makes exactly one job', async (t) => {
  const user = await newUser('double');
  await grant(user, 100);
  const { page } = await openPage(browser, t);
  await pasteToken(page, user.token);
  await eventually('the button to enable', async () => !(await button(page).isDisabled()));
  await page.getByLabel('What should the video show?').fill('a double click');
  await button(page).dblclick();
  const id = await newestJobId(page);
  await row(page, id).locator('[data-status="succeeded"]').waitFor({ timeout: 30_000 });
  const jobs = await jobsOf(user);
  assert.equal(jobs.length, 1, `jobs: ${JSON.stringify(jobs.map((j) => j.status))}`);
  assert.equal(await page.locator('li.job').count(), 1);
});

test('a failed job shows its reason and the refund', async (t) => {
  const user = await newUser('failed');
  await grant(user, 10);
  const { page } = await openPage(browser, t);
  await devSignIn(page, user.name);
  await eventually('the button to enable', async () => !(await button(page).isDisabled()));
  await page.getByLabel('What should the video show?').fill('[sim:moderation] a forbidden scene');
  await button(page).click();
  const id = await newestJobId(page);
  await row(page, id).locator('[data-status="failed"]').waitFor({ timeout: 30_000 });
  const [, job] = await api('GET', `/v1/generations/${id}`, user.token);
  assert.equal(job.status, 'failed');
  const reasonText = job.error.message.replace(/[.\s]+$/, '');
  await eventually('the reason and the refund', async () => {
    const detail = await row(page, id).locator('.detail').textContent();
    return detail === `Failed: ${reasonText}. 10 credits refunded.` ? detail : false;
  });
  await eventually('the refunded credits', async () => (await page.locator('#credits-available').textContent()) === '18');
  const [, ledger] = await api('GET', '/v1/credits/ledger', user.token);
  assert.ok(ledger.items.some((e) => e.kind === 'refund' && e.job_id === id && e.amount === 10));
  await shot(page, 'failed-refunded');
});

test('a running job can be canceled, and its credits come back', async (t) => {
  const user = await newUser('cancel');
  await grant(user, 10);
  const { page } = await openPage(browser, t);
  await pasteToken(page, user.token);
  await eventually('the button to enable', async () => !(await button(page).isDisabled()));
  await page.getByLabel('What should the video show?').fill('[sim:hang] a video that never ends');
  await button(page).click();
  const id = await newestJobId(page);
  await row(page, id).locator('[data-status="running"]').waitFor();
  await row(page, id).getByRole('button', { name: /^Cancel/ }).click();
  await row(page, id).locator('[data-status="canceled"]').waitFor();
  await eventually('the refund', async () =>
    (await row(page, id).locator('.detail').textContent()) === 'Canceled. 10 credits refunded.',
  );
  await eventually('the credits back', async () => (await page.locator('#credits-available').textContent()) === '18');
});

test('a 402 (credits spent elsewhere meanwhile) is shown in words, with the refused attempt and the pricing link', async (t) => {
  const user = await newUser('refused');
  await grant(user, 2); // 10: one video
  const { page } = await openPage(browser, t);
  await pasteToken(page, user.token);
  await eventually('the button to enable', async () => !(await button(page).isDisabled()));
  // Hold the page's submission until another client (another tab, say) has
  // spent the credits, then let it through to the real API, which answers 402.
  await page.route('**/v1/generations', async (route) => {
    if (route.request().method() === 'POST') {
      const [status] = await api('POST', '/v1/generations', user.token, { prompt: '[sim:hang] from another tab' });
      assert.equal(status, 202);
    }
    await route.continue();
  });
  await page.getByLabel('What should the video show?').fill('a video I cannot afford');
  await button(page).click();
  const problem = page.locator('#generate-problem');
  await eventually('the 402 in words', async () =>
    (await problem.textContent()).startsWith('Not enough credits: a video needs 10 credits; you have 0.'),
  );
  assert.equal(await problem.getByRole('link', { name: 'Buy credits' }).getAttribute('href'), '/pricing');
  // The button is disabled with the reason, and the refused attempt is in the list.
  await eventually('the disabled button', () => button(page).isDisabled());
  assert.match(await reason(page).textContent(), /^A video needs 10 credits; you have 0\./);
  const refused = page.locator('li.job[data-status="rejected"]');
  await refused.waitFor();
  assert.equal(await refused.locator('.detail').textContent(), 'A video needs 10 credits; you have 0. No credits were taken.');
  await shot(page, 'refused-402');
});

test('a network failure is shown in words, and pressing again submits once', async (t) => {
  const user = await newUser('offline');
  await grant(user, 10);
  const { context, page } = await openPage(browser, t);
  await pasteToken(page, user.token);
  await eventually('the button to enable', async () => !(await button(page).isDisabled()));
  await page.getByLabel('What should the video show?').fill('made while offline');
  await context.setOffline(true);
  await button(page).click();
  const problem = page.locator('#generate-problem');
  await eventually('the network problem', async () =>
    (await problem.textContent()).startsWith('Could not reach genq: check your connection, then try again.'),
  );
  await shot(page, 'offline');
  await context.setOffline(false);
  await button(page).click();
  const id = await newestJobId(page);
  assert.equal((await jobsOf(user)).length, 1);
  await row(page, id).locator('[data-status="succeeded"]').waitFor({ timeout: 30_000 });
});

test('too many submissions: 429 with the wait from Retry-After, the button waits too', async (t) => {
  const user = await newUser('busy');
  await grant(user, 100);
  // The stack allows a burst of 3 submissions per user (GENQ__API__SUBMIT_BURST=3).
  for (let i = 0; i < 3; i++) {
    const [status] = await api('POST', '/v1/generations', user.token, { prompt: `burst ${i}` });
    assert.equal(status, 202);
  }
  const { page } = await openPage(browser, t);
  await pasteToken(page, user.token);
  await eventually('the button to enable', async () => !(await button(page).isDisabled()));
  await page.getByLabel('What should the video show?').fill('one too many');
  await button(page).click();
  const problem = page.locator('#generate-problem');
  const text = await eventually('the 429 in words', async () => {
    const t = await problem.textContent();
    return /^Too many requests: try again in \d+ seconds?\.$/.test(t) ? t : false;
  });
  assert.ok(Number(text.match(/\d+/)[0]) > 1, text);
  assert.equal(await button(page).isDisabled(), true);
  assert.match(await reason(page).textContent(), /^Too many submissions: you can submit again in \d+ s\.$/);
  await shot(page, 'rate-limited');
});

test('keyboard only: sign in, fill the form and submit without a mouse, with visible focus', async (t) => {
  const user = await newUser('keys');
  await grant(user, 10);
  const { page } = await openPage(browser, t);
  const focused = () => page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName);
  const tabTo = async (id) => {
    for (let i = 0; i < 15; i++) {
      if ((await focused()) === id) return;
      await page.keyboard.press('Tab');
    }
    assert.fail(`Tab never reached #${id}`);
  };
  await tabTo('dev-name');
  await page.keyboard.type(user.name);
  await page.keyboard.press('Enter');
  await page.locator('#app').waitFor({ state: 'visible' });
  await eventually('the button to enable', async () => !(await button(page).isDisabled()));
  await tabTo('prompt');
  await page.keyboard.type('typed without a mouse');
  // The order of the form: prompt → length → shape → button.
  const order = [];
  for (let i = 0; i < 3; i++) {
    await page.keyboard.press('Tab');
    order.push(await focused());
  }
  assert.deepEqual(order, ['duration', 'aspect', 'generate-button']);
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, 'none', 'the focused button shows no focus ring');
  await shot(page, 'keyboard-focus');
  await page.keyboard.press('Enter');
  const id = await newestJobId(page);
  await row(page, id).locator('[data-status="succeeded"]').waitFor({ timeout: 30_000 });
  assert.equal((await jobsOf(user)).length, 1);
});

test('usable at 375 px: nothing wider than the screen', async (t) => {
  const user = await newUser('phone');
  await grant(user, 10);
  await api('POST', '/v1/generations', user.token, { prompt: '[sim:moderation] a phone-sized failure' });
  const { page } = await openPage(browser, t, { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true });
  await pasteToken(page, user.token);
  await page.locator('li.job[data-status="failed"]').waitFor({ timeout: 30_000 });
  await eventually('the credits', async () => (await page.locator('#credits-available').textContent()) === '18');
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 375, `the page is ${width} px wide`);
  await shot(page, 'phone');
});

test('the list: a refused attempt, a failure with its refund, a finished video to play, and the reason the button waits', async (t) => {
  const user = await newUser('story');
  const [refusedStatus] = await api('POST', '/v1/generations', user.token, { prompt: 'a lighthouse at dusk' });
  assert.equal(refusedStatus, 402);
  await grant(user, 10);
  const [, failing] = await api('POST', '/v1/generations', user.token, { prompt: '[sim:moderation] a forbidden scene' });
  await eventually('the failure', async () => (await api('GET', `/v1/generations/${failing.id}`, user.token))[1].status === 'failed', 30_000);
  const [, made] = await api('POST', '/v1/generations', user.token, { prompt: 'a lighthouse at dusk, again' });
  await eventually('the video', async () => (await api('GET', `/v1/generations/${made.id}`, user.token))[1].status === 'succeeded', 30_000);

  const { page } = await openPage(browser, t);
  await pasteToken(page, user.token);
  await page.locator('li.job').nth(2).waitFor();
  assert.deepEqual(
    await page.locator('li.job').evaluateAll((lis) => lis.map((li) => li.dataset.status)),
    ['succeeded', 'failed', 'rejected'],
  );
  assert.equal(
    await page.locator('li.job[data-status="rejected"] .detail').textContent(),
    'A video needs 10 credits; you have 8. No credits were taken.',
  );
  await eventually('the refund', async () => /10 credits refunded\.$/.test(await row(page, failing.id).locator('.detail').textContent()));
  await row(page, made.id).getByRole('button', { name: /^Play/ }).click();
  assert.match(await row(page, made.id).locator('video').getAttribute('src'), /^blob:/);
  await eventually('the credits', async () => (await page.locator('#credits-available').textContent()) === '8');
  assert.equal(await button(page).isDisabled(), true);
  assert.equal((await reason(page).textContent()).trim(), 'A video needs 10 credits; you have 8. Buy credits');
  await page.getByLabel('What should the video show?').fill('a lighthouse at dawn');
  await shot(page, 'page');
});

test('a job over the user’s limit waits in line, says why and where, and starts when the slot frees', async (t) => {
  const user = await newUser('line');
  await grant(user, 20);
  const admin = process.env.GENQ_ADMIN_TOKEN;
  const [status, limits] = await api('PUT', `/v1/admin/users/${encodeURIComponent(user.sub)}/limits`, admin, { max_active: 1, reason: 'browser test' });
  assert.equal(status, 200, JSON.stringify(limits));
  const { page } = await openPage(browser, t);
  await devSignIn(page, user.name);
  await page.locator('#live[data-state="live"]').waitFor();
  await eventually('the button to enable', async () => !(await button(page).isDisabled()));
  await page.getByLabel('What should the video show?').fill('[sim:hang] the first, which never ends');
  await button(page).click();
  const first = await newestJobId(page);
  await row(page, first).locator('[data-status="running"]').waitFor();
  await page.getByLabel('What should the video show?').fill('the second, which waits');
  await button(page).click();
  await eventually('a second row', async () => (await newestJobId(page)) !== first);
  const second = await newestJobId(page);
  await eventually('the reason and the place in line', async () =>
    (await row(page, second).locator('.detail').textContent()) ===
      'Waiting: you have 1 video in progress, the most at once on your plan. Place in line: 1.',
  );
  assert.equal(await row(page, second).locator('[data-status]').first().getAttribute('data-status'), 'queued');
  // The operator's System page lists the line.
  const [, system] = await api('GET', '/v1/admin/system', admin);
  assert.ok(system.lines.some((l) => l.waiting_users >= 1 && l.longest_lines.some((u) => u.user_id)), JSON.stringify(system.lines));
  await shot(page, 'waiting-in-line');
  // The first one's cancel frees the slot: the second starts at once.
  await row(page, first).getByRole('button', { name: /^Cancel/ }).click();
  await row(page, first).locator('[data-status="canceled"]').waitFor();
  await row(page, second).locator('[data-status="succeeded"]').waitFor({ timeout: 30_000 });
  assert.doesNotMatch(await row(page, second).locator('.detail').textContent(), /Place in line/);
});
