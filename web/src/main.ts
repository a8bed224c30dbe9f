// The page: sign-in, credits, the generate form and the job list, on the
// generated client. The generate button is enabled only when the user can
// afford a video, and says why not otherwise; every failed call is shown in
// words (see api.ts).
import {
  cancelGeneration,
  createGeneration,
  createStreamToken,
  devSignIn,
  getCredits,
  listModels,
  getGeneration,
  getGenerationVideo,
  getWebConfig,
  listGenerations,
  listLedgerEntries,
  type CreateGeneration,
  type CreditsView,
  type ModelsView,
} from '@genq/client';
import { describe, setToken, type Failed, type Problem } from './api';
import { isTerminal, JobList, type JobEventView, type Settlement } from './jobs';
import { Live, type LiveState } from './live';
import { displayName, looksLikeJwt, savedToken, saveToken, uuid } from './session';

/** While the user can't afford a video, credits are re-read this often (a grant or purchase shows without a reload). */
const SHORT_CREDITS_POLL_MS = 5_000;
/** While live updates are down, open jobs are re-read this often. */
const FALLBACK_POLL_MS = 5_000;
const PAGE_SIZE = 20;

function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} is missing from the page`);
  return e as T;
}

const ui = {
  who: $('who'),
  whoName: $('who-name'),
  signOut: $<HTMLButtonElement>('sign-out'),
  announce: $('announce'),
  signIn: $('sign-in'),
  tokenForm: $<HTMLFormElement>('token-form'),
  token: $<HTMLTextAreaElement>('token'),
  devForm: $<HTMLFormElement>('dev-form'),
  devName: $<HTMLInputElement>('dev-name'),
  signInProblem: $('sign-in-problem'),
  app: $('app'),
  available: $('credits-available'),
  reserved: $('credits-reserved'),
  cost: $('credits-cost'),
  creditsProblem: $('credits-problem'),
  expiring: $('credits-expiring'),
  form: $<HTMLFormElement>('generate-form'),
  prompt: $<HTMLTextAreaElement>('prompt'),
  promptProblem: $('prompt-problem'),
  duration: $<HTMLInputElement>('duration'),
  durationProblem: $('duration-problem'),
  aspect: $<HTMLSelectElement>('aspect'),
  modelOption: $('model-option'),
  model: $<HTMLSelectElement>('model'),
  price: $('price'),
  reason: $('generate-reason'),
  button: $<HTMLButtonElement>('generate-button'),
  generateProblem: $('generate-problem'),
  live: $('live'),
  jobsProblem: $('jobs-problem'),
  jobsEmpty: $('jobs-empty'),
  list: $<HTMLOListElement>('job-list'),
  more: $<HTMLButtonElement>('more'),
};

const state = {
  signedIn: false,
  pricingUrl: '/pricing',
  credits: null as CreditsView | null,
  /** What a video of the chosen length costs, by model (GET /v1/models). */
  prices: null as ModelsView | null,
  inFlight: false,
  rateLimitedUntil: 0,
  /** The key of the last submission that may have reached the API without an answer, kept for a retry of the same request. */
  pending: null as { key: string; body: string } | null,
  nextCursor: null as string | null,
};

let creditsTimer: number | undefined;
let fallbackTimer: number | undefined;
let countdownTimer: number | undefined;

function say(text: string): void {
  // Re-set so the same sentence twice is read twice.
  ui.announce.textContent = '';
  window.setTimeout(() => (ui.announce.textContent = text), 50);
}

const jobs = new JobList(
  ui.list,
  ui.jobsEmpty,
  { cancel: (id) => void cancel(id), play: (id) => void play(id) },
  say,
  () => settled(),
);

let settleTimer: number | undefined;
/** Jobs ended: re-read the ledger and the credits once for a burst of endings. */
function settled(): void {
  window.clearTimeout(settleTimer);
  settleTimer = window.setTimeout(() => {
    void refreshLedger();
    void refreshCredits();
  }, 100);
}

const live = new Live({
  streamToken: async () => {
    const result = await createStreamToken();
    if (result.data) return result.data.token;
    if (result.response?.status === 401) signOut(describe(result).text);
    return null;
  },
  onEvent: (frame) => onJobEvent(frame),
  onResync: () => void resync(),
  onState: (s) => showLive(s),
});

// ---- problems ----------------------------------------------------------

/** Shows a problem in a region (role=alert), with the pricing link after a 402. */
function showProblem(region: HTMLElement, problem: Problem | null): void {
  region.replaceChildren();
  if (!problem) return;
  const p = document.createElement('p');
  p.textContent = problem.text;
  if (problem.status === 402) {
    p.append(' ', pricingLink('Buy credits'));
  }
  region.append(p);
}

function pricingLink(text: string): HTMLAnchorElement {
  const a = document.createElement('a');
  a.className = 'pricing-link';
  a.href = state.pricingUrl;
  a.textContent = text;
  return a;
}

/** A failed call: signs out on 401, else returns the problem to show. */
function failed(result: Failed): Problem {
  const problem = describe(result);
  if (problem.status === 401) signOut(problem.text);
  return problem;
}

// ---- sign-in -----------------------------------------------------------

async function loadConfig(): Promise<void> {
  const result = await getWebConfig();
  if (result.data) {
    state.pricingUrl = result.data.pricing_url;
    ui.devForm.hidden = !result.data.dev_sign_in;
    for (const a of document.querySelectorAll<HTMLAnchorElement>('a.pricing-link')) a.href = state.pricingUrl;
  } else {
    showProblem(ui.signInProblem, { ...describe(result), text: `Could not load this page's settings: ${describe(result).text}` });
  }
}

