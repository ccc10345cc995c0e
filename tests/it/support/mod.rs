//! The harness every black-box test uses: in-process gateways ([`util`]),
//! one client API for them and child processes alike ([`client`]), the gateway binary as a child process ([`process`]),
//! webhook receivers that record what they get ([`receiver`]), real Redis
//! servers, clusters and sentinels ([`redis`]), a proxy that holds back
//! Redis's replies ([`reply_gate`]), and the one
//! way a test that cannot run here says so ([`skip`]).

pub mod client;
pub mod process;
pub mod receiver;
pub mod redis;
pub mod reply_gate;
pub mod skip;
pub mod util;
