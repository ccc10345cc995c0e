//! Black-box tests: the real gateway over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod accounts;
mod api_keys;
mod auth;
mod binary;
mod clients;
mod cluster;
mod compose;
mod delivery;
mod event_types;
mod faults;
mod forward;
mod health;
mod hostile;
mod http2;
mod ingest;
mod jwt;
mod limits;
mod metrics;
mod openapi;
mod partitions;
mod persistence;
mod redis_modes;
mod registration_bounds;
mod resume;
mod rotation;
mod setup;
mod shutdown;
mod sink;
mod slow;
mod sqs;
mod stream;
mod support;
mod tls;
mod wrp;
mod xmidt_hooks;
