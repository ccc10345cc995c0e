//! Registrations: who wants which device's events, where, until when.
//!
//! The [`Registry`] is a pure matcher beside the data flow: it validates,
//! stores and indexes registrations (by device, like the hub's
//! subscribers), and answers "which destinations want this event"
//! ([`crate::forward::Matcher`]). It delivers nothing itself.
//!
//! Matching reads an immutable [`Snapshot`], swapped whole on every change
//! (`arc-swap`): routing takes no lock, so a slow match on the
//! low-priority forwarding thread never holds up a write, and a write
//! never pauses routing. Writes are serialised among themselves, build the
//! next snapshot from the current one, store, then swap. Whoever delivers
//! (forwarding) hears of each new snapshot through [`Registry::on_change`]
//! before it is swapped in, so a new destination is ready before the first
//! event for it is routed.
//!
//! Expiry is checked on every event, so an expired registration stops
//! receiving at once; a sweeper then removes it. Clocks are wall-clock
//! (`expires_at`), so they keep running across a restart.
//!
//! Bounded in bytes: each field ([`size`]), each registration's compiled
//! patterns ([`filter::MAX_COMPILED_BYTES`]), and everything all
//! registrations keep ([`RegistryLimits::max_bytes`]: their stored
//! documents and compiled patterns). A stored registration that breaks a
//! bound is loaded disabled and reported.

pub mod duration;
pub mod expression;
pub mod filter;
pub mod size;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::gauge::Gauge;

use crate::event::{DeviceId, Event};
use crate::forward::destination::Destination;
use crate::forward::Matcher;
use crate::state::documents::Documents;
use crate::state::store::{Collection, Store, StoreError, StoredDisabled};
use crate::validation::FieldError;
use filter::{cel_value, BoundedRegex, CompileBudget, CompiledFilter};
use spec::{Origin, Registration, RegistrationRequest};

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
    /// The registration would take the bytes all registrations keep past
    /// their budget (422).
    #[error("the registrations would keep more than {0} bytes in all (--max-registration-bytes); delete some or make this one smaller")]
    OverBudget(usize),
    /// The caller may not make this registration (403): a device outside
    /// its scope.
    #[error("{0}")]
    Forbidden(String),
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
    /// Most bytes all enabled registrations keep: stored documents and
    /// compiled patterns ([`Live::cost`]).
    pub max_bytes: usize,
    /// Whether SQS destinations without credentials may use the gateway's
    /// own AWS identity (the default chain).
    pub sqs_default_credentials: bool,
}

/// A registration ready to match.
#[derive(Debug)]
struct Live {
    registration: Registration,
    filter: CompiledFilter,
    device_patterns: Vec<BoundedRegex>,
    /// Shared with the matches handed out; `None` for a disabled
    /// registration, which is listed but never matched.
    destination: Option<Arc<Destination>>,
    /// The stored document, byte for byte: what a conditional write to a
    /// shared store compares against, and what a reload compares to tell
    /// a changed registration from one it can keep compiled.
    doc: Arc<[u8]>,
}

impl Live {
    /// What it counts against [`RegistryLimits::max_bytes`]: its stored
    /// document (a fair proxy for its parsed form and its destination's
    /// copies, each bounded by [`size`]) and its compiled patterns. A
    /// disabled one counts nothing (it holds no compiled form, and a start
    /// must load what is stored).
    fn cost(&self) -> usize {
        if self.destination.is_none() {
            return 0;
        }
        self.doc.len()
            + self.filter.bytes()
            + self
                .device_patterns
                .iter()
                .map(|p| p.bytes())
                .sum::<usize>()
    }

    /// A registration that cannot run: kept so the API shows it (with the
    /// reason) and can replace or delete it; never matched.
    fn disabled(mut registration: Registration, reason: String) -> Self {
        registration.disabled = Some(reason);
        Self {
            registration,
            filter: CompiledFilter::nothing(),
            device_patterns: Vec::new(),
            destination: None,
            doc: Arc::from(&[][..]),
        }
    }

    /// Checks the stored form and compiles its filter and patterns.
    fn compile(registration: Registration) -> Result<Self, Vec<FieldError>> {
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
        let mut sizes = Vec::new();
        size::check_destination(&registration.destination, &mut sizes);
        if !sizes.is_empty() {
            return Err(sizes);
        }
        let (filter, device_patterns) =
            compile_patterns(&registration.filter, &registration.device_patterns)?;
        Ok(Self {
            destination: Some(Arc::new(registration.destination.clone())),
            registration,
            filter,
            device_patterns,
            doc: Arc::from(&[][..]),
        })
    }

