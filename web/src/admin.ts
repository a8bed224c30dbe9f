// The operator console at /admin, on the generated client. It holds no
// data and decides nothing: every read and action is an admin API call,
// which checks the role (admin acts; viewer only reads) and audits the
// action under the caller's name. The role read from the token only
// decides which buttons are on, and says why the others are off.
import {
  addCredits,
  adminCancelJob,
  adminGetJob,
  adminJobLedger,
  adminListJobs,
  diagnoseUser,
  discardDeadLetter,
  getWebConfig,
  getDeadLetter,
  listBillingEvents,
  listDeadLetters,
  replayDeadLetter,
  systemSummary,
  verifyLedger,
  type BillingEvent,
  type DeadLetter,
  type JobView,
  type ResolutionView,
  type SystemView,
} from '@genq/client';
import { describe, setToken, type Failed } from './api';
import { displayName, looksLikeJwt } from './session';
import { isOpen } from './status';

const KEY = 'genq.admin-token';
const TABS = ['dlq', 'jobs', 'users', 'system'] as const;
type Tab = (typeof TABS)[number];

function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} is missing from the page`);
  return e as T;
}

/** An element with text (never HTML: every value shown comes from users or messages). */
function el<K extends keyof HTMLElementTagNameMap>(tag: K, text?: string, attrs: Record<string, string> = {}): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

/** A timestamp as people read it: date, time to the millisecond, UTC. */
function when(iso: string): string {
  return iso.replace('T', ' ').replace(/(\.\d{3})\d*/, '$1').replace('Z', ' UTC');
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

function age(secs: number): string {
  if (secs < 90) return `${secs} s`;
  if (secs < 5400) return `${Math.round(secs / 60)} min`;
  if (secs < 172800) return `${Math.round(secs / 3600)} h`;
  return `${Math.round(secs / 86400)} d`;
}

/**
 * The role claim (`auth.role_claim`: a name, or a JSON pointer for an
 * identity provider's namespaced claim), for which buttons to offer only
 * (the API decides).
 */
function roleOf(token: string, claim: string): string | null {
  try {
    const part = token.split('.')[1] ?? '';
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    let value: unknown = JSON.parse(json);
    const path = claim.startsWith('/') ? claim.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~')) : [claim];
    for (const key of path) {
      value = value !== null && typeof value === 'object' ? (value as Record<string, unknown>)[key] : undefined;
    }
    return typeof value === 'string' ? value : null;
  } catch {
    return null;
  }
}

function saved(): string | null {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

function save(token: string | null): void {
  try {
    if (token) sessionStorage.setItem(KEY, token);
    else sessionStorage.removeItem(KEY);
  } catch {
    // storage disabled: the token lives in memory for this page only
  }
}

const state = {
  readOnly: true,
  letters: [] as DeadLetter[],
  /** The last page was full: more letters match than are shown. */
  more: false,
  selected: new Set<number>(),
  busy: false,
  pending: null as null | { action: 'replay' | 'discard'; ids: number[] },
  diagnosed: null as string | null,
};

/** Shows a failed call in `target`; 401 signs out, since the token is no good. */
function fail(target: HTMLElement, result: Failed): void {
  const problem = describe(result);
  target.textContent = problem.text;
  if (problem.status === 401) signOut(problem.text);
}

// ---- sign-in and the role ------------------------------------------------

function signOut(why = ''): void {
  save(null);
  setToken(null);
  $('console').hidden = true;
  $('refused').hidden = true;
  $('who').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-problem').textContent = why;
}

async function signIn(token: string): Promise<void> {
  setToken(token);
  // The summary is a read every operator may make: its answer says whether this token is one.
  const result = await systemSummary();
  if (result.error !== undefined || !result.data) {
    const problem = describe(result);
    if (problem.status === 403) {
      save(token);
      $('sign-in').hidden = true;
      $('refused').hidden = false;
      $('refused-text').textContent =
        `This console is for operators. Your token (${displayName(token)}) has neither the admin nor the viewer role, and the API refused it: ${problem.text}`;
      return;
    }
    signOut(problem.text);
    return;
  }
  save(token);
  const config = await getWebConfig();
  const role = roleOf(token, config.data?.role_claim ?? 'role');
  state.readOnly = role !== 'admin';
  $('who-name').textContent = displayName(token);
  $('who-role').textContent = role ?? 'no role';
  $('who').hidden = false;
  $('sign-in').hidden = true;
  $('refused').hidden = true;
  $('console').hidden = false;
  $('read-only').hidden = !state.readOnly;
  for (const b of document.querySelectorAll<HTMLButtonElement>('.admin-action')) {
    b.disabled = state.readOnly;
    if (state.readOnly) b.title = 'Needs the admin role: your token has the viewer role.';
  }
  $('dlq-why-off').textContent = state.readOnly ? 'Replay and discard need the admin role; your token has the viewer role.' : '';
  renderSystem(result.data);
  void loadPayments();
  show(currentTab());
}

// ---- tabs ----------------------------------------------------------------

function currentTab(): Tab {
  const h = location.hash.slice(1);
  return (TABS as readonly string[]).includes(h) ? (h as Tab) : 'dlq';
}

function show(tab: Tab): void {
  for (const t of TABS) {
    $(`tab-${t}`).hidden = t !== tab;
    const link = document.querySelector(`a[data-tab="${t}"]`);
    if (t === tab) link?.setAttribute('aria-current', 'page');
    else link?.removeAttribute('aria-current');
  }
  if (tab === 'dlq') void loadLetters();
  if (tab === 'jobs') void loadJobs();
  if (tab === 'system') void loadSystem();
}

// ---- dead letters --------------------------------------------------------

function dlqQuery() {
  const v = (id: string) => $<HTMLInputElement>(id).value.trim() || undefined;
  const minutes = v('f-age');
  const st = $<HTMLSelectElement>('f-state').value;
  return {
    state: (st || undefined) as 'open' | 'replayed' | 'discarded' | undefined,
    all: st === '' ? true : undefined,
    reason: v('f-reason'),
    source_queue: v('f-queue'),
    user: v('f-user'),
    older_than_secs: minutes !== undefined ? Math.max(0, Math.round(Number(minutes) * 60)) : undefined,
    q: v('f-q'),
    limit: pageSize(),
  };
}

/** Letters per page: 100, the API's most (the table's data-page-size can lower it, for tests). */
function pageSize(): number {
  const n = Number($('dlq-table').dataset.pageSize ?? 100);
  return Number.isInteger(n) && n >= 1 && n <= 100 ? n : 100;
}

/** "All that match" loads at most this many letters (a bulk action is one request per letter). */
const MAX_MATCHING = 10_000;

/** Loads every page of the filter and selects every letter in it. */
async function selectMatching(): Promise<void> {
  const problem = $('dlq-problem');
  const button = $<HTMLButtonElement>('dlq-select-matching');
  button.disabled = true;
  const all = [...state.letters];
  let more = state.more;
  while (more && all.length < MAX_MATCHING) {
    $('dlq-count').textContent = `Loading every letter that matches… ${all.length} so far.`;
    const r = await listDeadLetters({ query: { ...dlqQuery(), after_id: all[all.length - 1]?.id } });
    if (r.error !== undefined || !r.data) {
      button.disabled = false;
      return fail(problem, r);
    }
    all.push(...r.data);
    more = r.data.length === pageSize();
  }
  state.letters = all;
  state.more = more;
  state.selected = new Set(all.map((l) => l.id));
  renderLetters();
}

async function loadLetters(): Promise<void> {
  const problem = $('dlq-problem');
  problem.textContent = '';
  const result = await listDeadLetters({ query: dlqQuery() });
  if (result.error !== undefined || !result.data) return fail(problem, result);
  state.letters = result.data;
  state.more = result.data.length === pageSize();
  const shown = new Set(state.letters.map((l) => l.id));
  for (const id of [...state.selected]) if (!shown.has(id)) state.selected.delete(id);
  renderLetters();
}

function who(l: DeadLetter): string {
  return l.user_email ?? l.user_sub ?? l.user_id ?? '—';
}

function renderLetters(): void {
  const body = $('dlq-rows');
  body.replaceChildren();
  for (const l of state.letters) {
    const tr = el('tr', undefined, { 'data-id': String(l.id) });
    const box = el('input', undefined, { type: 'checkbox', 'aria-label': `Select letter ${l.id}` });
    box.checked = state.selected.has(l.id);
    box.addEventListener('change', () => {
      if (box.checked) state.selected.add(l.id);
      else state.selected.delete(l.id);
      updateSelection();
    });
    const open = el('button', `#${l.id}`, { type: 'button', class: 'link-button' });
    open.addEventListener('click', () => void showLetter(l.id));
    const cells: (string | HTMLElement)[] = [
      box, open, age(l.age_secs), l.reason, l.source_queue, who(l),
      l.job_id ? `${l.job_id.slice(0, 8)}… (${l.job_status ?? '?'})` : 'no job', l.state,
    ];
    for (const c of cells) {
      const td = el('td');
      if (typeof c === 'string') td.textContent = c;
      else td.append(c);
      tr.append(td);
    }
    body.append(tr);
  }
  $('dlq-count').textContent = state.more
    ? state.letters.length >= MAX_MATCHING
      ? `${plural(state.letters.length, 'letter', 'letters')} shown; more may match than the console loads at once (${MAX_MATCHING}): act on these, then filter again.`
      : `${plural(state.letters.length, 'letter', 'letters')} shown; more may match (the last page was full).`
    : `${plural(state.letters.length, 'letter', 'letters')}: every one that matches.`;
  $('dlq-select-matching').hidden = !state.more || state.letters.length >= MAX_MATCHING;
  $<HTMLButtonElement>('dlq-select-matching').disabled = state.busy;
  updateSelection();
}

