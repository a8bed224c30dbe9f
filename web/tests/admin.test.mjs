// The operator console (/admin) in a real browser against the real API,
// workers and provider simulator: real dead letters (the simulator answers
// 503 to every submission of a `[sim:5xx-always]` prompt; the worker gives
// up after GENQ__WORKER__MAX_ATTEMPTS and dead-letters the message), a
// filtered bulk replay that reserves again only for the user who can afford
// it, a viewer who sees but cannot act, and a user who is refused.
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, test } from 'node:test';
import { api, eventually, grant, jobsOf, launch, newUser, openPage, shot } from './helpers.mjs';

const ADMIN_TOKEN = process.env.GENQ_ADMIN_TOKEN;
const VIEWER_TOKEN = process.env.GENQ_VIEWER_TOKEN;

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

async function signIn(page, token) {
  await page.getByLabel('Your operator token').fill(token);
  await page.getByRole('button', { name: 'Use this token' }).click();
}

/** A user whose job died with its message dead-lettered; returns the user, the job and the letter. */
async function deadJob(prefix) {
  const user = await newUser(prefix);
  await grant(user, 2); // 8 + 2: exactly one video
  const [s, job] = await api('POST', '/v1/generations', user.token, { prompt: `[sim:5xx-always] ${prefix}` });
  assert.equal(s, 202, JSON.stringify(job));
  await eventually(`${prefix}'s job to die`, async () => (await jobsOf(user)).find((j) => j.id === job.id && j.status === 'dead'), 60_000);
  const letter = await eventually(`${prefix}'s dead letter`, async () => {
    const [, letters] = await api('GET', `/v1/admin/dlq?user=${encodeURIComponent(user.sub)}`, ADMIN_TOKEN);
    return letters?.find((l) => l.job_id === job.id);
  });
  return { user, job, letter };
}

async function reservesOf(user, jobId) {
  const [, ledger] = await api('GET', '/v1/credits/ledger?limit=100', user.token);
  return ledger.items.filter((e) => e.job_id === jobId && e.kind === 'reserve').length;
}

