//! The outside world's video: one adapter per provider API (`provider`) and
//! genq's own copies of finished videos (`storage`: a directory or an
//! S3-compatible bucket, downloaded under the outbound address rules).

pub mod provider;
pub mod storage;