function updateSelection(): void {
  const n = state.selected.size;
  const all = $<HTMLInputElement>('dlq-all');
  all.checked = n > 0 && n === state.letters.length;
  for (const id of ['dlq-replay', 'dlq-discard']) {
    const b = $<HTMLButtonElement>(id);
    b.disabled = state.readOnly || state.busy || n === 0;
  }
  $<HTMLButtonElement>('dlq-replay').textContent = `Replay selected (${n})`;
  $<HTMLButtonElement>('dlq-discard').textContent = `Discard selected (${n})`;
}

/** What a replay of these letters would reserve: each dead or failed job's cost again, by user. */
async function replayCost(ids: number[]): Promise<{ credits: number; jobs: number; users: number }> {
  let credits = 0;
  let jobs = 0;
  const users = new Set<string>();
  for (const l of state.letters.filter((x) => ids.includes(x.id))) {
    if (!l.job_id || (l.job_status !== 'dead' && l.job_status !== 'failed')) continue;
    const job = await adminGetJob({ path: { id: l.job_id } });
    if (!job.data) continue;
    credits += job.data.cost;
    jobs += 1;
    users.add(who(l));
  }
  return { credits, jobs, users: users.size };
}

/** What a discard of these letters would refund: each still-open job's cost. */
async function discardRefund(ids: number[]): Promise<{ credits: number; jobs: number }> {
  let credits = 0;
  let jobs = 0;
  for (const l of state.letters.filter((x) => ids.includes(x.id))) {
    if (!l.job_id || !isOpen(l.job_status)) continue;
    const job = await adminGetJob({ path: { id: l.job_id } });
    if (!job.data || !isOpen(job.data.status)) continue;
    credits += job.data.cost;
    jobs += 1;
  }
  return { credits, jobs };
}

