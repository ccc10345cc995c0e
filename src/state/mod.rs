//! What the gateway keeps between restarts, as documents: the store, and
//! the one document of its own kept in it (the event id mark).

pub mod id_mark;
pub mod store;