    fn wants_device(&self, event: &Event) -> bool {
        if self.device_patterns.is_empty() {
            return true;
        }
        // The device only, never the source or the WRP event path: those
        // are the publisher's to choose (`?source=`, `X-Event-Source`, the
        // body), so a publisher scoped to one device could name any other
        // there and reach its consumers. The device is what a scoped
        // publisher is checked for (and a WRP message's device comes from
        // its event path or source, canonical), so a pattern sees what
        // Caduceus matches without trusting the rest. No device, no match.
        event
            .draft
            .device
            .as_ref()
            .is_some_and(|d| self.device_patterns.iter().any(|p| p.is_match(d.as_str())))
    }
}

/// Compiles a registration's filter and device patterns within one
/// [`CompileBudget`], collecting every error.
fn compile_patterns(
    spec: &filter::FilterSpec,
    device_patterns: &[String],
) -> Result<(CompiledFilter, Vec<BoundedRegex>), Vec<FieldError>> {
    let mut budget = CompileBudget::default();
    let mut errors = Vec::new();
    let filter = spec
        .compile_within(&mut budget)
        .map_err(|mut e| errors.append(&mut e));
    let mut patterns = Vec::new();
    for (i, p) in device_patterns.iter().enumerate() {
        match budget.regex(&format!("device_patterns[{i}]"), p) {
            Ok(r) => patterns.push(r),
            Err(e) => errors.push(e),
        }
    }
    match filter {
        Ok(f) if errors.is_empty() => Ok((f, patterns)),
        _ => Err(errors),
    }
}

/// The registrations at one moment, indexed for matching. Never changed
/// once published: a change builds the next one.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    by_id: BTreeMap<String, Arc<Live>>,
    by_device: HashMap<DeviceId, Vec<Arc<Live>>>,
    any_device: Vec<Arc<Live>>,
    /// Registrations that can match (not disabled).
    enabled: usize,
    /// What the enabled ones keep ([`Live::cost`]).
    bytes: usize,
}

