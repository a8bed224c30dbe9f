//! genq's end-to-end tests are test targets (`tests/e2e`, `tests/memory.rs`)
//! over the harness in `tests/harness`; this library is empty, so that the
//! harness's test-only dependencies (the worker's `test-hooks`) are
//! dev-dependencies and never reach a binary that ships.