function signIn(token: string): void {
  setToken(token);
  saveToken(token);
  state.signedIn = true;
  ui.whoName.textContent = displayName(token);
  ui.who.hidden = false;
  ui.signIn.hidden = true;
  ui.app.hidden = false;
  showProblem(ui.signInProblem, null);
  showProblem(ui.generateProblem, null);
  updateButton();
  void refreshCredits();
  void refreshLedger();
  void loadJobs();
  live.start();
  window.clearInterval(creditsTimer);
  creditsTimer = window.setInterval(() => {
    if (state.credits && !canAfford()) void refreshCredits();
  }, SHORT_CREDITS_POLL_MS);
}

function signOut(why?: string): void {
  if (!state.signedIn && !why) return;
  state.signedIn = false;
  live.stop();
  window.clearInterval(creditsTimer);
  window.clearInterval(fallbackTimer);
  setToken(null);
  saveToken(null);
  jobs.clear();
  heldEvents.clear();
  state.credits = null;
  for (const out of [ui.available, ui.reserved, ui.cost]) out.textContent = '…';
  ui.creditsProblem.textContent = '';
  state.pending = null;
  ui.who.hidden = true;
  ui.app.hidden = true;
  ui.signIn.hidden = false;
  showProblem(ui.signInProblem, why ? { status: 401, code: 'unauthorized', text: why } : null);
  ui.token.focus();
}

ui.tokenForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const token = ui.token.value.trim().replace(/^Bearer\s+/i, '');
  if (!looksLikeJwt(token)) {
    showProblem(ui.signInProblem, { status: null, code: 'invalid', text: 'That is not a token: a token is three parts separated by dots.' });
    ui.token.focus();
    return;
  }
  ui.token.value = '';
  signIn(token);
  ui.prompt.focus();
});

ui.devForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = ui.devName.value.trim();
  const button = ui.devForm.querySelector('button');
  if (button) button.disabled = true;
  try {
    const result = await devSignIn({ body: { name } });
    if (result.data) {
      signIn(result.data.token);
      ui.prompt.focus();
    } else {
      showProblem(ui.signInProblem, describe(result));
      ui.devName.focus();
    }
  } finally {
    if (button) button.disabled = false;
  }
});

ui.signOut.addEventListener('click', () => signOut());

// ---- credits -----------------------------------------------------------

/** The price of the video as chosen (model and length), as the API computes it; null until known. */
function selectedCost(): number | null {
  const p = state.prices;
  if (!p || p.duration_seconds !== Number(ui.duration.value)) return null;
  const model = ui.model.value;
  if (model) return p.models.find((m) => m.name === model)?.cost ?? null;
  return p.default_cost;
}

function canAfford(): boolean {
  const cost = selectedCost();
  const c = state.credits;
  return c !== null && cost !== null && c.available >= cost && !c.owed;
}

let pricesTimer: number | undefined;

/** Asks the API what a video of the chosen length costs (shortly after the length stops changing). */
function refreshPricesSoon(): void {
  window.clearTimeout(pricesTimer);
  pricesTimer = window.setTimeout(() => void refreshPrices(), 150);
  updateButton();
}