async function ask(action: 'replay' | 'discard'): Promise<void> {
  if (state.busy || state.readOnly) return;
  const ids = [...state.selected].sort((a, b) => a - b);
  if (!ids.length) return;
  let text: string;
  if (action === 'replay') {
    const cost = await replayCost(ids);
    text =
      `Replay ${plural(ids.length, 'dead letter', 'dead letters')}? ` +
      `${plural(cost.jobs, 'refunded job reserves', 'refunded jobs reserve')} ${plural(cost.credits, 'credit', 'credits')} again ` +
      `from ${plural(cost.users, 'user', 'users')}; a user who can't afford it is skipped and named. The others are sent again as they are.`;
  } else {
    const refund = await discardRefund(ids);
    text =
      `Discard ${plural(ids.length, 'dead letter', 'dead letters')}? ` +
      (refund.jobs
        ? `${plural(refund.jobs, 'open job is', 'open jobs are')} closed and ${plural(refund.credits, 'credit', 'credits')} refunded; `
        : 'No open job: nothing is refunded; ') +
      'a refunded job stays refunded. This cannot be undone.';
  }
  state.pending = { action, ids };
  $('dlq-confirm-text').textContent = text;
  $('dlq-confirm').hidden = false;
  $<HTMLButtonElement>('dlq-confirm-go').focus();
}

