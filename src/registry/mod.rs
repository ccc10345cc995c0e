//! Registrations: who wants which device's events, where, until when.
//!
//! The [`Registry`] owns the live set: it validates and stores
//! registrations, indexes them by device (like the hub's subscribers), and
//! routes each event to the outboxes of the registrations it matches, once
//! per destination. Expiry is checked on every event, so an expired
//! registration stops receiving at once; a sweeper then removes it.
//! Clocks are wall-clock (`expires_at`), so they keep running across a
//! restart.

pub mod duration;
pub mod expression;
pub mod filter;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::Regex;

use crate::event::{DeviceId, Event};
use crate::forward::{Destinations, Outbox, Pushed};
use crate::hub::Published;
use crate::store::{Collection, Store, StoreError};
use crate::sync::{lock, read, write};
use crate::telemetry::Metrics;
use filter::{cel_value, event_path, CompiledFilter};
use spec::{Destination, FieldError, Origin, Registration, RegistrationRequest};

/// Most devices one registration may name.
pub const MAX_DEVICES: usize = 100;

/// Why a registration operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request breaks one or more rules (422).
    #[error("the registration is invalid")]
    Invalid(Vec<FieldError>),
    /// No registration with this id (404).
    #[error("no registration with id {0:?}")]
    NotFound(String),
    /// `If-Match` named another version (412).
    #[error("the registration has changed: its ETag is now {0}")]
    PreconditionFailed(String),
    /// The registration limit is reached (503).
    #[error("the gateway has reached its limit of {0} registrations")]
    Full(usize),
    /// The store failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Registry limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RegistryLimits {
    /// Longest duration.
    pub max_duration: Duration,
    /// Most live registrations.
    pub max_registrations: usize,
    /// Whether SQS destinations without credentials may use the gateway's
    /// own AWS identity (the default chain).
    pub sqs_default_credentials: bool,
}

/// A registration ready to route to.
#[derive(Debug)]
struct Live {
    registration: Registration,
    filter: CompiledFilter,
    device_patterns: Vec<Regex>,
    /// `None` for a disabled registration, which is listed but not routed.
    outbox: Option<Arc<Outbox>>,
}

impl Live {
    /// A registration that cannot run: kept so the API shows it (with the
    /// reason) and can replace or delete it; never routed to.
    fn disabled(mut registration: Registration, reason: String) -> Self {
        registration.disabled = Some(reason);
        Self {
            registration,
            filter: CompiledFilter::nothing(),
            device_patterns: Vec::new(),
            outbox: None,
        }
    }

    fn wants_device(&self, event: &Event) -> bool {
        if self.device_patterns.is_empty() {
            return true;
        }
        // xmidt semantics: a pattern matches the source or the event path.
        let d = &event.draft;
        let subjects = [
            Some(d.source.as_str()),
            event_path(event),
            d.device.as_ref().map(DeviceId::as_str),
        ];
        self.device_patterns
            .iter()
            .any(|p| subjects.iter().flatten().any(|s| p.is_match(s)))
    }
}

#[derive(Debug, Default)]
struct Index {
    by_id: BTreeMap<String, Arc<Live>>,
    by_device: HashMap<DeviceId, Vec<Arc<Live>>>,
    any_device: Vec<Arc<Live>>,
}