async function refreshPrices(): Promise<void> {
  const duration = Number(ui.duration.value);
  if (!state.signedIn || !Number.isInteger(duration) || duration < 1 || duration > 60) return;
  const result = await listModels({ query: { duration_seconds: duration } });
  // An answer for a length no longer chosen is dropped.
  if (!result.data || result.data.duration_seconds !== Number(ui.duration.value)) return;
  state.prices = result.data;
  labelModels();
  updateButton();
}

/** Each model's option with its price at the chosen length. */
function labelModels(): void {
  const p = state.prices;
  if (!p) return;
  for (const option of Array.from(ui.model.options)) {
    const m = p.models.find((x) => x.name === option.value);
    option.textContent = option.value === ''
      ? `Default (${p.default_cost} credits)`
      : `${option.value} (${m ? `${m.cost} credits` : 'unavailable'})`;
  }
}

async function refreshCredits(): Promise<void> {
  if (!state.signedIn) return;
  const result = await getCredits();
  if (!state.signedIn) return;
  if (!result.data) {
    // Shown beside the credits, quietly: this runs in the background, and
    // must not replace what the form says about the last click.
    const problem = failed(result);
    if (problem.status !== 401) ui.creditsProblem.textContent = `Could not read your credits: ${problem.text}`;
    return;
  }
  ui.creditsProblem.textContent = '';
  state.credits = result.data;
  // The price first, so that the credits and what they buy show together.
  await refreshPrices();
  const c = result.data;
  ui.available.textContent = String(c.available);
  ui.reserved.textContent = String(c.reserved);
  // "12 credits expire on 1 Jan": the next expiry, in the reader's calendar.
  ui.expiring.hidden = !c.expiring;
  ui.expiring.textContent = c.expiring
    ? `${c.expiring.amount} ${c.expiring.amount === 1 ? 'credit expires' : 'credits expire'} on ${new Date(c.expiring.at).toLocaleDateString(undefined, { day: 'numeric', month: 'short' })}.`
    : '';
  ui.cost.textContent = `${c.video_cost}`;
  const models = c.models ?? [];
  ui.modelOption.hidden = models.length === 0;
  if (models.length > 0 && ui.model.options.length !== models.length + 1) {
    const chosen = ui.model.value;
    ui.model.replaceChildren(new Option(`Default (${c.video_cost} credits)`, ''));
    for (const m of models) ui.model.append(new Option(`${m.name} (${m.cost} credits)`, m.name));
    ui.model.value = chosen;
    labelModels();
  }
  updateButton();
}

/** The ledger's refunds and commits per job (the newest 100 entries). */
async function refreshLedger(): Promise<void> {
  const result = await listLedgerEntries({ query: { limit: 100 } });
  if (!result.data) return; // the list still says what happened; amounts come from the job
  const byJob = new Map<string, Settlement>();
  for (const e of result.data.items) {
    if (!e.job_id) continue;
    if (e.kind !== 'refund' && e.kind !== 'commit') continue;
    const s = byJob.get(e.job_id) ?? { refunded: 0, spent: 0 };
    if (e.kind === 'refund') s.refunded += e.amount;
    else s.spent += e.amount;
    byJob.set(e.job_id, s);
  }
  jobs.setSettlements(byJob);
}

window.addEventListener('focus', () => void refreshCredits());
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') void refreshCredits();
});

// ---- the generate button -----------------------------------------------

/** The button's state and the reason shown when it is disabled. */
function updateButton(): void {
  const cost = selectedCost();
  const c = state.credits;
  const waitSecs = Math.ceil((state.rateLimitedUntil - Date.now()) / 1000);
  let reason: (string | Node)[] | null = null;
  if (state.inFlight) {
    ui.button.textContent = 'Submitting…';
  } else {
    ui.button.textContent = 'Generate video';
  }
  if (!c) {
    reason = ['Reading your credits…'];
  } else if (c.owed) {
    reason = [`You owe ${c.owed} credits: a payment was refunded after its credits were spent. Buying credits repays them first. `, pricingLink('Buy credits')];
  } else if (cost === null) {
    reason = ['Reading the price…'];
  } else if (c.available < cost) {
    reason = [`A video needs ${cost} credits; you have ${c.available}. `, pricingLink('Buy credits')];
  } else if (waitSecs > 0) {
    reason = [`Too many submissions: you can submit again in ${waitSecs} s.`];
  }
  ui.price.textContent = cost === null ? '' : `This video costs ${cost} ${cost === 1 ? 'credit' : 'credits'}.`;
  ui.button.disabled = state.inFlight || reason !== null;
  ui.button.setAttribute('aria-busy', String(state.inFlight));
  if (reason) {
    ui.reason.replaceChildren(...reason);
    ui.reason.hidden = false;
  } else {
    ui.reason.replaceChildren();
    ui.reason.hidden = true;
  }
}

