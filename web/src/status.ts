// The job lifecycle as the pages need it: the open statuses (a job holding
// its credits, which can still be canceled). JobStatus itself comes from the
// API's document; this list is genq's JobStatus::OPEN, and a Rust test
// (core/src/domain.rs) fails when the two differ.
import type { JobStatus } from '@genq/client';

export const OPEN_STATUSES: readonly JobStatus[] = ['queued', 'submitting', 'running'];

/** Waiting, being sent to the provider or at it: open, cancelable. */
export function isOpen(status: JobStatus | string | null | undefined): boolean {
  return (OPEN_STATUSES as readonly (string | null | undefined)[]).includes(status);
}