test('a filtered bulk replay reserves again only for the user who can afford it, and names the one who could not', async (t) => {
  // One tag in both users' names: the search below matches these two letters only.
  const tag = `bulk${Date.now().toString(36)}`;
  const [rich, poor] = await Promise.all([deadJob(`rich-${tag}`), deadJob(`poor-${tag}`)]);
  // The poor user's refunded 10 credits go to a video that never ends.
  const [s, hang] = await api('POST', '/v1/generations', poor.user.token, { prompt: '[sim:hang] holds the credits' });
  assert.equal(s, 202);

  const { page } = await openPage(browser, t, {}, '/admin');
  await signIn(page, ADMIN_TOKEN);
  await page.locator('#console').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#read-only').isVisible(), false);
  // Both letters, and only them: the reason and the two users' tag. Pages of
  // one letter, so that "all that match" has to load the second page.
  await page.locator('#dlq-table').evaluate((t) => { t.dataset.pageSize = '1'; });
  await page.getByLabel('Reason contains').fill('gave up');
  await page.getByLabel('Search').fill(tag);
  await page.getByRole('button', { name: 'Filter' }).click();
  await eventually('the first page of one', async () => /^1 letter shown; more may match/.test(await page.locator('#dlq-count').textContent()));
  await page.getByRole('button', { name: 'Select all that match' }).click();
  // Loaded page by page (the last one empty), then shown together.
  await eventually('every page loaded', async () => /2 letters: every one that matches/.test(await page.locator('#dlq-count').textContent()));
  for (const l of [rich.letter, poor.letter]) await page.locator(`#dlq-rows tr[data-id="${l.id}"]`).waitFor();
  assert.equal(await page.locator('#dlq-rows tr').count(), 2);
  await page.getByRole('button', { name: 'Replay selected (2)' }).click();
  const confirm = page.locator('#dlq-confirm-text');
  await confirm.waitFor({ state: 'visible' });
  const text = await confirm.textContent();
  assert.match(text, /Replay 2 dead letters\? 2 refunded jobs reserve 20 credits again from 2 users/);
  await shot(page, 'admin-dlq-confirm');

  // A double click on Confirm runs the bulk action once: one request per letter.
  await page.locator('#dlq-confirm-go').evaluate((b) => {
    b.click();
    b.click();
  });
  const result = page.locator('#dlq-result');
  await eventually('the bulk result', async () => (await result.textContent()).includes('1 letter replayed, 1 not.'));
  assert.equal(await page.locator('#dlq-result li').count(), 2);
  const unaffordable = await page.locator('[data-role=unaffordable]').textContent();
  assert.ok(unaffordable.includes(poor.user.sub), unaffordable);
  assert.ok(!unaffordable.includes(rich.user.sub), unaffordable);
  assert.match(await page.locator('#dlq-progress-label').textContent(), /2 of 2 answered/);
  await shot(page, 'admin-dlq-result');

  // The ledger agrees: the rich user's job was reserved again, the poor user's not.
  assert.equal(await reservesOf(rich.user, rich.job.id), 2);
  assert.equal(await reservesOf(poor.user, poor.job.id), 1);
  const [, richLetter] = await api('GET', `/v1/admin/dlq/${rich.letter.id}`, ADMIN_TOKEN);
  assert.equal(richLetter.state, 'replayed');
  assert.match(richLetter.resolved_by, /^admin:browser-admin$/);
  const [, poorLetter] = await api('GET', `/v1/admin/dlq/${poor.letter.id}`, ADMIN_TOKEN);
  assert.equal(poorLetter.state, 'open');

  // The detail of the refused letter: the message, the job and its timeline.
  await page.getByRole('button', { name: `#${poor.letter.id}`, exact: true }).click();
  const detail = page.locator('#dlq-detail');
  await detail.locator('[data-role=timeline]').waitFor();
  assert.ok((await detail.textContent()).includes(poor.job.id));
  const ledger = await detail.locator('[data-role=ledger]').textContent();
  assert.match(ledger, /reserve/);
  assert.match(ledger, /refund/);
  // The job's trace, linked to the deployment's trace viewer.
  const trace = detail.locator('[data-role=trace-link]');
  assert.match(await trace.getAttribute('href'), /^https:\/\/traces\.example\.com\/trace\/[0-9a-f]{32}$/);
  assert.equal(await trace.getAttribute('rel'), 'noopener noreferrer');
  await shot(page, 'admin-dlq-detail');

  // Users: the diagnosis, conclusion first, and a grant with a reason.
  await page.getByRole('link', { name: 'Users' }).click();
  await page.locator('#u-who').fill(poor.user.sub);
  await page.getByRole('button', { name: 'Diagnose' }).click();
  await page.locator('[data-role=conclusion]').waitFor();
  const first = await page.locator('#diagnosis > *').first().getAttribute('data-role');
  assert.equal(first, 'conclusion');
  await page.getByLabel('Amount').fill('10');
  await page.getByLabel('Reason', { exact: true }).fill('browser test: replay the dead job');
  await page.getByRole('button', { name: 'Add credits' }).click();
  await eventually('the grant', async () => (await page.locator('#credit-result').textContent()).includes('Added 10 credits (grant)'));
  await shot(page, 'admin-users');

  // Discard the poor user's letter: its job is already refunded, so nothing more is.
  await page.getByRole('link', { name: 'Dead letters' }).click();
  await page.getByLabel('Search').fill(poor.job.id);
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.getByLabel(`Select letter ${poor.letter.id}`).check();
  await page.getByRole('button', { name: 'Discard selected (1)' }).click();
  await page.locator('#dlq-confirm-text').waitFor({ state: 'visible' });
  assert.match(await page.locator('#dlq-confirm-text').textContent(), /^Discard 1 dead letter\? No open job: nothing is refunded;/);
  await page.locator('#dlq-confirm-go').click();
  await eventually('the discard', async () => (await result.textContent()).includes('1 letter discarded, 0 not.'));
  const [, discarded] = await api('GET', `/v1/admin/dlq/${poor.letter.id}`, ADMIN_TOKEN);
  assert.equal(discarded.state, 'discarded');
  assert.equal(await reservesOf(poor.user, poor.job.id), 1);

  // Jobs: the hanging job among the running ones, canceled with its refund after a confirmation.
  await page.getByRole('link', { name: 'Jobs' }).click();
  await page.getByLabel('Status', { exact: true }).selectOption('running');
  await page.getByRole('button', { name: 'Show' }).click();
  const hangRow = page.locator(`#jobs-rows tr[data-id="${hang.id}"]`);
  await hangRow.waitFor();
  await shot(page, 'admin-jobs');
  page.once('dialog', (d) => d.accept());
  await hangRow.getByRole('button', { name: 'Cancel and refund' }).click();
  await eventually('the cancel', async () => (await hangRow.textContent()).includes('Canceled; 10 credits refunded.'));
  const [, canceled] = await api('GET', `/v1/generations/${hang.id}`, poor.user.token);
  assert.equal(canceled.status, 'canceled');
  assert.ok(canceled.events.some((e) => /Canceled by an operator/.test(e.message ?? '') && !/browser-admin/.test(e.message ?? '')), JSON.stringify(canceled.events));
  // A paid Stripe checkout that names no user: recorded, never credited,
  // shown to operators as needing attention (signed here as Stripe signs).
  const secret = process.env.GENQ__BILLING__STRIPE__WEBHOOK_SECRET;
  const session = `cs_test_browser_${Date.now().toString(36)}`;
  const body = JSON.stringify({
    id: `evt_${session}`, object: 'event', type: 'checkout.session.completed', created: Math.floor(Date.now() / 1000),
    data: { object: { id: session, object: 'checkout.session', payment_status: 'paid', status: 'complete',
      client_reference_id: null, payment_intent: `pi_${session}`, amount_total: 1000, currency: 'usd', metadata: { genq_credits: '100' } } },
  });
  const signedAt = Math.floor(Date.now() / 1000);
  const v1 = createHmac('sha256', secret).update(`${signedAt}.${body}`).digest('hex');
  const posted = await fetch(`${process.env.GENQ_BASE_URL}/v1/billing/stripe/webhook`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'stripe-signature': `t=${signedAt},v1=${v1}` }, body,
  });
  assert.equal(posted.status, 200);
  assert.equal((await posted.json()).outcome, 'needs_attention');
  await page.getByRole('link', { name: 'System' }).click();
  await eventually('the payment needing attention', async () => /needs? an operator/.test(await page.locator('[data-role="payments-attention"]').textContent()));
  assert.match(await page.locator('table[data-role="payments"] tr.attention').first().textContent(), new RegExp(session));
  const failures = await page.locator('svg[aria-label^="Failures by code"]').getAttribute('aria-label');
  assert.match(failures, /retries_exhausted [1-9]/);
  assert.match(await page.locator('svg[aria-label^="Dead letters per hour"]').getAttribute('aria-label'), /\d\d:00 [1-9]/);
  // Queue depths from RabbitMQ's management API (browser-test.sh sets its URL):
  // this deployment's queues, the workers consuming from them.
  const queues = page.locator('table[data-role="queues"]');
  await queues.waitFor();
  const startRow = queues.locator('tr', { hasText: '.start' });
  assert.match(await startRow.textContent(), /quorum/);
  await page.getByRole('button', { name: 'Verify the ledger now' }).click();
  await eventually('the verification', async () => /The ledger verifies|violation/.test(await page.locator('#verify-result').textContent()));
  // ...and the System page now names the last verification and who ran it.
  await eventually('the last verification', async () => /Last verified .* by (admin:browser-admin|worker) .*sound/.test(await page.locator('#verify-last').textContent()));
  await shot(page, 'admin-system');
});