impl Index {
    fn insert(&mut self, live: Arc<Live>) {
        if live.outbox.is_none() {
            self.by_id.insert(live.registration.id.clone(), live);
            return;
        }
        let devices = &live.registration.devices;
        if devices.is_empty() {
            self.any_device.push(live.clone());
        }
        for d in devices {
            if let Ok(d) = DeviceId::parse(d) {
                self.by_device.entry(d).or_default().push(live.clone());
            }
        }
        self.by_id.insert(live.registration.id.clone(), live);
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Live>> {
        let live = self.by_id.remove(id)?;
        self.any_device.retain(|l| l.registration.id != id);
        for d in &live.registration.devices {
            if let Ok(d) = DeviceId::parse(d) {
                if let Some(v) = self.by_device.get_mut(&d) {
                    v.retain(|l| l.registration.id != id);
                    if v.is_empty() {
                        self.by_device.remove(&d);
                    }
                }
            }
        }
        Some(live)
    }
}

/// The live registrations.
#[derive(Debug)]
pub struct Registry {
    store: Arc<Store>,
    destinations: Arc<Destinations>,
    metrics: Arc<Metrics>,
    limits: RegistryLimits,
    index: RwLock<Index>,
    /// Serialises changes, so a check-then-write (If-Match) is atomic.
    writes: Mutex<()>,
    count: AtomicUsize,
}

impl Registry {
    /// Loads stored registrations, dropping the ones that expired while
    /// the gateway was down.
    pub fn open(
        store: Arc<Store>,
        destinations: Arc<Destinations>,
        metrics: Arc<Metrics>,
        limits: RegistryLimits,
    ) -> Result<Arc<Self>, RegistryError> {
        let registry = Arc::new(Self {
            store,
            destinations,
            metrics,
            limits,
            index: RwLock::default(),
            writes: Mutex::default(),
            count: AtomicUsize::new(0),
        });
        let now = Utc::now();
        let mut expired = Vec::new();
        for (id, doc) in registry.store.load(Collection::Registrations)? {
            let reg: Registration = match serde_json::from_slice(&doc) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(%id, error = %e, "unreadable stored registration skipped");
                    continue;
                }
            };
            if reg.expires_at <= now {
                expired.push(id);
                continue;
            }
            match registry.make_live(reg.clone()) {
                Ok(live) => registry.index_write().insert(live),
                Err(errors) => {
                    let reason = spec::describe(&errors);
                    tracing::error!(%id, %reason, "stored registration breaks a limit: loaded disabled; replace or delete it");
                    registry.metrics.registration_disabled();
                    registry
                        .index_write()
                        .insert(Arc::new(Live::disabled(reg, reason)));
                }
            }
        }
        let ids: Vec<&str> = expired.iter().map(String::as_str).collect();
        registry.store.delete(Collection::Registrations, &ids)?;
        registry.recount();
        tracing::info!(
            live = registry.len(),
            expired = expired.len(),
            "registrations loaded"
        );
        Ok(registry)
    }

    fn index_read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        read(&self.index)
    }

    fn index_write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        write(&self.index)
    }

    fn recount(&self) {
        let n = self.index_read().by_id.len();
        self.count.store(n, Ordering::Relaxed);
        self.metrics.set_registrations(n);
    }

    /// Live registrations now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether there are none (the hub's tap skips forwarding then).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The destinations (for statistics).
    pub fn destinations(&self) -> &Destinations {
        &self.destinations
    }

    fn make_live(&self, registration: Registration) -> Result<Arc<Live>, Vec<FieldError>> {
        // A device that no longer parses (stored by an older version) would
        // be left out of the index, and the registration silently never
        // routed: refuse it, so that a load shows it disabled instead.
        let bad_devices: Vec<FieldError> = registration
            .devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                DeviceId::parse(d)
                    .err()
                    .map(|e| FieldError::new(format!("devices[{i}]"), e.to_string()))
            })
            .collect();
        if !bad_devices.is_empty() {
            return Err(bad_devices);
        }
        let filter = registration.filter.compile()?;
        let mut device_patterns = Vec::new();
        for p in &registration.device_patterns {
            device_patterns.push(filter::bounded_regex(p).map_err(|e| {
                vec![FieldError::new(
                    "matcher.device_id",
                    format!("invalid regex: {e}"),
                )]
            })?);
        }
        let outbox = self.destinations.acquire(&registration.destination);
        Ok(Arc::new(Live {
            registration,
            filter,
            device_patterns,
            outbox: Some(outbox),
        }))
    }

    /// Validates a request into a registration (not yet stored).
    pub fn build(
        &self,
        req: RegistrationRequest,
        id: String,
        origin: Origin,
        previous: Option<&Registration>,
    ) -> Result<Registration, RegistryError> {
        let mut errors = Vec::new();
        let mut raw = req.devices;
        raw.extend(req.device);
        let mut devices = Vec::new();
        for (i, d) in raw.iter().enumerate() {
            match DeviceId::parse(d) {
                Ok(d) if !devices.contains(&d.as_str().to_owned()) => {
                    devices.push(d.as_str().to_owned())
                }
                Ok(_) => {}
                Err(e) => errors.push(FieldError::new(format!("devices[{i}]"), e.to_string())),
            }
        }
        let device_patterns = req.device_patterns.clone().unwrap_or_else(|| {
            previous
                .map(|p| p.device_patterns.clone())
                .unwrap_or_default()
        });
        if device_patterns.len() > MAX_DEVICES {
            errors.push(FieldError::new(
                "device_patterns",
                format!("at most {MAX_DEVICES} patterns"),
            ));
        }
        for (i, p) in device_patterns.iter().enumerate() {
            if let Err(e) = filter::bounded_regex(p) {
                errors.push(FieldError::new(
                    format!("device_patterns[{i}]"),
                    format!("invalid regex: {e}"),
                ));
            }
        }
        if raw.is_empty() && device_patterns.is_empty() && origin == Origin::Api {
            errors.push(FieldError::new(
                "device",
                "a device id is required (`device`, `devices` or `device_patterns`)",
            ));
        }
        if raw.len() > MAX_DEVICES {
            errors.push(FieldError::new(
                "devices",
                format!("at most {MAX_DEVICES} devices"),
            ));
        }
        let duration = match duration::parse(&req.duration, self.limits.max_duration) {
            Ok(d) => d,
            Err(m) => {
                errors.push(FieldError::new("duration", m));
                Duration::ZERO
            }
        };
        req.destination.validate(&mut errors);
        if let Destination::Sqs(sqs) = &req.destination {
            if sqs.access_key_id.is_none() && !self.limits.sqs_default_credentials {
                errors.push(FieldError::new(
                    "destination.access_key_id",
                    "credentials are required: this gateway does not lend its own AWS identity (--sqs-default-credentials)",
                ));
            }
        }
        if let Err(mut e) = req.filter.compile() {
            errors.append(&mut e);
        }
        if req.metadata.len() > 32
            || req
                .metadata
                .iter()
                .any(|(k, v)| k.len() > 256 || v.len() > 1024)
        {
            errors.push(FieldError::new(
                "metadata",
                "at most 32 entries, keys up to 256 and values up to 1024 bytes",
            ));
        }
        if !errors.is_empty() {
            return Err(RegistryError::Invalid(errors));
        }
        let now = Utc::now();
        let expires = now
            + chrono::Duration::from_std(duration).unwrap_or_else(|_| chrono::Duration::hours(1));
        Ok(Registration {
            id,
            devices,
            device_patterns,
            destination: req.destination,
            filter: req.filter,
            metadata: req.metadata,
            duration_secs: duration.as_secs(),
            created_at: previous.map_or(now, |p| p.created_at),
            updated_at: now,
            expires_at: expires,
            version: previous.map_or(1, |p| p.version + 1),
            origin,
            disabled: None,
        })
    }

    /// Stores and activates a new registration.
    pub fn insert(&self, registration: Registration) -> Result<Registration, RegistryError> {
        let _w = lock(&self.writes);
        let replacing = self.index_read().by_id.contains_key(&registration.id);
        if !replacing && self.len() >= self.limits.max_registrations {
            return Err(RegistryError::Full(self.limits.max_registrations));
        }
        self.commit(registration)
    }

    /// Replaces a registration (or renews it: a new `expires_at` from now).
    /// With `if_match`, only if its ETag is still that.
    pub fn replace(
        &self,
        id: &str,
        if_match: Option<&str>,
        make: impl FnOnce(&Registration) -> Result<Registration, RegistryError>,
    ) -> Result<Registration, RegistryError> {
        let _w = lock(&self.writes);
        let current = self
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.into()))?;
        check_if_match(&current, if_match)?;
        let next = make(&current)?;
        self.commit(next)
    }

    /// Writes to the store, then swaps the live entry. Caller holds `writes`.
    fn commit(&self, registration: Registration) -> Result<Registration, RegistryError> {
        let live = self
            .make_live(registration.clone())
            .map_err(RegistryError::Invalid)?;
        let doc = serde_json::to_vec(&registration).expect("registrations serialise");
        if let Err(e) = self
            .store
            .put(Collection::Registrations, &registration.id, &doc)
        {
            self.destinations.release(&registration.destination);
            return Err(e.into());
        }
        let old = {
            let mut index = self.index_write();
            let old = index.remove(&registration.id);
            index.insert(live);
            old
        };
        if let Some(old) = old.filter(|o| o.outbox.is_some()) {
            self.destinations.release(&old.registration.destination);
        }
        self.recount();
        Ok(registration)
    }

    /// Deletes a registration; with `if_match`, only if its ETag is that.
    pub fn delete(&self, id: &str, if_match: Option<&str>) -> Result<(), RegistryError> {
        let _w = lock(&self.writes);
        let current = self
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.into()))?;
        check_if_match(&current, if_match)?;
        self.store.delete(Collection::Registrations, &[id])?;
        self.remove_live(&[id.to_owned()]);
        Ok(())
    }

    fn remove_live(&self, ids: &[String]) {
        let removed: Vec<Arc<Live>> = {
            let mut index = self.index_write();
            ids.iter().filter_map(|id| index.remove(id)).collect()
        };
        for live in removed.iter().filter(|l| l.outbox.is_some()) {
            self.destinations.release(&live.registration.destination);
        }
        self.recount();
    }

    /// A live, unexpired registration.
    pub fn get(&self, id: &str) -> Option<Registration> {
        let index = self.index_read();
        index
            .by_id
            .get(id)
            .filter(|l| l.registration.expires_at > Utc::now())
            .map(|l| l.registration.clone())
    }

    /// Unexpired registrations after `after` (by id), optionally only those
    /// naming `device`, at most `limit`. Returns them and whether more follow.
    pub fn list(
        &self,
        device: Option<&DeviceId>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Registration>, bool) {
        let now = Utc::now();
        let index = self.index_read();
        let range = match after {
            Some(a) => index
                .by_id
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => index.by_id.range::<str, _>(..),
        };
        let mut matching = range.map(|(_, l)| &l.registration).filter(|r| {
            r.expires_at > now && device.is_none_or(|d| r.devices.iter().any(|x| x == d.as_str()))
        });
        let page: Vec<Registration> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// Delivered/dropped/failed figures of a registration's destination.
    pub fn destination_stats(&self, registration: &Registration) -> serde_json::Value {
        match self.destinations.get(&registration.destination) {
            Some(o) => serde_json::json!({
                "delivered": o.metrics.delivered.get(),
                "failed": o.metrics.failed.get(),
                "retried": o.metrics.retried.get(),
                "dropped": o.metrics.dropped.get(),
                "queue_depth": o.depth(),
            }),
            None => serde_json::Value::Null,
        }
    }

    /// Removes expired registrations from the index and the store.
    pub fn sweep(&self, now: DateTime<Utc>) {
        let _w = lock(&self.writes);
        let expired: Vec<String> = self
            .index_read()
            .by_id
            .values()
            .filter(|l| l.registration.expires_at <= now)
            .map(|l| l.registration.id.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        let ids: Vec<&str> = expired.iter().map(String::as_str).collect();
        if let Err(e) = self.store.delete(Collection::Registrations, &ids) {
            tracing::error!(error = %e, "expired registrations not removed from the store");
        }
        self.remove_live(&expired);
        tracing::info!(count = expired.len(), "registrations expired");
    }

    /// Offers `p` to the outbox of every destination with a live, matching
    /// registration, once per destination. Never waits.
    pub fn route(&self, p: &Arc<Published>) {
        let event = &p.event;
        let now = Utc::now();
        let index = self.index_read();
        let by_device = event
            .draft
            .device
            .as_ref()
            .and_then(|d| index.by_device.get(d));
        let mut cel = None;
        let mut sent: Vec<*const Outbox> = Vec::new();
        for live in index
            .any_device
            .iter()
            .chain(by_device.into_iter().flatten())
        {
            if live.registration.expires_at <= now || !live.wants_device(event) {
                continue;
            }
            if live.filter.needs_cel() && cel.is_none() {
                cel = Some(cel_value(event));
            }
            if !live.filter.matches(event, cel.as_ref()) {
                continue;
            }
            let Some(outbox) = &live.outbox else {
                continue;
            };
            let ptr = Arc::as_ptr(outbox);
            if sent.contains(&ptr) {
                continue;
            }
            sent.push(ptr);
            if let Pushed::Dropped { notice_due: true } = outbox.push(p.clone()) {
                self.destinations.notify_dropped(outbox);
            }
        }
    }
}

fn check_if_match(current: &Registration, if_match: Option<&str>) -> Result<(), RegistryError> {
    match if_match {
        None => Ok(()),
        Some(tags) => {
            let etag = current.etag();
            let ok = tags
                .split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == etag);
            if ok {
                Ok(())
            } else {
                Err(RegistryError::PreconditionFailed(etag))
            }
        }
    }
}