impl Snapshot {
    fn insert(&mut self, live: Arc<Live>) {
        self.remove(&live.registration.id);
        if live.destination.is_some() {
            self.enabled += 1;
            self.bytes += live.cost();
            let devices = &live.registration.devices;
            if devices.is_empty() {
                self.any_device.push(live.clone());
            }
            for d in devices.iter().filter_map(|d| DeviceId::parse(d).ok()) {
                self.by_device.entry(d).or_default().push(live.clone());
            }
        }
        self.by_id.insert(live.registration.id.clone(), live);
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Live>> {
        let live = self.by_id.remove(id)?;
        if live.destination.is_none() {
            return Some(live);
        }
        self.enabled -= 1;
        self.bytes -= live.cost();
        self.any_device.retain(|l| l.registration.id != id);
        for d in live
            .registration
            .devices
            .iter()
            .filter_map(|d| DeviceId::parse(d).ok())
        {
            if let Some(v) = self.by_device.get_mut(&d) {
                v.retain(|l| l.registration.id != id);
                if v.is_empty() {
                    self.by_device.remove(&d);
                }
            }
        }
        Some(live)
    }

    /// Registrations, disabled ones included.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every destination an enabled registration names (repeats possible).
    pub fn destinations(&self) -> impl Iterator<Item = &Destination> {
        self.by_id.values().filter_map(|l| l.destination.as_deref())
    }

    /// Appends each destination with a live registration matching `event`
    /// at `now`, once per destination.
    pub fn matching(&self, event: &Event, now: DateTime<Utc>, out: &mut Vec<Arc<Destination>>) {
        self.matching_only(event, now, None, out);
    }

    /// As [`Snapshot::matching`], evaluating only the registrations that
    /// name `only` when given (a takeover's replay to one destination must
    /// not run every other registration's filters).
    fn matching_only(
        &self,
        event: &Event,
        now: DateTime<Utc>,
        only: Option<&Destination>,
        out: &mut Vec<Arc<Destination>>,
    ) {
        let by_device = event
            .draft
            .device
            .as_ref()
            .and_then(|d| self.by_device.get(d));
        let mut cel = None;
        for live in self
            .any_device
            .iter()
            .chain(by_device.into_iter().flatten())
        {
            let Some(destination) = &live.destination else {
                continue;
            };
            if only.is_some_and(|o| **destination != *o) {
                continue;
            }
            if live.registration.expires_at <= now || !live.wants_device(event) {
                continue;
            }
            if out
                .iter()
                .any(|d| Arc::ptr_eq(d, destination) || **d == **destination)
            {
                continue;
            }
            if live.filter.needs_cel() && cel.is_none() {
                cel = Some(cel_value(event));
            }
            if live.filter.matches(event, cel.as_ref()) {
                out.push(destination.clone());
            }
        }
    }
}

/// The registry's own series.
#[derive(Debug, Clone)]
pub struct RegistryMetrics {
    registrations: Gauge,
    bytes: Gauge,
    disabled: StoredDisabled,
}

impl RegistryMetrics {
    /// Registers the `registrations` gauge; stored registrations loaded
    /// disabled are counted in the store's shared `stored_disabled`.
    pub fn register(
        registry: &mut prometheus_client::registry::Registry,
        disabled: StoredDisabled,
    ) -> Self {
        let registrations = Gauge::default();
        registry.register(
            "registrations",
            "Live forwarding registrations",
            registrations.clone(),
        );
        let bytes = Gauge::default();
        registry.register(
            "registration_bytes",
            "Bytes all enabled registrations keep: stored documents and compiled patterns (bounded by --max-registration-bytes)",
            bytes.clone(),
        );
        Self {
            registrations,
            bytes,
            disabled,
        }
    }
}

/// A registration's stored document, as this node last saw it.
type StoredDoc = Arc<[u8]>;

/// Told of every new snapshot, before it is swapped in.
type ChangeListener = Box<dyn Fn(&Snapshot) + Send + Sync>;

/// The live registrations.
pub struct Registry {
    /// The stored registrations, and the lock that serialises changes, so
    /// a check-then-write (If-Match) is atomic and each snapshot is built
    /// from the last.
    docs: Documents,
    metrics: RegistryMetrics,
    limits: RegistryLimits,
    current: ArcSwap<Snapshot>,
    listener: OnceLock<ChangeListener>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("registrations", &self.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Loads stored registrations, dropping the ones that expired while
    /// the gateway was down.
    pub fn open(
        store: Arc<Store>,
        metrics: RegistryMetrics,
        limits: RegistryLimits,
    ) -> Result<Arc<Self>, RegistryError> {
        let docs = Documents::new(store, Collection::Registrations, &metrics.disabled);
        let (snapshot, expired) = load_snapshot(&docs, &limits, None)?;
        let ids: Vec<&str> = expired.iter().map(String::as_str).collect();
        docs.delete(&ids)?;
        metrics.registrations.set(snapshot.len() as i64);
        metrics.bytes.set(snapshot.bytes as i64);
        tracing::info!(
            live = snapshot.len(),
            expired = expired.len(),
            "registrations loaded"
        );
        Ok(Arc::new(Self {
            docs,
            metrics,
            limits,
            current: ArcSwap::from_pointee(snapshot),
            listener: OnceLock::new(),
        }))
    }

    /// Re-reads every registration from the store and publishes the result
    /// (cluster mode: another node changed one). Registrations whose
    /// stored document did not change keep their compiled filters.
    pub fn reload(&self) -> Result<(), RegistryError> {
        let _w = self.docs.lock();
        self.reload_locked()
    }

    /// [`Registry::reload`], for a caller that holds the write lock.
    fn reload_locked(&self) -> Result<(), RegistryError> {
        let current = self.current.load_full();
        let (next, _) = load_snapshot(&self.docs, &self.limits, Some(&current))?;
        let same = next.by_id.len() == current.by_id.len()
            && next
                .by_id
                .iter()
                .all(|(id, l)| current.by_id.get(id).is_some_and(|c| Arc::ptr_eq(c, l)));
        if !same {
            self.publish(next);
        }
        Ok(())
    }

    /// Calls `listener` with the current snapshot now, then with every
    /// next one before it is swapped in. Only one listener may be set.
    pub fn on_change(&self, listener: impl Fn(&Snapshot) + Send + Sync + 'static) {
        let _w = self.docs.lock();
        listener(&self.current.load());
        if self.listener.set(Box::new(listener)).is_err() {
            panic!("Registry::on_change called twice");
        }
    }

    /// The registrations now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes `next`. Caller holds the write lock.
    fn publish(&self, next: Snapshot) {
        if let Some(listener) = self.listener.get() {
            listener(&next);
        }
        self.metrics.registrations.set(next.len() as i64);
        self.metrics.bytes.set(next.bytes as i64);
        self.current.store(Arc::new(next));
    }

    /// Registrations now, disabled ones included.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let grace = previous_secret_ttl(&req.destination, duration, &self.limits, &mut errors);
        req.destination.validate(&mut errors);
        size::check_destination(&req.destination, &mut errors);
        if let Destination::Sqs(sqs) = &req.destination {
            if sqs.access_key_id.is_none() && !self.limits.sqs_default_credentials {
                errors.push(FieldError::new(
                    "destination.access_key_id",
                    "credentials are required: this gateway does not lend its own AWS identity (--sqs-default-credentials)",
                ));
            }
        }
        // Compiled here to report every error at once, then again (the
        // same work, bounded alike) when committed: callers run this off
        // the async workers.
        if let Err(mut e) = compile_patterns(&req.filter, &device_patterns) {
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
        let mut destination = req.destination;
        destination.rotate_from(previous.map(|p| &p.destination), grace, now);
        Ok(Registration {
            id,
            devices,
            device_patterns,
            destination,
            filter: req.filter,
            metadata: req.metadata,
            duration_secs: duration.as_secs(),
            created_at: previous.map_or(now, |p| p.created_at),
            updated_at: now,
            expires_at: expires,
            version: previous.map_or(1, |p| p.version + 1),
            origin,
            owner: previous.and_then(|p| p.owner.clone()),
            disabled: None,
            gone: None,
        })
    }

    /// Stores and activates a new registration.
    pub fn insert(&self, registration: Registration) -> Result<Registration, RegistryError> {
        let _w = self.docs.lock();
        let replacing = self.current.load().by_id.contains_key(&registration.id);
        if !replacing && self.len() >= self.limits.max_registrations {
            return Err(RegistryError::Full(self.limits.max_registrations));
        }
        self.commit(registration, None)
    }

    /// Replaces a registration (or renews it: a new `expires_at` from now).
    /// With `if_match`, only if its ETag is still that.
    pub fn replace(
        &self,
        id: &str,
        if_match: Option<&str>,
        make: impl FnOnce(&Registration) -> Result<Registration, RegistryError>,
    ) -> Result<Registration, RegistryError> {
        let _w = self.docs.lock();
        let (current, expected) = self.current_if_match(id, if_match)?;
        let next = make(&current)?;
        self.commit(next, expected.as_deref())
    }

    /// The live registration `id`, if `if_match` (when given) is its ETag,
    /// and then the stored document a shared store's write must find.
    /// Caller holds the write lock.
    fn current_if_match(
        &self,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(Registration, Option<StoredDoc>), RegistryError> {
        let current = self
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.into()))?;
        check_if_match(&current, if_match)?;
        let expected = if_match.and_then(|_| self.stored_doc(id));
        Ok((current, expected))
    }