/** One request per letter, in turn, with progress; the buttons stay off until the last answer. */
async function run(): Promise<void> {
  const pending = state.pending;
  if (!pending || state.busy) return;
  state.busy = true;
  state.pending = null;
  $('dlq-confirm').hidden = true;
  updateSelection();
  const { action, ids } = pending;
  const verb = action === 'replay' ? 'Replaying' : 'Discarding';
  const progress = $<HTMLProgressElement>('dlq-progress');
  progress.max = ids.length;
  progress.value = 0;
  $('dlq-progress-box').hidden = false;
  const results: { id: number; view?: ResolutionView; error?: string }[] = [];
  for (const [i, id] of ids.entries()) {
    $('dlq-progress-label').textContent = `${verb} ${i + 1} of ${ids.length}…`;
    const call = action === 'replay' ? replayDeadLetter : discardDeadLetter;
    const r = await call({ path: { id } });
    results.push(r.data ? { id, view: r.data } : { id, error: describe(r).text });
    progress.value = i + 1;
  }
  $('dlq-progress-label').textContent = `${action === 'replay' ? 'Replayed' : 'Discarded'}: ${ids.length} of ${ids.length} answered.`;
  const byId = new Map(state.letters.map((l) => [l.id, l]));
  const done = results.filter((r) => r.view?.done).length;
  const box = $('dlq-result');
  box.replaceChildren(el('p', `${plural(done, 'letter', 'letters')} ${action === 'replay' ? 'replayed' : 'discarded'}, ${ids.length - done} not.`));
  const poor = results.filter((r) => r.view && !r.view.done && r.view.message.includes("can't afford"));
  if (poor.length) {
    const names = [...new Set(poor.map((r) => { const l = byId.get(r.id); return l ? who(l) : `letter #${r.id}`; }))];
    box.append(el('p', `Could not afford the replay: ${names.join(', ')}.`, { class: 'problem', 'data-role': 'unaffordable' }));
  }
  const list = el('ul', undefined, { class: 'results' });
  for (const r of results) {
    const l = byId.get(r.id);
    const text = r.view
      ? `#${r.id} (${l ? who(l) : '?'}): ${r.view.done ? '' : 'not done — '}${r.view.message}`
      : `#${r.id}: ${r.error}`;
    list.append(el('li', text, r.view?.done ? {} : { class: 'refused' }));
  }
  box.append(list);
  state.selected.clear();
  state.busy = false;
  await loadLetters();
}

async function showLetter(id: number): Promise<void> {
  const box = $('dlq-detail');
  box.hidden = false;
  box.replaceChildren(el('p', `Loading letter #${id}…`));
  const r = await getDeadLetter({ path: { id } });
  if (!r.data) {
    box.replaceChildren(el('p', describe(r).text, { class: 'problem' }));
    return;
  }
  const l = r.data;
  const parts: HTMLElement[] = [
    el('h3', `Dead letter #${l.id}`),
    el('p', `${l.state}; received ${when(l.received_at)} (${age(l.age_secs)} ago) from ${l.source_queue}` +
      (l.resolved_by ? `; ${l.state} by ${l.resolved_by} at ${l.resolved_at}` : '') + '.'),
    el('p', `Reason: ${l.reason}`),
    el('p', `User: ${who(l)}. Attempts: ${l.attempts ?? '—'}.`),
    el('h4', 'The message'),
    el('pre', l.body),
    el('h4', 'Headers'),
    el('pre', JSON.stringify(l.headers, null, 2)),
  ];
  if (l.job_id) parts.push(...(await jobDetail(l.job_id)));
  box.replaceChildren(...parts);
}

/** A job, its timeline and its ledger rows. */
async function jobDetail(id: string): Promise<HTMLElement[]> {
  const [job, ledger] = await Promise.all([adminGetJob({ path: { id } }), adminJobLedger({ path: { id } })]);
  if (!job.data) return [el('p', describe(job).text, { class: 'problem' })];
  const parts = jobParts(job.data);
  parts.push(el('h4', 'Ledger rows'));
  if (!ledger.data) {
    parts.push(el('p', describe(ledger).text, { class: 'problem' }));
    return parts;
  }
  const table = el('table', undefined, { 'data-role': 'ledger' });
  const head = el('tr');
  for (const h of ['#', 'When', 'Kind', 'Amount', 'By', 'Reason']) head.append(el('th', h));
  table.append(head);
  for (const e of ledger.data) {
    const tr = el('tr');
    for (const c of [String(e.id), when(e.created_at), e.kind, String(e.amount), e.actor, e.reason ?? '']) tr.append(el('td', c));
    table.append(tr);
  }
  parts.push(table);
  return parts;
}