test('a viewer sees everything and can act on nothing', async (t) => {
  assert.ok(VIEWER_TOKEN, 'GENQ_VIEWER_TOKEN is not set (run scripts/browser-test.sh)');
  const { page } = await openPage(browser, t, {}, '/admin');
  await signIn(page, VIEWER_TOKEN);
  await page.locator('#read-only').waitFor({ state: 'visible' });
  await page.getByLabel('State').selectOption('');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.locator('#dlq-rows tr').first().waitFor();
  await page.getByLabel('Select every letter shown').check();
  assert.equal(await page.locator('#dlq-replay').isDisabled(), true);
  assert.equal(await page.locator('#dlq-discard').isDisabled(), true);
  assert.match(await page.locator('#dlq-why-off').textContent(), /need the admin role; your token has the viewer role/);
  await shot(page, 'admin-viewer');
  await page.getByRole('link', { name: 'Users' }).click();
  assert.equal(await page.locator('#credit-button').isDisabled(), true);
  await page.getByRole('link', { name: 'System' }).click();
  await page.locator('#system-body dl').waitFor();
  // And the API itself refuses the viewer's action, whatever a page does.
  const [, letters] = await api('GET', '/v1/admin/dlq?all=true', VIEWER_TOKEN);
  const [s, body] = await api('POST', `/v1/admin/dlq/${letters[0].id}/discard`, VIEWER_TOKEN);
  assert.equal(s, 403);
  assert.match(body.error.message, /viewer role/);
});

test('a user who is not an operator is refused', async (t) => {
  const user = await newUser('nosy');
  const { page } = await openPage(browser, t, {}, '/admin');
  await signIn(page, user.token);
  await page.locator('#refused').waitFor({ state: 'visible' });
  assert.match(await page.locator('#refused-text').textContent(), /neither the admin nor the viewer role/);
  assert.equal(await page.locator('#console').isVisible(), false);
  await shot(page, 'admin-refused');
});
