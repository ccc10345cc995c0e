//! The SSE sink: one subscriber's body ([`body`]), and the part of a
//! resume that reaches past this node's ring ([`resume`]).

pub mod body;
pub mod resume;
