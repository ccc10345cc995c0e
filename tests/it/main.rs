//! Black-box tests: the real gateway over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod accounts;
mod api_keys;
mod auth;
mod binary;
mod clients;
mod cluster;
mod compose;
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
mod persistence;
mod process;
mod receiver;
mod registration_bounds;
mod resume;
mod setup;
mod shutdown;
mod sink;
mod slow;
mod sqs;
mod stream;
mod tls;
mod util;
mod wrp;
mod xmidt_hooks;