    /// The stored document of a registration, as this node last saw it.
    fn stored_doc(&self, id: &str) -> Option<Arc<[u8]>> {
        self.current
            .load()
            .by_id
            .get(id)
            .map(|l| l.doc.clone())
            .filter(|d| !d.is_empty())
    }

    /// In a shared store, a conditional write that lost to another node's:
    /// this node catches up, and the client is told what the ETag is now.
    /// Caller holds the write lock.
    fn lost_race(&self, id: &str) -> RegistryError {
        if let Err(e) = self.reload_locked() {
            return e;
        }
        match self.current.load().by_id.get(id) {
            Some(l) => RegistryError::PreconditionFailed(l.registration.etag()),
            None => RegistryError::NotFound(id.into()),
        }
    }

    /// Writes to the store (only over `expected`, when given and the store
    /// is shared), then publishes a snapshot with the new entry. Caller
    /// holds the write lock.
    fn commit(
        &self,
        registration: Registration,
        expected: Option<&[u8]>,
    ) -> Result<Registration, RegistryError> {
        let mut live = Live::compile(registration.clone()).map_err(RegistryError::Invalid)?;
        let doc = serde_json::to_vec(&registration).expect("registrations serialise");
        live.doc = Arc::from(doc.as_slice());
        let current = self.current.load();
        let others = current.bytes - current.by_id.get(&registration.id).map_or(0, |l| l.cost());
        if others + live.cost() > self.limits.max_bytes {
            return Err(RegistryError::OverBudget(self.limits.max_bytes));
        }
        drop(current);
        let written = self.docs.put_guarded(
            &registration.id,
            &doc,
            expected,
            Some(registration.expires_at.timestamp_millis()),
        )?;
        if !written {
            return Err(self.lost_race(&registration.id));
        }
        let mut next = Snapshot::clone(&self.current.load());
        next.insert(Arc::new(live));
        self.publish(next);
        Ok(registration)
    }

