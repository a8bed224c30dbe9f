// Live job events: one EventSource on `/v1/events` with a short-lived stream
// token (EventSource can't send an Authorization header). The browser
// reconnects by itself with Last-Event-ID; when it gives up (the token
// expired, the server refused), a new token opens a new stream after a
// backoff, resuming after the last event seen (`last_event_id`); the page
// also re-reads its state then, in case the gap was longer than the server
// keeps.
import type { JobEventView } from './jobs';

export type LiveState = 'connecting' | 'live' | 'reconnecting' | 'down';

export interface LiveHooks {
  /** A fresh stream token, or null when none can be had now. */
  streamToken(): Promise<string | null>;
  /** Each job event, in order. */
  onEvent(frame: JobEventView): void;
  /** A new stream is open: anything before it may have been missed. */
  onResync(): void;
  onState(state: LiveState): void;
}

const MAX_BACKOFF_MS = 30_000;

export class Live {
  private source: EventSource | null = null;
  private stopped = true;
  private failures = 0;
  private timer: number | undefined;
  /** The last event id seen, so that a new stream resumes after it. */
  private lastEventId: number | null = null;

  constructor(private readonly hooks: LiveHooks) {}

  start(): void {
    this.stopped = false;
    this.failures = 0;
    this.lastEventId = null;
    void this.open();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
  }

  private async open(): Promise<void> {
    if (this.stopped) return;
    this.hooks.onState(this.failures === 0 ? 'connecting' : 'reconnecting');
    const token = await this.hooks.streamToken();
    if (this.stopped) return;
    if (!token) {
      this.retryLater();
      return;
    }
    const query = new URLSearchParams({ access_token: token });
    if (this.lastEventId !== null) query.set('last_event_id', String(this.lastEventId));
    const source = new EventSource(`/v1/events?${query}`);
    this.source = source;
    let resynced = false;
    source.addEventListener('open', () => {
      this.failures = 0;
      this.hooks.onState('live');
      // Only a new stream can have missed events; the browser's own
      // reconnects resume from Last-Event-ID.
      if (!resynced) {
        resynced = true;
        this.hooks.onResync();
      }
    });
    source.addEventListener('job', (event) => {
      const message = event as MessageEvent<string>;
      let frame: JobEventView;
      try {
        frame = JSON.parse(message.data) as JobEventView;
      } catch {
        return; // a frame that is not JSON: ignore it, the next resync corrects the list
      }
      if (typeof frame.id === 'number') this.lastEventId = Math.max(this.lastEventId ?? 0, frame.id);
      this.hooks.onEvent(frame);
    });
    source.addEventListener('error', () => {
      if (this.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (a 401 for an expired token, a 429 or 503).
        source.close();
        this.source = null;
        this.retryLater();
      } else {
        this.hooks.onState('reconnecting');
      }
    });
  }

  private retryLater(): void {
    this.failures += 1;
    this.hooks.onState('down');
    const backoff = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(this.failures - 1, 5));
    // Full jitter, so many pages don't come back at the same instant.
    const wait = backoff / 2 + Math.random() * (backoff / 2);
    this.timer = window.setTimeout(() => void this.open(), wait);
  }
}
