-- The outbox stores a typed work message and its routing key; the relay adds
-- the exchange from its own topology, so the API needs no broker names.
-- Every row written so far went to the work exchange.
ALTER TABLE outbox DROP COLUMN exchange;
