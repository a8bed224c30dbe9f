// The generated client, pointed at this origin with the signed-in user's
// token, and every failure of a call turned into a sentence for a person.
import { client, type ErrorBody } from '@genq/client';

let token: string | null = null;

// Same origin: the API serves this page. `auth` answers the bearer scheme
// of every operation that declares it.
client.setConfig({ auth: () => token ?? undefined });

export function setToken(value: string | null): void {
  token = value;
}

export function currentToken(): string | null {
  return token;
}

/** What went wrong with a call, in words, with what a form needs to act on it. */
export interface Problem {
  /** HTTP status, or null when the API could not be reached at all. */
  status: number | null;
  /** The API's stable code (`insufficient_credits`, …), or `network`. */
  code: string;
  /** A sentence for the person in front of the page. */
  text: string;
  /** The request field the API named (400 `invalid_request`). */
  field?: string;
  /** Seconds to wait, from `Retry-After` (429). */
  retryAfterSecs?: number;
  /** The job a refused submission was recorded as (402). */
  jobId?: string;
}

/** The shape every generated call resolves to when it did not succeed. */
export interface Failed {
  error?: unknown;
  response?: Response;
}

/** `Retry-After` as seconds: either delay-seconds or an HTTP date. */
export function retryAfterSecs(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, Math.ceil((at - now) / 1000));
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** Turns a failed call into a [`Problem`]. */
export function describe(result: Failed): Problem {
  const response = result.response;
  if (!response) {
    return {
      status: null,
      code: 'network',
      text: 'Could not reach genq: check your connection, then try again.',
    };
  }
  const status = response.status;
  const body = result.error as Partial<ErrorBody> | string | undefined;
  const detail = typeof body === 'object' && body !== null ? body.error : undefined;
  const code = detail?.code ?? `http_${status}`;
  const message = detail?.message?.trim();
  const base = { status, code };
  if (status === 401) {
    return { ...base, text: `You are signed out (${message ?? 'the token was refused'}). Sign in again.` };
  }
  if (status === 402) {
    const required = detail?.required;
    const available = detail?.available;
    const text =
      required != null && available != null
        ? `Not enough credits: a video needs ${plural(required, 'credit', 'credits')}; you have ${available}.`
        : `Not enough credits: ${message ?? 'buy credits, then try again.'}`;
    return { ...base, text, jobId: detail?.job_id ?? undefined };
  }
  if (status === 429) {
    const wait = retryAfterSecs(response.headers.get('Retry-After'));
    const text =
      wait != null
        ? `Too many requests: try again in ${plural(wait, 'second', 'seconds')}.`
        : 'Too many requests: wait a moment, then try again.';
    return { ...base, text, retryAfterSecs: wait };
  }
  if (status === 400 || status === 422) {
    return {
      ...base,
      text: message ?? 'The request was refused as invalid.',
      field: detail?.field ?? undefined,
    };
  }
  if (status === 409 && code === 'idempotency_conflict') {
    return { ...base, text: 'This click was already used for a different request; press the button again.' };
  }
  if (status >= 500) {
    const what = status === 503 ? 'genq is busy or briefly unavailable' : 'genq had a problem';
    return { ...base, text: `${what} (HTTP ${status}). Try again in a moment.` };
  }
  return { ...base, text: message ?? `The request failed (HTTP ${status}).` };
}