/** Cancels an open job with its refund, after a confirmation; admins only (the API checks). */
async function cancelJob(job: JobView, button: HTMLButtonElement, out: HTMLElement): Promise<void> {
  if (state.readOnly || button.disabled) return;
  if (!window.confirm(`Cancel job ${job.id}? Its ${plural(job.cost, 'credit', 'credits')} go back to its user.`)) return;
  button.disabled = true;
  const r = await adminCancelJob({ path: { id: job.id } });
  out.textContent = r.data ? `Canceled; ${plural(r.data.cost, 'credit', 'credits')} refunded.` : describe(r).text;
  if (!r.data) button.disabled = false;
}

/** A job and its timeline; the reserve, settle and refund events are its ledger rows' story. */
function jobParts(job: JobView): HTMLElement[] {
  const out: HTMLElement[] = [
    el('h4', `Job ${job.id}`),
    el('p', `${job.status}; costs ${plural(job.cost, 'credit', 'credits')}; prompt “${job.prompt}”.` +
      (job.error ? ` Error ${job.error.code}: ${job.error.message}` : '')),
  ];
  if (job.trace_id) {
    // The deployment's trace viewer, when configured (observability.trace_url_template).
    const trace = job.trace_url
      ? el('a', job.trace_id, { href: job.trace_url, target: '_blank', rel: 'noopener noreferrer', 'data-role': 'trace-link' })
      : el('code', job.trace_id, { 'data-role': 'trace-id' });
    const p = el('p', 'Trace ');
    p.append(trace);
    out.push(p);
  }
  const table = el('table', undefined, { 'data-role': 'timeline' });
  table.append(el('thead'));
  table.tHead!.append(el('tr'));
  for (const h of ['When', 'What', 'From', 'To', 'Message']) table.tHead!.rows[0]!.append(el('th', h));
  const tb = el('tbody');
  for (const e of job.events ?? []) {
    const tr = el('tr');
    for (const c of [when(e.at), e.kind, e.from_status ?? '', e.to_status ?? '', e.message ?? '']) tr.append(el('td', c));
    tb.append(tr);
  }
  table.append(tb);
  out.push(table);
  return out;
}

// ---- jobs ----------------------------------------------------------------

async function loadJobs(): Promise<void> {
  const problem = $('jobs-problem');
  problem.textContent = '';
  const status = $<HTMLSelectElement>('j-status').value || undefined;
  const minutes = $<HTMLInputElement>('j-age').value.trim();
  const r = await adminListJobs({
    query: {
      status: status as JobView['status'] | undefined,
      older_than_secs: minutes ? Math.max(0, Math.round(Number(minutes) * 60)) : undefined,
      limit: 100,
    },
  });
  if (!r.data) return fail(problem, r);
  const body = $('jobs-rows');
  body.replaceChildren();
  for (const j of r.data) {
    const tr = el('tr', undefined, { 'data-id': j.id });
    const open = el('button', j.id.slice(0, 8) + '…', { type: 'button', class: 'link-button' });
    open.addEventListener('click', async () => {
      const box = $('job-detail');
      box.hidden = false;
      box.replaceChildren(...(await jobDetail(j.id)));
    });
    const td = el('td');
    td.append(open);
    tr.append(td);
    for (const c of [j.status, when(j.updated_at), String(j.cost), j.error ? `${j.error.code}: ${j.error.message}` : '', j.prompt]) tr.append(el('td', c));
    const act = el('td');
    if (isOpen(j.status)) {
      const cancel = el('button', 'Cancel and refund', { type: 'button', class: 'secondary admin-action' });
      cancel.disabled = state.readOnly;
      if (state.readOnly) cancel.title = 'Needs the admin role: your token has the viewer role.';
      const out = el('span', undefined, { role: 'status' });
      cancel.addEventListener('click', () => void cancelJob(j, cancel, out));
      act.append(cancel, out);
    }
    tr.append(act);
    body.append(tr);
  }
  if (!r.data.length) {
    const tr = el('tr');
    tr.append(el('td', 'No jobs match.', { colspan: '7' }));
    body.append(tr);
  }
}

// ---- users ---------------------------------------------------------------

interface Diagnosis {
  user: { id: string; external_id: string; email?: string | null };
  credits: Record<string, number | boolean>;
  jobs: { id: string; status: string; cost: number; prompt: string; error_code?: string | null }[];
  audit: { actor: string; action: string; created_at: string; details: unknown }[];
  conclusion: string;
}

