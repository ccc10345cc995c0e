//! Black-box tests: the real gateway over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod binary;
mod health;
mod ingest;
mod limits;
mod resume;
mod shutdown;
mod slow;
mod stream;
mod util;
mod wrp;