    /// Turns off every live registration naming `d`, which answered 410
    /// Gone: each is stored with the reason (so it stays off across a
    /// restart) and listed as disabled until replaced. Returns how many.
    pub fn disable_destination(
        &self,
        d: &Destination,
        reason: &str,
    ) -> Result<usize, RegistryError> {
        let _w = self.docs.lock();
        let naming: Vec<Registration> = self
            .current
            .load()
            .by_id
            .values()
            .filter(|l| l.destination.as_deref() == Some(d))
            .map(|l| l.registration.clone())
            .collect();
        let mut next = Snapshot::clone(&self.current.load());
        for mut reg in naming.iter().cloned() {
            reg.gone = Some(format!("the destination answered {reason}"));
            reg.version += 1;
            reg.updated_at = Utc::now();
            let doc = serde_json::to_vec(&reg).expect("registrations serialise");
            self.docs
                .put_guarded(&reg.id, &doc, None, Some(reg.expires_at.timestamp_millis()))?;
            let why = reg.gone.clone().unwrap_or_default();
            let mut live = Live::disabled(reg, why);
            live.doc = Arc::from(doc);
            next.insert(Arc::new(live));
        }
        if !naming.is_empty() {
            self.publish(next);
        }
        Ok(naming.len())
    }

    /// Deletes a registration; with `if_match`, only if its ETag is that.
    pub fn delete(&self, id: &str, if_match: Option<&str>) -> Result<(), RegistryError> {
        let _w = self.docs.lock();
        let (_, expected) = self.current_if_match(id, if_match)?;
        if !self.docs.delete_guarded(id, expected.as_deref())? {
            return Err(self.lost_race(id));
        }
        self.remove_live(&[id.to_owned()]);
        Ok(())
    }

    /// Publishes a snapshot without `ids`. Caller holds the write lock.
    fn remove_live(&self, ids: &[String]) {
        let mut next = Snapshot::clone(&self.current.load());
        for id in ids {
            next.remove(id);
        }
        self.publish(next);
    }

    /// Whether a live registration may want an event for `device` (by its
    /// device list, or one that takes any device): what ingest must make
    /// durable before it answers. Over-approximates: filters are not run.
    pub fn may_match(&self, device: Option<&DeviceId>) -> bool {
        let s = self.current.load();
        !s.any_device.is_empty() || device.is_some_and(|d| s.by_device.contains_key(d))
    }

    /// A live, unexpired registration.
    pub fn get(&self, id: &str) -> Option<Registration> {
        self.current
            .load()
            .by_id
            .get(id)
            .filter(|l| l.registration.expires_at > Utc::now())
            .map(|l| l.registration.clone())
    }