async function diagnose(who: string): Promise<void> {
  const problem = $('users-problem');
  problem.textContent = '';
  const r = await diagnoseUser({ path: { user: who } });
  const box = $('diagnosis');
  if (!r.data) {
    box.hidden = true;
    $('credit-form').hidden = true;
    return fail(problem, r);
  }
  const d = r.data as unknown as Diagnosis;
  state.diagnosed = d.user.id;
  const figures = el('dl', undefined, { class: 'figures' });
  for (const [k, v] of Object.entries(d.credits)) {
    const div = el('div');
    div.append(el('dt', k.replace(/_/g, ' ')), el('dd', String(v)));
    figures.append(div);
  }
  const jobs = el('ul');
  for (const j of d.jobs.slice(0, 20)) jobs.append(el('li', `${j.id.slice(0, 8)}… ${j.status} (${j.cost}) ${j.error_code ?? ''} “${j.prompt}”`));
  const audit = el('ul');
  for (const a of d.audit.slice(0, 20)) audit.append(el('li', `${a.created_at} ${a.actor} ${a.action} ${JSON.stringify(a.details)}`));
  box.replaceChildren(
    el('p', d.conclusion, { class: 'conclusion', 'data-role': 'conclusion' }),
    el('p', `${d.user.email ?? '(no email)'} — sub ${d.user.external_id} — genq ID ${d.user.id}`),
    figures,
    el('h3', `Jobs (${d.jobs.length}, newest first)`), jobs,
    el('h3', 'Audit'), audit,
  );
  box.hidden = false;
  $('credit-form').hidden = false;
}

async function credit(): Promise<void> {
  const out = $('credit-result');
  if (!state.diagnosed || state.readOnly) return;
  const kind = $<HTMLSelectElement>('c-kind').value as 'grant' | 'purchase';
  const reference = $<HTMLInputElement>('c-reference').value.trim();
  if (kind === 'purchase' && !reference) {
    out.textContent = 'A purchase needs its payment reference, so that it is never applied twice.';
    return;
  }
  const button = $<HTMLButtonElement>('credit-button');
  button.disabled = true;
  const r = await addCredits({
    body: {
      user_id: state.diagnosed,
      amount: Number($<HTMLInputElement>('c-amount').value),
      reason: $<HTMLInputElement>('c-reason').value,
      kind,
      reference: reference || null,
    },
  });
  button.disabled = false;
  if (!r.data) return fail(out, r);
  out.textContent = r.data.applied
    ? `Added ${r.data.entry.amount} credits (${kind}); the user now has ${r.data.credits.available} available.`
    : `This reference was already applied; nothing changed. The user has ${r.data.credits.available} available.`;
  await diagnose(state.diagnosed);
}

// ---- system --------------------------------------------------------------

async function loadSystem(): Promise<void> {
  const r = await systemSummary();
  if (!r.data) return fail($('system-problem'), r);
  renderSystem(r.data);
  await loadPayments();
}

/** The payment provider's latest events; those needing an operator first. */
async function loadPayments(): Promise<void> {
  const r = await listBillingEvents({ query: { limit: 20 } });
  const box = $('system-payments');
  if (!r.data) {
    box.replaceChildren(el('p', `Payment events: ${describe(r).text}`, { class: 'problem' }));
    return;
  }
  renderPayments(r.data);
}

function renderPayments(events: BillingEvent[]): void {
  const box = $('system-payments');
  if (events.length === 0) {
    box.replaceChildren(el('p', 'No payment events in the last 30 days.', { class: 'help' }));
    return;
  }
  const attention = events.filter((e) => e.needs_attention);
  const table = el('table', undefined, { 'data-role': 'payments' });
  const head = el('tr');
  for (const h of ['Received', 'Event', 'Outcome', 'User', 'What it did']) head.append(el('th', h));
  table.append(head);
  for (const e of [...attention, ...events.filter((x) => !x.needs_attention)]) {
    const tr = el('tr', undefined, e.needs_attention ? { class: 'attention' } : {});
    for (const c of [when(e.received_at), e.type, e.outcome, e.user_id ?? '', e.detail]) tr.append(el('td', c));
    table.append(tr);
  }
  box.replaceChildren(
    el('p', attention.length === 0
      ? 'Every payment among these was applied.'
      : `${plural(attention.length, 'payment needs', 'payments need')} an operator: paid, but not credited (see the detail; genqctl credits purchase --reference credits it once).`,
      { class: attention.length === 0 ? 'help' : 'problem', 'data-role': 'payments-attention' }),
    table,
  );
}

