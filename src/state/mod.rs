//! What the gateway keeps: the documents operators and consumers configure
//! through the API, each in a repository of one shape ([`documents`]) over
//! the [`store`], and what ingest remembers for a while.
//!
//! - [`registry`]: forwarding registrations, compiled and indexed by device;
//! - [`catalog`]: event types and their JSON Schemas;
//! - [`accounts`]: which devices each account owns;
//! - [`id_mark`]: the event id high-water mark, the gateway's own document;
//! - [`idempotency`]: the `Idempotency-Key` window (in memory; in a cluster,
//!   Redis keys).

pub mod accounts;
pub mod catalog;
pub mod documents;
pub mod id_mark;
pub mod idempotency;
pub mod registry;
pub mod store;
