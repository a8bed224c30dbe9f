-- The per-user submission limit, shared by every API process: one row per
-- user holding the GCRA's theoretical arrival time (TAT) of the next
-- submission. A submission is allowed while the TAT is at most
-- (burst - 1) emission intervals ahead of now, and pushes it one interval on.
CREATE TABLE submit_rate (
    user_id  uuid PRIMARY KEY REFERENCES users (id),
    tat      timestamptz NOT NULL
);