ui.model.addEventListener('change', updateButton);
ui.duration.addEventListener('input', refreshPricesSoon);

function fieldProblem(field: string | undefined, text: string): boolean {
  const target =
    field === 'prompt' ? ui.promptProblem : field === 'duration_seconds' ? ui.durationProblem : null;
  if (!target) return false;
  target.textContent = text;
  (field === 'prompt' ? ui.prompt : ui.duration).setAttribute('aria-invalid', 'true');
  (field === 'prompt' ? ui.prompt : ui.duration).focus();
  return true;
}

function clearFieldProblems(): void {
  for (const [input, out] of [
    [ui.prompt, ui.promptProblem],
    [ui.duration, ui.durationProblem],
  ] as const) {
    input.removeAttribute('aria-invalid');
    out.textContent = '';
  }
}

function startCountdown(secs: number): void {
  state.rateLimitedUntil = Date.now() + secs * 1000;
  window.clearInterval(countdownTimer);
  countdownTimer = window.setInterval(() => {
    if (Date.now() >= state.rateLimitedUntil) window.clearInterval(countdownTimer);
    updateButton();
  }, 1000);
  updateButton();
}

ui.form.addEventListener('submit', (event) => {
  event.preventDefault();
  void submit();
});

async function submit(): Promise<void> {
  // A second click while the first is in flight does nothing (the button is
  // disabled too); each new click gets its own Idempotency-Key.
  if (state.inFlight || ui.button.disabled) return;
  clearFieldProblems();
  showProblem(ui.generateProblem, null);
  const prompt = ui.prompt.value;
  if (!prompt.trim()) {
    fieldProblem('prompt', 'Describe the video: the prompt is empty.');
    return;
  }
  const duration = Number(ui.duration.value);
  if (!Number.isInteger(duration) || duration < 1 || duration > 60) {
    fieldProblem('duration_seconds', 'The length must be a whole number of seconds from 1 to 60.');
    return;
  }
  const body: CreateGeneration = { prompt, duration_seconds: duration, aspect_ratio: ui.aspect.value as CreateGeneration['aspect_ratio'] };
  if (ui.model.value) (body as CreateGeneration & { model?: string }).model = ui.model.value;
  const fingerprint = JSON.stringify(body);
  // Retrying the very request that got no answer reuses its key, so the
  // retry can't make a second video if the first one did reach genq.
  const key = state.pending?.body === fingerprint ? state.pending.key : uuid();
  state.pending = { key, body: fingerprint };
  state.inFlight = true;
  updateButton();
  try {
    const result = await createGeneration({ body, headers: { 'Idempotency-Key': key } });
    if (result.data) {
      state.pending = null;
      jobs.upsert(result.data);
      ui.prompt.value = '';
      say('Submitted: your video is queued.');
      void refreshCredits();
      return;
    }
    const problem = failed(result);
    if (problem.status === null || problem.status >= 500) {
      // No answer, or a server error: the request may have been taken; keep
      // the key for a retry of the same request.
      problem.text += ' Pressing the button again retries the same request; it can’t make a second video.';
    } else {
      state.pending = null;
    }
    if (problem.status === 401) return;
    if (problem.status === 402) {
      // The refusal is recorded as a job; show it and the credits as they are.
      void refreshCredits();
      void loadJobs();
    }
    if (problem.status === 429 && problem.retryAfterSecs) startCountdown(problem.retryAfterSecs);
    if ((problem.status === 400 || problem.status === 422) && fieldProblem(problem.field, problem.text)) return;
    showProblem(ui.generateProblem, problem);
  } finally {
    state.inFlight = false;
    updateButton();
  }
}

// ---- the job list ------------------------------------------------------

async function loadJobs(append = false): Promise<void> {
  const cursor = append ? state.nextCursor : null;
  const result = await listGenerations({ query: { limit: PAGE_SIZE, ...(cursor ? { cursor } : {}) } });
  if (!state.signedIn) return;
  if (!result.data) {
    const problem = failed(result);
    if (problem.status !== 401) showProblem(ui.jobsProblem, { ...problem, text: `Could not read your videos: ${problem.text}` });
    return;
  }
  showProblem(ui.jobsProblem, null);
  for (const job of result.data.items) jobs.upsert(job, append);
  if (!append || state.nextCursor !== null) state.nextCursor = result.data.next_cursor ?? null;
  ui.more.hidden = state.nextCursor === null;
  ui.jobsEmpty.hidden = ui.list.children.length > 0;
}

