// The job list: one row per job (refused attempts included), updated in
// place from snapshots (list, submit, get) and from live events, never
// moving a job's status backwards on a stale snapshot.
import type { JobEventView, JobStatus, JobView } from '@genq/client';
import { isOpen } from './status';

export type { JobEventView };

/** Words for each status: the API's word, capitalised, so the two never disagree. */
export const STATUS_LABEL: Record<JobStatus, string> = {
  rejected: 'Refused',
  queued: 'Queued',
  submitting: 'Submitting',
  running: 'Running',
  succeeded: 'Succeeded',
  failed: 'Failed',
  canceled: 'Canceled',
  dead: 'Failed (gave up)',
};

const ORDER: Record<JobStatus, number> = {
  queued: 0,
  submitting: 1,
  running: 2,
  rejected: 3,
  succeeded: 3,
  failed: 3,
  canceled: 3,
  dead: 3,
};

export function isTerminal(status: JobStatus): boolean {
  return !isOpen(status);
}

export function isCancelable(status: JobStatus): boolean {
  return isOpen(status);
}

/** What the list asks of the page when a person presses a row's buttons. */
export interface RowActions {
  cancel(id: string): void;
  play(id: string): void;
}

/** How much of a job's cost went back or was spent, from the ledger. */
export interface Settlement {
  refunded: number;
  spent: number;
}

interface Row {
  job: JobView;
  /** The last live event applied; older or repeated frames are skipped. */
  lastEventId: number;
  /** The latest timeline message, while the job is open. */
  note: string | null;
  li: HTMLLIElement;
  badge: HTMLElement;
  prompt: HTMLElement;
  detail: HTMLElement;
  cancel: HTMLButtonElement;
  play: HTMLButtonElement;
  media: HTMLElement;
  videoUrl: string | null;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function shortPrompt(prompt: string): string {
  return prompt.length > 60 ? `${prompt.slice(0, 57)}…` : prompt;
}

function credits(n: number): string {
  return `${n} ${n === 1 ? 'credit' : 'credits'}`;
}

export class JobList {
  private rows = new Map<string, Row>();
  private settlements = new Map<string, Settlement>();

  constructor(
    private readonly list: HTMLOListElement,
    private readonly empty: HTMLElement,
    private readonly actions: RowActions,
    private readonly announce: (text: string) => void,
    /** A job seen open has ended: its settlement is in the ledger now. */
    private readonly onEnded: (id: string) => void,
  ) {}

  has(id: string): boolean {
    return this.rows.has(id);
  }

  job(id: string): JobView | undefined {
    return this.rows.get(id)?.job;
  }

  /** Jobs waiting in line with a known place: their place changes as others start. */
  waitingIds(): string[] {
    return [...this.rows.values()]
      .filter((r) => r.job.status === 'queued' && r.job.queue_position != null)
      .map((r) => r.job.id);
  }

  /** Open jobs: the ones a poll must watch when live updates are down. */
  openIds(): string[] {
    return [...this.rows.values()].filter((r) => !isTerminal(r.job.status)).map((r) => r.job.id);
  }

  clear(): void {
    for (const row of this.rows.values()) {
      if (row.videoUrl) URL.revokeObjectURL(row.videoUrl);
    }
    this.rows.clear();
    this.settlements.clear();
    this.list.replaceChildren();
    this.empty.hidden = false;
  }

  /** Ledger facts per job, for the "refunded" and "spent" sentences. */
  setSettlements(settlements: Map<string, Settlement>): void {
    this.settlements = settlements;
    for (const row of this.rows.values()) this.render(row);
  }

  /**
   * Applies a snapshot of a job (from a list, a submit or a get). `atEnd`
   * appends older pages; otherwise a new job goes on top. A snapshot older
   * than what the row shows (a late answer) doesn't move the status back.
   */
  upsert(job: JobView, atEnd = false): void {
    const row = this.rows.get(job.id);
    if (!row) {
      const created = this.create(job);
      if (atEnd) this.list.append(created.li);
      else this.insertByAge(created.li, job.created_at);
      this.empty.hidden = true;
      this.render(created);
      return;
    }
    if (ORDER[job.status] < ORDER[row.job.status]) return;
    const ended = !isTerminal(row.job.status) && isTerminal(job.status);
    row.job = { ...job };
    if (isTerminal(job.status)) row.note = null;
    this.render(row);
    if (ended) this.onEnded(job.id);
  }

  /**
   * Applies a live event of a known job; returns whether it changed the
   * job's status. Events come in order, so their status applies even
   * backwards (an operator's replay moves a job from dead back to queued);
   * `forwardOnly` is for events held while the job was being fetched, which
   * may be older than the snapshot that was fetched.
   */
  applyEvent(frame: JobEventView, forwardOnly = false): boolean {
    const row = this.rows.get(frame.job_id);
    if (!row || frame.id <= row.lastEventId) return false;
    row.lastEventId = frame.id;
    // A status this page doesn't know (a newer API) changes nothing.
    const to = frame.to_status && frame.to_status in ORDER ? frame.to_status : null;
    let changed = false;
    const wasOpen = !isTerminal(row.job.status);
    if (forwardOnly && to && ORDER[to] < ORDER[row.job.status]) return false;
    if (to && to !== row.job.status) {
      row.job = { ...row.job, status: to, updated_at: frame.at };
      changed = true;
      this.announce(`Video “${shortPrompt(row.job.prompt)}”: ${STATUS_LABEL[to].toLowerCase()}.`);
    }
    row.note = isTerminal(row.job.status) ? null : (frame.message ?? row.note);
    this.render(row);
    if (changed && wasOpen && to && isTerminal(to)) this.onEnded(row.job.id);
    return changed;
  }

