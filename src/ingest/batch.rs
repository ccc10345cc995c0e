//! NDJSON batches: one event per line, a result per line, paced so that
//! one large batch never makes a reader that keeps up lag.

use std::time::Duration;

use bytes::Bytes;

use super::{fingerprint, Format, Overrides, Pipeline};
use crate::auth::Principal;
use crate::bus::Idempotent;
use crate::error::ApiError;
use crate::event::{json as json_event, EventDraft};

/// Longest a batch waits, in all, for slow readers before it publishes
/// regardless (those readers then lag, as their policy says).
const PACING_BUDGET: Duration = Duration::from_secs(1);

/// What a batch did, line by line: the body of its answer.
#[derive(Debug, serde::Serialize)]
pub struct BatchOutcome {
    /// Lines published.
    pub accepted: u64,
    /// Lines refused.
    pub rejected: u64,
    /// Each line's result, in line order.
    pub results: Vec<LineResult>,
}

/// One line's result.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum LineResult {
    /// Published: `{"line", "id"}`.
    Accepted {
        /// The line's number (from 1).
        line: usize,
        /// Its event's id.
        id: String,
    },
    /// Refused: `{"line", "status", "detail"}`, what the line alone would
    /// have been answered.
    Rejected {
        /// The line's number (from 1).
        line: usize,
        /// The HTTP status.
        status: u16,
        /// Why.
        detail: String,
    },
}

impl Pipeline {
    /// Publishes a batch line by line. When a reader's queue passes half
    /// full, the batch pauses (a millisecond at a time, at most
    /// [`PACING_BUDGET`] per request). A batch without a key on a bus that
    /// appends batches whole goes in one write.
    pub async fn batch(
        &self,
        who: &Principal,
        base: EventDraft,
        overrides: &Overrides,
        key: Option<&str>,
        body: &Bytes,
    ) -> Result<BatchOutcome, ApiError> {
        let lines = json_event::split_lines(body);
        if lines.is_empty() {
            return Err(ApiError::bad_request("the batch has no events"));
        }
        if lines.len() > self.limits.max_batch {
            return Err(ApiError::too_many_lines(lines.len(), self.limits.max_batch));
        }
        if key.is_none() && self.bus.appends_batches_whole() {
            return self.batch_whole(who, base, overrides, lines).await;
        }
        let mut done = BatchOutcome {
            results: Vec::with_capacity(lines.len()),
            accepted: 0,
            rejected: 0,
        };
        let half_full = self.limits.pacing_depth.max(1);
        let mut paced = Duration::ZERO;
        let content_type = base.content_type.clone();
        for (line, text) in lines {
            let decoded = self.decode(Format::Json, base.clone(), overrides, &text);
            let outcome = match decoded {
                Ok(draft) => {
                    // Each line is its own event: its own key and fingerprint.
                    let line_key = key.map(|k| Idempotent {
                        key: format!("{k}#{line}"),
                        fingerprint: fingerprint(&content_type, overrides, &text),
                    });
                    let published = match self.publish(who, draft, line_key.as_ref()) {
                        Ok(publish) => publish.await,
                        Err(e) => Err(e),
                    };
                    published
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(o) => {
                    done.accepted += 1;
                    done.results.push(LineResult::Accepted {
                        line,
                        id: o.id.to_string(),
                    });
                    if o.deepest >= half_full && paced < PACING_BUDGET {
                        let pause = Duration::from_millis(1);
                        tokio::time::sleep(pause).await;
                        paced += pause;
                    } else if line % 256 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => {
                    done.rejected += 1;
                    done.results.push(rejected_line(line, &e));
                }
            }
        }
        Ok(done)
    }

    /// Every valid line in one write (in a cluster: one Redis pipeline).
    async fn batch_whole(
        &self,
        who: &Principal,
        base: EventDraft,
        overrides: &Overrides,
        lines: Vec<(usize, Bytes)>,
    ) -> Result<BatchOutcome, ApiError> {
        let mut results: Vec<LineResult> = Vec::with_capacity(lines.len());
        let mut drafts = Vec::new();
        let mut slots = Vec::new();
        for (line, text) in lines {
            let checked = self
                .decode(Format::Json, base.clone(), overrides, &text)
                .and_then(|d| self.check(who, &d).map(|()| d));
            match checked {
                Ok(d) => {
                    slots.push(results.len());
                    // Its id once the write answers.
                    results.push(LineResult::Accepted {
                        line,
                        id: String::new(),
                    });
                    drafts.push(d);
                }
                Err(e) => results.push(rejected_line(line, &e)),
            }
        }
        let mut rejected = (results.len() - drafts.len()) as u64;
        let mut accepted = drafts.len() as u64;
        if !drafts.is_empty() {
            let ids = self.bus.append_all(&drafts).await?;
            for (slot, published) in slots.into_iter().zip(ids) {
                let LineResult::Accepted { line, id } = &mut results[slot] else {
                    continue;
                };
                match published {
                    Ok(published) => *id = published.to_string(),
                    // Its partition's write failed (others' did not): this
                    // line is not stored, and says so.
                    Err(e) => {
                        let line = *line;
                        results[slot] = rejected_line(line, &e);
                        accepted -= 1;
                        rejected += 1;
                    }
                }
            }
        }
        Ok(BatchOutcome {
            results,
            accepted,
            rejected,
        })
    }
}

/// A refused line of a batch, as its result.
fn rejected_line(line: usize, e: &ApiError) -> LineResult {
    LineResult::Rejected {
        line,
        status: e.status().as_u16(),
        detail: e.to_string(),
    }
}
