//! Forwarding: events to registrations' destinations, at least once and
//! in id order per destination, for the registration's life.
//!
//! ```text
//! hub ──Tap::offer (never waits)──▶ inbox ──router task──▶ Matcher (registry snapshot)
//!     ──Destinations::push (never waits)──▶ Outbox per destination ──worker──▶ Sink (webhook / SQS)
//! ```
//!
//! - [`router`]: the hub's tap ([`Forwarding`]) offers each event to a
//!   bounded inbox (in id order, inside the hub's publish), so forwarding
//!   adds one `try_send` to the SSE fan-out path. The router task asks the
//!   [`Matcher`] which destinations want it.
//! - [`destinations`]: the live set ([`Destinations`]), one bounded
//!   [`Outbox`] per distinct destination, following the registry through
//!   [`Destinations::reconcile`]. A full outbox drops its oldest events for
//!   that destination only and, at most once per notice interval, tells
//!   it so.
//! - [`delivery`]: each destination's worker delivers one batch at a time
//!   (in id order), retrying what may succeed later with capped
//!   exponential backoff and full jitter until it does — the same code for
//!   every [`sink::Sink`]. A 410 Gone disables the destination's
//!   registrations.
//! - [`attempts`]: each destination's recent attempts (the delivery log).
//! - [`sink`], [`webhook`], [`sqs`]: how a batch and a notice are sent.
//! - [`destination`]: what a destination is (kinds, formats, checks,
//!   redaction); [`ssrf`]: which addresses it may reach.

pub mod attempts;
pub mod delivery;
pub mod destination;
pub mod destinations;
pub mod failure;
pub mod metrics;
pub mod outbox;
pub mod payload;
pub mod resume;
pub mod router;
pub mod runtime;
pub mod sink;
pub mod sqs;
pub mod ssrf;
pub mod webhook;

pub use delivery::{DeliveryContext, DeliverySettings, DEFAULT_MAX_OUTBOUND};
pub use destinations::{Destinations, ForwardTotals};
pub use failure::Failure;
pub use outbox::{BufferLimits, Outbox, Pushed, Queued};
pub use router::{Forwarding, InboxLimits, Matcher};
