-- Provider callbacks: a verified callback only wakes the job's next poll.
-- callback_at: when the last verified callback for the job arrived; a poll
--   that sees it change while it asked the provider asks again at once, and
--   a task accepted after a callback (one that came before the submit was
--   answered) is polled at once.
-- callback_wake_seq: the poll_seq a wake-up poll was last sent for; while
--   it equals poll_seq a wake-up is on its way, so more callbacks add none.
ALTER TABLE jobs
    ADD COLUMN callback_at timestamptz,
    ADD COLUMN callback_wake_seq integer;