    /// Unexpired registrations after `after` (by id), optionally only those
    /// naming `device`, and only those of `owner`, at most `limit`. Returns
    /// them and whether more follow.
    pub fn list(
        &self,
        device: Option<&DeviceId>,
        owner: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Registration>, bool) {
        let now = Utc::now();
        let index = self.current.load();
        let range = match after {
            Some(a) => index
                .by_id
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => index.by_id.range::<str, _>(..),
        };
        let mut matching = range.map(|(_, l)| &l.registration).filter(|r| {
            r.expires_at > now
                && device.is_none_or(|d| r.devices.iter().any(|x| x == d.as_str()))
                && owner.is_none_or(|o| r.owner.as_deref() == Some(o))
        });
        let page: Vec<Registration> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// Removes expired registrations from the index and the store.
    pub fn sweep(&self, now: DateTime<Utc>) {
        let _w = self.docs.lock();
        let expired: Vec<String> = self
            .current
            .load()
            .by_id
            .values()
            .filter(|l| l.registration.expires_at <= now)
            .map(|l| l.registration.id.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        let ids: Vec<&str> = expired.iter().map(String::as_str).collect();
        if let Err(e) = self.docs.delete(&ids) {
            tracing::error!(error = %e, "expired registrations not removed from the store");
        }
        self.remove_live(&expired);
        tracing::info!(count = expired.len(), "registrations expired");
    }
}

impl Matcher for Registry {
    fn is_empty(&self) -> bool {
        self.current.load().enabled == 0
    }

    fn matching(&self, event: &Event, out: &mut Vec<Arc<Destination>>) {
        self.current.load().matching(event, Utc::now(), out);
    }

    fn wants(&self, event: &Event, d: &Destination) -> bool {
        let mut out = Vec::with_capacity(1);
        self.current
            .load()
            .matching_only(event, Utc::now(), Some(d), &mut out);
        !out.is_empty()
    }

    fn wanted_since(&self, d: &Destination) -> Option<DateTime<Utc>> {
        self.current
            .load()
            .by_id
            .values()
            .filter(|l| l.destination.as_deref() == Some(d))
            .map(|l| l.registration.updated_at)
            .min()
    }
}

/// Every unexpired stored registration, compiled (or disabled, with the
/// reason); and the ids of the expired ones. An entry whose document is
/// unchanged from `previous` is kept as it was, compiled filters and all.
fn load_snapshot(
    docs: &Documents,
    limits: &RegistryLimits,
    previous: Option<&Snapshot>,
) -> Result<(Snapshot, Vec<String>), RegistryError> {
    let over_budget =
        |snapshot: &Snapshot, live: &Live| snapshot.bytes + live.cost() > limits.max_bytes;
    let budget_reason = || {
        format!(
            "past the {} bytes all registrations may keep (--max-registration-bytes)",
            limits.max_bytes
        )
    };
    let now = Utc::now();
    let mut expired = Vec::new();
    let mut snapshot = Snapshot::default();
    for stored in docs.load::<Registration>()? {
        let (id, doc, reg) = (stored.key, stored.raw, stored.value);
        if let Some(kept) = previous
            .and_then(|p| p.by_id.get(&id))
            .filter(|l| *l.doc == *doc)
        {
            if kept.registration.expires_at <= now {
                expired.push(id);
            } else if over_budget(&snapshot, kept) {
                let reason = budget_reason();
                docs.loaded_disabled(&id, &reason);
                let mut live = Live::disabled(kept.registration.clone(), reason);
                live.doc = kept.doc.clone();
                snapshot.insert(Arc::new(live));
            } else {
                snapshot.insert(kept.clone());
            }
            continue;
        }
        if reg.expires_at <= now {
            expired.push(id);
            continue;
        }
        if let Some(reason) = reg.gone.clone() {
            let mut live = Live::disabled(reg, reason);
            live.doc = Arc::from(doc);
            snapshot.insert(Arc::new(live));
            continue;
        }
        let checked = Live::compile(reg.clone())
            .map_err(|errors| crate::validation::describe(&errors))
            .and_then(|mut live| {
                live.doc = Arc::from(doc.as_slice());
                if over_budget(&snapshot, &live) {
                    Err(budget_reason())
                } else {
                    Ok(live)
                }
            });
        let mut live = match checked {
            Ok(live) => live,
            Err(reason) => {
                docs.loaded_disabled(&id, &reason);
                Live::disabled(reg, reason)
            }
        };
        live.doc = Arc::from(doc);
        snapshot.insert(Arc::new(live));
    }
    Ok((snapshot, expired))
}

/// A webhook destination's `previous_secret_ttl`, if given: a duration
/// like `duration`, and at most the registration's (`duration`, its life
/// from this request on), so the old secret never outlives it. Longer is
/// refused (422) rather than cut: a grace period shorter than asked for
/// would surprise a receiver still on the old secret.
fn previous_secret_ttl(
    destination: &Destination,
    duration: Duration,
    limits: &RegistryLimits,
    errors: &mut Vec<FieldError>,
) -> Option<Duration> {
    let Destination::Http(h) = destination else {
        return None;
    };
    let ttl = h.previous_secret_ttl.as_ref()?;
    let refuse = |errors: &mut Vec<FieldError>, m: String| {
        errors.push(FieldError::new("destination.previous_secret_ttl", m));
        None
    };
    match duration::parse(ttl, limits.max_duration) {
        // An invalid `duration` is reported already (and is zero here).
        Ok(d) if d > duration && !duration.is_zero() => refuse(
            errors,
            format!(
                "{} is longer than the registration's duration ({}): the old secret may not outlive it",
                humantime::format_duration(d),
                humantime::format_duration(duration)
            ),
        ),
        Ok(d) => Some(d),
        Err(m) => refuse(errors, m),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event;
    use crate::forward::destination::{BodyFormat, HttpDestination};
    use crate::sync::lock;
    use std::sync::Mutex;

    fn registration(id: &str, device: &str, url: &str, expression: Option<&str>) -> Registration {
        let now = Utc::now();
        let filter: filter::FilterSpec = serde_json::from_value(match expression {
            Some(e) => serde_json::json!({ "expression": e }),
            None => serde_json::json!({}),
        })
        .unwrap();
        Registration {
            id: id.into(),
            devices: vec![device.into()],
            device_patterns: Vec::new(),
            destination: Destination::Http(HttpDestination {
                url: url.into(),
                secret: None,
                headers: Default::default(),
                content_type: BodyFormat::Json,
                failure_url: None,
                previous_secret_ttl: None,
                previous_secret: None,
            }),
            filter,
            metadata: Default::default(),
            duration_secs: 60,
            created_at: now,
            updated_at: now,
            expires_at: now + chrono::Duration::seconds(60),
            owner: None,
            version: 1,
            origin: Origin::Api,
            disabled: None,
            gone: None,
        }
    }

    fn urls(s: &Snapshot, device: &str) -> Vec<String> {
        let mut out = Vec::new();
        s.matching(&test_event(1, Some(device), None), Utc::now(), &mut out);
        out.iter()
            .map(|d| match &**d {
                Destination::Http(h) => h.url.clone(),
                Destination::Sqs(q) => q.queue_url.clone(),
            })
            .collect()
    }

    #[test]
    fn a_snapshot_matches_each_destination_once_and_never_a_disabled_one() {
        let mut s = Snapshot::default();
        for (id, url) in [
            ("a", "http://x.example/1"),
            ("b", "http://x.example/1"),
            ("c", "http://x.example/2"),
        ] {
            s.insert(Arc::new(
                Live::compile(registration(id, "dev-1", url, None)).unwrap(),
            ));
        }
        s.insert(Arc::new(Live::disabled(
            registration("d", "dev-1", "http://x.example/3", None),
            "test".into(),
        )));
        assert_eq!(
            urls(&s, "dev-1"),
            ["http://x.example/1", "http://x.example/2"]
        );
        assert!(urls(&s, "dev-2").is_empty());
        assert_eq!((s.len(), s.enabled), (4, 3));
        assert_eq!(s.destinations().count(), 3, "the disabled one names none");
        s.remove("c");
        assert_eq!(urls(&s, "dev-1"), ["http://x.example/1"]);
        s.remove("d");
        assert_eq!((s.len(), s.enabled), (2, 2));
    }

    #[test]
    fn a_published_snapshot_is_never_changed_by_later_writes() {
        let dir = std::env::temp_dir().join(format!("rt-reg-{}", uuid::Uuid::new_v4().simple()));
        let store = Arc::new(Store::open(crate::state::store::StoreKind::Memory, &dir).unwrap());
        let registry = Registry::open(
            store,
            RegistryMetrics::register(&mut Default::default(), StoredDisabled::default()),
            RegistryLimits {
                max_duration: Duration::from_secs(3600),
                max_registrations: 10,
                max_bytes: 1 << 20,
                sqs_default_credentials: false,
            },
        )
        .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        registry.on_change(move |s| lock(&s2).push(s.len()));
        let before = registry.snapshot();
        registry
            .insert(registration(
                "a",
                "dev-1",
                "http://x.example/1",
                Some("event.type == 'x'"),
            ))
            .unwrap();
        assert_eq!(before.len(), 0, "a reader's snapshot stays as it was");
        assert_eq!(registry.snapshot().len(), 1);
        registry.delete("a", None).unwrap();
        assert_eq!(*lock(&seen), [0, 1, 0], "the listener hears every snapshot");
    }
}