ui.more.addEventListener('click', () => void loadJobs(true));

/** How often the places of jobs waiting in line are read again. */
const PLACES_EVERY_MS = 5_000;
/** At most this many jobs' places per round. */
const PLACES_MAX = 10;

window.setInterval(() => {
  if (!state.signedIn || document.visibilityState !== 'visible') return;
  for (const id of jobs.waitingIds().slice(0, PLACES_MAX)) void refreshJob(id);
}, PLACES_EVERY_MS);

async function refreshJob(id: string): Promise<void> {
  const result = await getGeneration({ path: { id } });
  if (result.data && state.signedIn) jobs.upsert(result.data);
}

/** Events of jobs being fetched, applied once the job is in the list. */
const heldEvents = new Map<string, JobEventView[]>();

function onJobEvent(frame: JobEventView): void {
  const held = heldEvents.get(frame.job_id);
  if (held) {
    held.push(frame);
    return;
  }
  if (!jobs.has(frame.job_id)) {
    // A job not in the list yet (just submitted, or made in another tab):
    // fetch it whole, holding its events meanwhile.
    heldEvents.set(frame.job_id, [frame]);
    void getGeneration({ path: { id: frame.job_id } }).then((result) => {
      const frames = heldEvents.get(frame.job_id) ?? [];
      heldEvents.delete(frame.job_id);
      if (!result.data || !state.signedIn) return;
      jobs.upsert(result.data);
      for (const f of frames) applyFrame(f, true);
      void refreshCredits();
    });
    return;
  }
  applyFrame(frame, false);
}

function applyFrame(frame: JobEventView, forwardOnly: boolean): void {
  const changed = jobs.applyEvent(frame, forwardOnly);
  // Waiting in line: the job's place comes with the job.
  if (frame.kind === 'waiting') void refreshJob(frame.job_id);
  if (!changed) return;
  void refreshCredits();
  if (frame.to_status && isTerminal(frame.to_status)) {
    // The error and the video's address come with the job (the ledger is
    // re-read by `settled`); a video made while watching plays at once.
    void refreshJob(frame.job_id).then(() => {
      if (frame.to_status === 'succeeded') void play(frame.job_id);
    });
  }
}

async function resync(): Promise<void> {
  await loadJobs();
  await Promise.all([refreshCredits(), refreshLedger()]);
}

function showLive(s: LiveState): void {
  ui.live.dataset.state = s;
  ui.live.textContent = {
    connecting: 'Live updates: connecting…',
    live: 'Live updates: on.',
    reconnecting: 'Live updates: reconnecting…',
    down: `Live updates are interrupted; checking every ${FALLBACK_POLL_MS / 1000} s until they are back.`,
  }[s];
  window.clearInterval(fallbackTimer);
  if (s === 'down' || s === 'reconnecting') {
    fallbackTimer = window.setInterval(() => {
      for (const id of jobs.openIds()) void refreshJob(id);
      void refreshCredits();
    }, FALLBACK_POLL_MS);
  }
}

async function cancel(id: string): Promise<void> {
  const result = await cancelGeneration({ path: { id } });
  if (result.data) {
    jobs.upsert(result.data);
    say('Canceled; the credits were refunded.');
    return;
  }
  const problem = failed(result);
  if (problem.status === 401) return;
  jobs.rowProblem(id, `Could not cancel: ${problem.text}`);
  void refreshJob(id);
}

/** Fetches the video with the bearer token and plays it from a blob URL. */
async function play(id: string): Promise<void> {
  if (jobs.hasVideo(id)) return;
  // Streamed through the API with the token (stream=1): a redirect into an
  // S3 bucket would need the bucket's CORS and this page's media-src.
  const result = await getGenerationVideo({ path: { id }, query: { stream: '1' }, parseAs: 'blob' });
  if (result.data instanceof Blob) {
    jobs.showVideo(id, URL.createObjectURL(result.data));
    return;
  }
  const problem = failed(result);
  if (problem.status !== 401) jobs.rowProblem(id, `Could not load the video: ${problem.text}`);
}

// ---- start -------------------------------------------------------------

async function start(): Promise<void> {
  await loadConfig();
  const token = savedToken();
  if (token) {
    signIn(token);
  } else {
    ui.signIn.hidden = false;
  }
}

void start();