  /** Shows a loaded video in its row. */
  showVideo(id: string, url: string): void {
    const row = this.rows.get(id);
    if (!row) {
      URL.revokeObjectURL(url);
      return;
    }
    if (row.videoUrl) URL.revokeObjectURL(row.videoUrl);
    row.videoUrl = url;
    const video = el('video');
    video.controls = true;
    video.preload = 'metadata';
    video.src = url;
    video.setAttribute('aria-label', `Video: ${shortPrompt(row.job.prompt)}`);
    const save = el('a', 'download', 'Download');
    save.href = url;
    save.download = `genq-${id}.mp4`;
    row.media.replaceChildren(video, save);
    this.render(row);
  }

  hasVideo(id: string): boolean {
    return Boolean(this.rows.get(id)?.videoUrl);
  }

  /** A problem of one row (a failed cancel or download), in words. */
  rowProblem(id: string, text: string): void {
    const row = this.rows.get(id);
    if (!row) return;
    row.note = text;
    this.render(row);
  }

  private insertByAge(li: HTMLLIElement, createdAt: string): void {
    // Newest first; a late arrival of an older job goes below newer ones.
    for (const other of this.list.children) {
      const at = (other as HTMLElement).dataset.createdAt ?? '';
      if (at <= createdAt) {
        this.list.insertBefore(li, other);
        return;
      }
    }
    this.list.append(li);
  }

  private create(job: JobView): Row {
    const li = el('li', 'job');
    li.dataset.id = job.id;
    li.dataset.createdAt = job.created_at;
    li.tabIndex = -1;
    const head = el('p', 'job-head');
    const badge = el('span', 'status');
    badge.dataset.role = 'status';
    const time = el('time', 'when', new Date(job.created_at).toLocaleString());
    time.dateTime = job.created_at;
    head.append(badge, ' ', time);
    const prompt = el('p', 'prompt', job.prompt);
    const detail = el('p', 'detail');
    const buttons = el('div', 'actions');
    const cancel = el('button', 'secondary', 'Cancel');
    cancel.type = 'button';
    cancel.setAttribute('aria-label', `Cancel “${shortPrompt(job.prompt)}”`);
    cancel.addEventListener('click', () => this.actions.cancel(job.id));
    const play = el('button', 'secondary', 'Play video');
    play.type = 'button';
    play.setAttribute('aria-label', `Play “${shortPrompt(job.prompt)}”`);
    play.addEventListener('click', () => this.actions.play(job.id));
    buttons.append(cancel, play);
    const media = el('div', 'media');
    li.append(head, prompt, detail, buttons, media);
    const row: Row = { job: { ...job }, lastEventId: 0, note: null, li, badge, prompt, detail, cancel, play, media, videoUrl: null };
    this.rows.set(job.id, row);
    return row;
  }

  private render(row: Row): void {
    const { job } = row;
    row.li.dataset.status = job.status;
    row.badge.dataset.status = job.status;
    row.badge.textContent = STATUS_LABEL[job.status];
    row.detail.textContent = this.detail(row);
    this.toggle(row, row.cancel, !isCancelable(job.status));
    this.toggle(row, row.play, job.status !== 'succeeded' || !job.result_url || row.videoUrl !== null);
  }

  /** Hides a button; if it had the focus, the focus stays in the row. */
  private toggle(row: Row, button: HTMLButtonElement, hidden: boolean): void {
    if (hidden && document.activeElement === button) row.li.focus();
    button.hidden = hidden;
  }

  private detail(row: Row): string {
    const { job } = row;
    const settled = this.settlements.get(job.id);
    const reason = job.error?.message?.trim().replace(/[.\s]+$/, '');
    switch (job.status) {
      case 'rejected':
        return `${reason ?? 'Refused'}. No credits were taken.`;
      case 'queued': {
        const note = row.note ?? `${credits(job.cost)} reserved.`;
        return job.queue_position != null ? `${note} Place in line: ${job.queue_position}.` : note;
      }
      case 'submitting':
      case 'running':
        return row.note ?? `${credits(job.cost)} reserved.`;
      case 'succeeded':
        return `Ready. ${credits(settled?.spent ?? job.cost)} spent.`;
      case 'failed':
      case 'dead':
      case 'canceled': {
        const why = job.status === 'canceled' ? 'Canceled.' : `Failed: ${reason ?? 'no reason was given'}.`;
        // The refund is written in the same transaction as the job's end,
        // so a job seen ended has it; the ledger gives the amount.
        return `${why} ${credits(settled?.refunded ?? job.cost)} refunded.`;
      }
    }
  }
}
