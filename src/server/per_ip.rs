//! A cap on concurrent SSE streams per client address
//! (`--max-streams-per-ip`), so that one client cannot take every
//! subscriber slot. Off by default: behind a proxy or a NAT, many clients
//! share one address, and only the operator knows how many.
//!
//! The same cap bounds HTTP/2 connections per address, counted apart from
//! the streams they carry: an h2 connection holds a connection slot from
//! its preface on, stream or not, and without a count one address could
//! take every slot with connections that open no stream (an SSE stream
//! over HTTP/1.1 is its connection, and is counted as a stream). Apart, so
//! that a client's streams over one h2 connection are not cut by one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;

/// Open streams by client address.
#[derive(Debug)]
pub struct StreamsPerIp {
    /// Most streams per address; 0: no cap.
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    refused: Counter,
    /// Open HTTP/2 connections by client address.
    h2: Mutex<HashMap<IpAddr, usize>>,
    h2_refused: Counter,
}

/// One open stream (or HTTP/2 connection), counted against its address
/// until dropped (with the response body, when the stream ends; with the
/// connection's task).
#[derive(Debug)]
pub struct StreamSlot {
    owner: Arc<StreamsPerIp>,
    ip: IpAddr,
    kind: Kind,
}

/// What a [`StreamSlot`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    H2Connection,
}

/// The address already has as many streams as the cap allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtCap(pub usize);

impl StreamsPerIp {
    /// A counter of open streams with at most `cap` per address (0: none),
    /// refusals counted as `ratatoskr_sse_refused_per_ip_total`.
    pub fn register(registry: &mut prometheus_client::registry::Registry, cap: usize) -> Arc<Self> {
        let refused = Counter::default();
        registry.register(
            "sse_refused_per_ip",
            "Streams refused because their client address had --max-streams-per-ip open already",
            refused.clone(),
        );
        let h2_refused = Counter::default();
        registry.register(
            "h2_connections_refused_per_ip",
            "HTTP/2 connections closed at once because their client address had --max-streams-per-ip open already",
            h2_refused.clone(),
        );
        Arc::new(Self {
            cap,
            open: Mutex::default(),
            refused,
            h2: Mutex::default(),
            h2_refused,
        })
    }

    /// Counts a new stream from `ip`, or refuses it at the cap. `None`:
    /// no cap, nothing counted.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Result<Option<StreamSlot>, AtCap> {
        self.take(ip, Kind::Stream)
    }

    /// Counts a new HTTP/2 connection from `ip`, or refuses it at the cap.
    /// `None`: no cap, nothing counted.
    pub fn open_h2_connection(self: &Arc<Self>, ip: IpAddr) -> Result<Option<StreamSlot>, AtCap> {
        self.take(ip, Kind::H2Connection)
    }

    fn counts(&self, kind: Kind) -> &Mutex<HashMap<IpAddr, usize>> {
        match kind {
            Kind::Stream => &self.open,
            Kind::H2Connection => &self.h2,
        }
    }

    fn take(self: &Arc<Self>, ip: IpAddr, kind: Kind) -> Result<Option<StreamSlot>, AtCap> {
        if self.cap == 0 {
            return Ok(None);
        }
        let mut open = crate::sync::lock(self.counts(kind));
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap {
            drop(open);
            match kind {
                Kind::Stream => self.refused.inc(),
                Kind::H2Connection => self.h2_refused.inc(),
            };
            return Err(AtCap(self.cap));
        }
        *n += 1;
        Ok(Some(StreamSlot {
            owner: self.clone(),
            ip,
            kind,
        }))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = crate::sync::lock(self.owner.counts(self.kind));
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_cap_and_a_closed_stream_frees_a_slot() {
        let streams = StreamsPerIp::register(&mut Default::default(), 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let one = streams.open(a).unwrap();
        let _two = streams.open(a).unwrap();
        assert_eq!(streams.open(a).unwrap_err(), AtCap(2));
        assert!(
            streams.open(b).unwrap().is_some(),
            "another address is not affected"
        );
        drop(one);
        assert!(streams.open(a).unwrap().is_some());
        assert_eq!(streams.refused.get(), 1);
        // HTTP/2 connections have a count of their own, under the same cap.
        let c1 = streams.open_h2_connection(a).unwrap();
        let _c2 = streams.open_h2_connection(a).unwrap();
        assert_eq!(streams.open_h2_connection(a).unwrap_err(), AtCap(2));
        drop(c1);
        assert!(streams.open_h2_connection(a).unwrap().is_some());
        assert_eq!(streams.h2_refused.get(), 1);
        assert_eq!(streams.refused.get(), 1);
        let off = StreamsPerIp::register(&mut Default::default(), 0);
        assert!(off.open(a).unwrap().is_none());
    }
}
