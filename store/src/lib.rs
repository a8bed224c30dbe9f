//! genq's store: connecting and migrating (`db`), every SQL statement of the
//! ledger, jobs, outbox, dead letters and webhooks (`store`), and the
//! operator queries over them, the ledger's verification included (`ops`).

pub mod db;
pub mod ops;
pub mod store;
