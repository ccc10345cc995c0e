//! The binary's tools beside the gateway: `ratatoskr sink` (a webhook
//! receiver that prints what it gets) and `ratatoskr healthcheck` (the
//! image's HEALTHCHECK).

pub mod healthcheck;
pub mod sink;