/** Bars as inline SVG: one per status, labelled with its count. */
function bars(counts: Record<string, number>, label: string): SVGSVGElement {
  const ns = 'http://www.w3.org/2000/svg';
  const entries = Object.entries(counts);
  const max = Math.max(1, ...entries.map(([, n]) => n));
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'bars');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${label}: ${entries.map(([k, n]) => `${k} ${n}`).join(', ') || 'none'}`);
  svg.setAttribute('width', '480');
  svg.setAttribute('height', String(Math.max(20, entries.length * 22)));
  entries.forEach(([k, n], i) => {
    const t = document.createElementNS(ns, 'text');
    t.setAttribute('x', '0');
    t.setAttribute('y', String(i * 22 + 14));
    t.textContent = k.length > 24 ? `${k.slice(0, 23)}…` : k;
    const r = document.createElementNS(ns, 'rect');
    r.setAttribute('x', '150');
    r.setAttribute('y', String(i * 22 + 3));
    r.setAttribute('height', '14');
    r.setAttribute('width', String(Math.max(1, (n / max) * 280)));
    const v = document.createElementNS(ns, 'text');
    v.setAttribute('x', String(155 + (n / max) * 280));
    v.setAttribute('y', String(i * 22 + 14));
    v.textContent = String(n);
    svg.append(t, r, v);
  });
  return svg;
}

/** Hourly counts as labelled bars ("14:00"). */
function perHour(rows: { hour: string; count: number }[]): Record<string, number> {
  return Object.fromEntries(rows.map((r) => [r.hour.slice(11, 16), r.count]));
}

function renderSystem(s: SystemView): void {
  const figures = el('dl', undefined, { class: 'figures' });
  const add = (k: string, v: string) => {
    const div = el('div');
    div.append(el('dt', k), el('dd', v));
    figures.append(div);
  };
  add('open dead letters', String(s.dead_letters_open));
  add('outbox backlog', String(s.outbox_backlog));
  add('oldest unpublished', s.outbox_oldest_secs == null ? '—' : age(s.outbox_oldest_secs));
  const finished = ['succeeded', 'failed', 'dead', 'canceled'].reduce((n, k) => n + (s.last_hour_by_status[k] ?? 0), 0);
  add('finished in the last hour', String(finished));
  $('system-body').replaceChildren(
    figures,
    el('h3', 'Jobs per status'), bars(s.jobs_by_status, 'Jobs per status'),
    el('h3', 'Last hour, by the status jobs reached'), bars(s.last_hour_by_status, 'Last hour'),
    el('h3', 'Finished per hour (last 24 h, UTC)'), bars(perHour(s.finished_per_hour), 'Finished per hour'),
    el('h3', 'Failures by code (last 24 h)'), bars(s.failures_by_code, 'Failures by code'),
    el('h3', 'Dead letters per hour (last 24 h, UTC)'), bars(perHour(s.dead_letters_per_hour), 'Dead letters per hour'),
  );
  renderLines(s.lines);
  renderQueues(s.queues);
  renderVerification(s.last_verification ?? null);
}

/** Each capped provider: its slots in use, and who waits for them. */
function renderLines(lines: SystemView['lines']): void {
  const box = $('system-lines');
  if (lines.length === 0) {
    box.replaceChildren(el('p', 'No provider has a cap, and nobody waits.', { class: 'help', 'data-role': 'lines-none' }));
    return;
  }
  const table = el('table', undefined, { 'data-role': 'lines' });
  const head = el('tr');
  for (const h of ['Provider', 'In flight', 'Cap', 'Per minute', 'Waiting jobs', 'Waiting users', 'Longest lines']) head.append(el('th', h));
  table.append(head);
  for (const p of lines) {
    const tr = el('tr');
    const longest = p.longest_lines
      .map((l) => `${l.email ?? l.user_id}: ${l.waiting}${l.high > 0 ? ` (${l.high} high)` : ''}`)
      .join(', ');
    const cells = [
      p.provider,
      String(p.in_flight),
      p.max_concurrent === 0 ? 'none' : String(p.max_concurrent),
      p.max_per_minute === 0 ? 'none' : String(p.max_per_minute),
      String(p.waiting_jobs),
      String(p.waiting_users),
      longest || '—',
    ];
    for (const c of cells) tr.append(el('td', c));
    table.append(tr);
  }
  box.replaceChildren(
    table,
    el('p', 'A freed slot goes to the waiting user whose last turn at that provider is oldest (high priority first).', { class: 'help' }),
  );
}

/** Depths and consumers from RabbitMQ's management API, or why not. */
function renderQueues(q: SystemView['queues']): void {
  const box = $('system-queues');
  if (!q.available) {
    box.replaceChildren(el('p', `Queue depths and consumers: not available. ${q.note ?? ''}`, { class: 'help', 'data-role': 'queues-unavailable' }));
    return;
  }
  if (q.queues.length === 0) {
    box.replaceChildren(el('p', 'The broker lists no queues of this deployment yet.', { class: 'help' }));
    return;
  }
  const table = el('table', undefined, { 'data-role': 'queues' });
  const head = el('tr');
  for (const h of ['Queue', 'Type', 'Ready', 'Unacked', 'Consumers']) head.append(el('th', h));
  table.append(head);
  for (const row of q.queues) {
    const tr = el('tr');
    for (const c of [row.name, row.type ?? '', String(row.ready), String(row.unacked), String(row.consumers)]) tr.append(el('td', c));
    table.append(tr);
  }
  box.replaceChildren(
    table,
    el('p', 'Counts lag the broker by its statistics interval (5 s by default).', { class: 'help' }),
    // Labelled without the deployment's prefix, which every name shares.
    bars(Object.fromEntries(q.queues.map((r) => [r.name.slice(r.name.indexOf('.') + 1), r.messages])), 'Messages per queue'),
  );
}

function renderVerification(v: SystemView['last_verification']): void {
  $('verify-last').textContent = v
    ? `Last verified ${when(v.checked_at)} by ${v.checked_by} in ${v.took_ms} ms: ${
        v.violations === 0 ? 'sound, every balance matches its entries.' : `${plural(v.violations, 'violation', 'violations')}: ${JSON.stringify(v.sample).slice(0, 1000)}`
      }`
    : 'No verification recorded yet (the worker verifies the ledger about once a minute).';
}

async function verify(): Promise<void> {
  const out = $('verify-result');
  const button = $<HTMLButtonElement>('verify-button');
  button.disabled = true;
  out.textContent = 'Verifying…';
  const r = await verifyLedger();
  button.disabled = false;
  if (!r.data) return fail(out, r);
  void loadSystem();
  out.textContent = r.data.ok
    ? `The ledger verifies (${new Date().toISOString()}): every balance matches its entries.`
    : `${plural(r.data.violations.length, 'violation', 'violations')} (${new Date().toISOString()}): ${JSON.stringify(r.data.violations).slice(0, 2000)}`;
}

// ---- wiring --------------------------------------------------------------

$<HTMLFormElement>('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const value = $<HTMLTextAreaElement>('token').value.trim();
  if (!looksLikeJwt(value)) {
    $('sign-in-problem').textContent = 'That is not a token: paste the whole bearer token (three parts separated by dots).';
    return;
  }
  void signIn(value);
});
$('sign-out').addEventListener('click', () => signOut());
$('refused-sign-out').addEventListener('click', () => signOut());
window.addEventListener('hashchange', () => {
  if (!$('console').hidden) show(currentTab());
});
$<HTMLFormElement>('dlq-filters').addEventListener('submit', (e) => {
  e.preventDefault();
  void loadLetters();
});
$<HTMLInputElement>('dlq-all').addEventListener('change', (e) => {
  const on = (e.target as HTMLInputElement).checked;
  state.selected = new Set(on ? state.letters.map((l) => l.id) : []);
  renderLetters();
});
$('dlq-select-matching').addEventListener('click', () => void selectMatching());
$('dlq-replay').addEventListener('click', () => void ask('replay'));
$('dlq-discard').addEventListener('click', () => void ask('discard'));
$('dlq-confirm-go').addEventListener('click', () => void run());
$('dlq-confirm-cancel').addEventListener('click', () => {
  state.pending = null;
  $('dlq-confirm').hidden = true;
});
$<HTMLFormElement>('jobs-filters').addEventListener('submit', (e) => {
  e.preventDefault();
  void loadJobs();
});
$<HTMLFormElement>('diagnose-form').addEventListener('submit', (e) => {
  e.preventDefault();
  void diagnose($<HTMLInputElement>('u-who').value.trim());
});
$<HTMLFormElement>('credit-form').addEventListener('submit', (e) => {
  e.preventDefault();
  void credit();
});
$('verify-button').addEventListener('click', () => void verify());

const token = saved();
if (token) void signIn(token);
else signOut();
