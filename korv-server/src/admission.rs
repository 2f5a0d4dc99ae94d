//! Admission before authentication: which new connections get one of the
//! server's unauthenticated places, which are refused, and which sources
//! are made to wait.
//!
//! Everything a connection does before it authenticates costs the server
//! and proves nothing, so the places are shared out by source (an IPv4
//! address, or an IPv6 /64: the block one host usually gets) under four
//! rules, applied at accept:
//!
//! 1. **Penalties.** A source whose connections end without authenticating
//!    (closed before sending an SSH version, ended without authenticating,
//!    or past a deadline) runs up a debt of time, one penalty unit per such
//!    connection, draining in real time. When the debt exceeds three times
//!    `penalty_base` (or reaches `penalty_max`, if that is less), its new
//!    connections are refused until the debt has drained. Each penalty
//!    doubles the source's unit (so a persistent source is refused for
//!    longer each time, up to `penalty_max`); the unit halves back for each
//!    `penalty_max` without offence. A source
//!    that authenticates has its debt cleared. Only the source's own
//!    connections count against it.
//! 2. **Per source.** A source may hold `max_unauthenticated_per_source`
//!    places at once; beyond it, its new connections are refused.
//! 3. **When every place is taken**, the newcomer takes the place of the
//!    oldest connection that has not yet sent its SSH version line and
//!    whose source holds at least as many places as the newcomer's will.
//!    A client sends its version as soon as it connects, so such a
//!    connection is almost always an idle or a hostile one. Failing that,
//!    it takes the place of the oldest connection of the source holding
//!    the most places, if that source holds more than the newcomer's will.
//!    A newcomer never evicts a connection of its own source: a source
//!    cannot cycle through places to keep them.
//! 4. Otherwise the newcomer is refused.
//!
//! Networks in `exempt_networks` skip rules 1 and 2 (their connections
//! still take places and may be evicted).
//!
//! Random early drop (OpenSSH's `MaxStartups start:rate:full`) was not
//! chosen: it only slows down an attacker who fills the places with
//! connections that stay silent, and once they are full it refuses
//! everyone, the prompt client included. Eviction instead always leaves a
//! place to a client that sends its version promptly while some of the
//! holders have not, and is deterministic.
//!
//! [`Table`] is the policy as plain state, with time passed in, so that its
//! tests need no clock; [`Admission`] wraps it in a mutex, reads the clock
//! and logs; [`Slot`] is a connection's place, released when it is dropped.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Limits;
use crate::ipnet::IpNet;

/// Sources whose penalty history is kept, at most (about 100 bytes each).
/// Beyond it, new offenders are not tracked until old entries expire: the
/// per-source and global limits still hold for them.
const MAX_TRACKED_SOURCES: usize = 16_384;
/// Debt, in `penalty_base`s, a source may carry and still connect.
const ALLOWANCE: u32 = 3;
/// Doublings of a source's penalty unit, at most.
const MAX_LEVEL: u32 = 20;
/// Time between two log lines about one kind of event, at least.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Time between two sweeps of the penalty table, at least.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest penalty, whatever `penalty_max` says (so that instants
/// computed from it cannot overflow).
const LONGEST_PENALTY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where connections come from, as far as limits and penalties go: an IPv4
/// address, or the /64 of an IPv6 address. An IPv4-mapped IPv6 address is
/// its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(IpAddr);

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(a) => Source(IpAddr::V4(a)),
            IpAddr::V6(a) => {
                let prefix = u128::from(a) & !u128::from(u64::MAX);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// Why a new connection was closed before its SSH handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// `max_connections` connections are open.
    ConnectionLimit,
    /// The source is serving a penalty.
    Penalised,
    /// The source holds `max_unauthenticated_per_source` places.
    PerSource,
    /// Every place is taken and none could be freed for this source.
    Full,
}

impl Denied {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Denied::ConnectionLimit => "connection limit reached",
            Denied::Penalised => "source penalised",
            Denied::PerSource => "source at its unauthenticated limit",
            Denied::Full => "unauthenticated limit reached",
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a connection that never authenticated ended, each an offence of its
/// source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offence {
    /// It sent no SSH version line before it closed or its deadline passed.
    NoVersion,
    /// It sent its version, and its deadline passed.
    AuthDeadline,
    /// It sent its version and closed without authenticating.
    AuthFailed,
}

impl Offence {
    fn as_str(self) -> &'static str {
        match self {
            Offence::NoVersion => "no SSH version",
            Offence::AuthDeadline => "authentication deadline passed",
            Offence::AuthFailed => "closed without authenticating",
        }
    }
}

/// What admission has done since the server started, and what it holds now:
/// for logs, tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdmissionStats {
    /// Connections holding an unauthenticated place now.
    pub unauthenticated: usize,
    /// Sources holding at least one place now.
    pub sources: usize,
    /// Sources whose new connections are refused now, for a penalty.
    pub penalised_sources: usize,
    /// Sources with a penalty history kept (bounded).
    pub tracked_sources: usize,
    /// Connections refused at `max_connections`.
    pub refused_connection_limit: u64,
    /// Connections refused because their source was serving a penalty.
    pub refused_penalised: u64,
    /// Connections refused at their source's limit.
    pub refused_per_source: u64,
    /// Connections refused because every place was taken.
    pub refused_full: u64,
    /// Connections closed to make room for a newcomer.
    pub evicted: u64,
    /// Connections that authenticated.
    pub authenticated: u64,
    /// Connections that ended without sending an SSH version.
    pub no_version: u64,
    /// Connections that sent their version and passed the deadline.
    pub auth_deadline: u64,
    /// Connections that sent their version and closed without authenticating.
    pub auth_failed: u64,
    /// Penalties started.
    pub penalties: u64,
}

/// The admission settings, from [`Limits`].
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    max_unauthenticated: usize,
    max_per_source: usize,
    penalty_base: Duration,
    penalty_max: Duration,
    exempt: Vec<IpNet>,
    log_interval: Duration,
}

impl Policy {
    pub(crate) fn new(limits: &Limits) -> Policy {
        Policy {
            max_unauthenticated: limits.max_unauthenticated,
            max_per_source: limits.max_unauthenticated_per_source,
            penalty_base: limits.penalty_base.min(LONGEST_PENALTY),
            penalty_max: limits
                .penalty_max
                .max(limits.penalty_base)
                .min(LONGEST_PENALTY),
            exempt: limits.exempt_networks.clone(),
            log_interval: LOG_INTERVAL,
        }
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|net| net.contains(ip))
    }
}

/// One connection's place.
#[derive(Debug)]
struct Place {
    source: Source,
    exempt: bool,
    /// Its SSH version line has arrived.
    version: bool,
    /// A deadline passed.
    deadline: bool,
    /// Closed by the server for a reason of its own (shutdown): no offence.
    spared: bool,
    /// Cancelled when the place is given to a newcomer.
    evict: CancellationToken,
}

/// A place given to a new connection.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) id: u64,
    pub(crate) evict: CancellationToken,
    /// The source of the connection evicted to make room, if any.
    pub(crate) evicted: Option<Source>,
}

/// A connection that ended without authenticating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ended {
    pub(crate) source: Source,
    pub(crate) offence: Offence,
    /// The penalty this offence started, if it started one.
    pub(crate) penalty: Option<Duration>,
}

/// The admission state: places, counts per source, penalties, counters.
/// Every method takes the time from its caller.
#[derive(Debug)]
pub(crate) struct Table {
    policy: Policy,
    next_id: u64,
    /// By id, so in the order they were given.
    places: BTreeMap<u64, Place>,
    /// Places held per source; a source holding none has no entry.
    held: HashMap<Source, usize>,
    penalties: Penalties,
    log: EventLog,
    stats: AdmissionStats,
}

impl Table {
    pub(crate) fn new(policy: Policy) -> Table {
        Table {
            penalties: Penalties::new(policy.penalty_base, policy.penalty_max),
            log: EventLog::new(policy.log_interval),
            policy,
            next_id: 0,
            places: BTreeMap::new(),
            held: HashMap::new(),
            stats: AdmissionStats::default(),
        }
    }

    /// Gives a place to a new connection from `ip`, evicting another if the
    /// rules allow it, or says why not.
    pub(crate) fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<Admitted, Denied> {
        let source = Source::of(ip);
        let exempt = self.policy.is_exempt(ip);
        if !exempt && self.penalties.is_blocked(source, now) {
            return Err(self.refused(Denied::Penalised));
        }
        let held = self.held(source);
        if !exempt && held >= self.policy.max_per_source {
            return Err(self.refused(Denied::PerSource));
        }
        let mut evicted = None;
        if self.places.len() >= self.policy.max_unauthenticated {
            let Some(victim) = self.victim(source, held) else {
                return Err(self.refused(Denied::Full));
            };
            if let Some(place) = self.remove(victim) {
                place.evict.cancel();
                self.stats.evicted += 1;
                evicted = Some(place.source);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let evict = CancellationToken::new();
        self.places.insert(
            id,
            Place {
                source,
                exempt,
                version: false,
                deadline: false,
                spared: false,
                evict: evict.clone(),
            },
        );
        *self.held.entry(source).or_insert(0) += 1;
        Ok(Admitted { id, evict, evicted })
    }

    /// Counts a refusal made by the caller (the connection limit).
    pub(crate) fn refused(&mut self, refusal: Denied) -> Denied {
        let counter = match refusal {
            Denied::ConnectionLimit => &mut self.stats.refused_connection_limit,
            Denied::Penalised => &mut self.stats.refused_penalised,
            Denied::PerSource => &mut self.stats.refused_per_source,
            Denied::Full => &mut self.stats.refused_full,
        };
        *counter += 1;
        refusal
    }

    fn held(&self, source: Source) -> usize {
        self.held.get(&source).copied().unwrap_or(0)
    }

    /// The place a newcomer from `source`, which holds `held` places, may
    /// take when all are taken (rule 3 of the module documentation).
    fn victim(&self, source: Source, held: usize) -> Option<u64> {
        let after = held + 1;
        let silent = self.places.iter().find(|(_, place)| {
            !place.version && place.source != source && self.held(place.source) >= after
        });
        if let Some((id, _)) = silent {
            return Some(*id);
        }
        let most = self
            .held
            .iter()
            .filter(|(other, _)| **other != source)
            .map(|(_, n)| *n)
            .max()?;
        if most <= after {
            return None;
        }
        // Of the sources holding the most, the one with the oldest place.
        self.places
            .iter()
            .find(|(_, place)| place.source != source && self.held(place.source) == most)
            .map(|(id, _)| *id)
    }

    fn remove(&mut self, id: u64) -> Option<Place> {
        let place = self.places.remove(&id)?;
        if let Some(n) = self.held.get_mut(&place.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held.remove(&place.source);
            }
        }
        Some(place)
    }

    fn mark(&mut self, id: u64, mark: impl FnOnce(&mut Place)) {
        if let Some(place) = self.places.get_mut(&id) {
            mark(place);
        }
    }

    pub(crate) fn version_received(&mut self, id: u64) {
        self.mark(id, |place| place.version = true);
    }

    pub(crate) fn deadline_passed(&mut self, id: u64) {
        self.mark(id, |place| place.deadline = true);
    }

    pub(crate) fn spare(&mut self, id: u64) {
        self.mark(id, |place| place.spared = true);
    }

    /// The connection authenticated: its place is free, its source's debt
    /// cleared.
    pub(crate) fn authenticated(&mut self, id: u64, now: Instant) {
        if let Some(place) = self.remove(id) {
            self.stats.authenticated += 1;
            if !place.exempt {
                self.penalties.forgive(place.source, now);
            }
        }
    }

    /// The connection ended: frees its place (if it still holds one) and
    /// returns its offence, if it was one.
    pub(crate) fn release(&mut self, id: u64, now: Instant) -> Option<Ended> {
        let place = self.remove(id)?;
        if place.spared {
            return None;
        }
        let offence = match (place.version, place.deadline) {
            (false, _) => Offence::NoVersion,
            (true, true) => Offence::AuthDeadline,
            (true, false) => Offence::AuthFailed,
        };
        *match offence {
            Offence::NoVersion => &mut self.stats.no_version,
            Offence::AuthDeadline => &mut self.stats.auth_deadline,
            Offence::AuthFailed => &mut self.stats.auth_failed,
        } += 1;
        let penalty = if place.exempt {
            None
        } else {
            self.penalties.offend(place.source, now)
        };
        if penalty.is_some() {
            self.stats.penalties += 1;
        }
        Some(Ended {
            source: place.source,
            offence,
            penalty,
        })
    }

    /// Whether a line should be logged for `event` now, and if so how many
    /// such events it reports.
    pub(crate) fn log(&mut self, event: Event, now: Instant) -> Option<u64> {
        self.log.note(event, now)
    }

    pub(crate) fn stats(&self, now: Instant) -> AdmissionStats {
        AdmissionStats {
            unauthenticated: self.places.len(),
            sources: self.held.len(),
            penalised_sources: self.penalties.blocked_count(now),
            tracked_sources: self.penalties.sources.len(),
            ..self.stats.clone()
        }
    }

    /// The counts per source agree with the places (tests).
    #[cfg(test)]
    fn check(&self) {
        let mut counted: HashMap<Source, usize> = HashMap::new();
        for place in self.places.values() {
            *counted.entry(place.source).or_default() += 1;
        }
        assert_eq!(counted, self.held);
        assert!(self.places.len() <= self.policy.max_unauthenticated);
        assert!(self.penalties.sources.len() <= MAX_TRACKED_SOURCES);
    }
}

/// One source's penalty record.
#[derive(Debug, Clone)]
struct Penalty {
    /// When the source's debt will have drained.
    drained_at: Instant,
    /// Refused until then.
    blocked_until: Option<Instant>,
    /// Doublings of the penalty unit.
    level: u32,
    /// Since when `level` decays.
    level_since: Instant,
}

impl Penalty {
    fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }

    /// `level` after its decay up to `now`: one doubling fewer per `max`.
    fn level(&self, now: Instant, max: Duration) -> u32 {
        let elapsed = now.saturating_duration_since(self.level_since);
        let steps = elapsed.as_nanos() / max.as_nanos().max(1);
        self.level
            .saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
    }
}

/// Penalty records by source, bounded in number.
#[derive(Debug)]
struct Penalties {
    base: Duration,
    max: Duration,
    sources: HashMap<Source, Penalty>,
    last_prune: Option<Instant>,
}

impl Penalties {
    fn new(base: Duration, max: Duration) -> Penalties {
        Penalties {
            base,
            max,
            sources: HashMap::new(),
            last_prune: None,
        }
    }

    fn is_blocked(&self, source: Source, now: Instant) -> bool {
        self.sources.get(&source).is_some_and(|p| p.blocked(now))
    }

    fn blocked_count(&self, now: Instant) -> usize {
        self.sources.values().filter(|p| p.blocked(now)).count()
    }

    /// Adds an offence to `source`'s debt; returns the penalty it starts.
    fn offend(&mut self, source: Source, now: Instant) -> Option<Duration> {
        if self.base.is_zero() {
            return None;
        }
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_TRACKED_SOURCES {
            self.prune(now);
            if self.sources.len() >= MAX_TRACKED_SOURCES {
                return None;
            }
        }
        let (base, max) = (self.base, self.max);
        let penalty = self.sources.entry(source).or_insert(Penalty {
            drained_at: now,
            blocked_until: None,
            level: 0,
            level_since: now,
        });
        let blocked = penalty.blocked(now);
        if !blocked {
            penalty.blocked_until = None;
            penalty.level = penalty.level(now, max);
            penalty.level_since = now;
        }
        let unit = base.saturating_mul(1 << penalty.level).min(max);
        penalty.drained_at = (penalty.drained_at.max(now) + unit).min(now + max);
        if blocked {
            // A connection opened before the penalty: it lengthens it.
            penalty.blocked_until = Some(penalty.drained_at);
            penalty.level_since = penalty.drained_at;
            return None;
        }
        let debt = penalty.drained_at - now;
        // Past the allowance, or at the cap (which may be under it).
        if debt <= base.saturating_mul(ALLOWANCE) && debt < max {
            return None;
        }
        penalty.blocked_until = Some(penalty.drained_at);
        penalty.level = (penalty.level + 1).min(MAX_LEVEL);
        penalty.level_since = penalty.drained_at;
        Some(debt)
    }

    /// A connection from `source` authenticated: its debt is cleared, and
    /// the record dropped when nothing else is left in it.
    fn forgive(&mut self, source: Source, now: Instant) {
        let Some(penalty) = self.sources.get_mut(&source) else {
            return;
        };
        if penalty.blocked(now) {
            return;
        }
        penalty.drained_at = now;
        penalty.blocked_until = None;
        if penalty.level(now, self.max) == 0 {
            self.sources.remove(&source);
        }
    }

    /// Drops records with no debt, no penalty and no doubling left; at most
    /// once per [`PRUNE_INTERVAL`], as it reads every record.
    fn prune(&mut self, now: Instant) {
        if self
            .last_prune
            .is_some_and(|last| now.saturating_duration_since(last) < PRUNE_INTERVAL)
        {
            return;
        }
        self.last_prune = Some(now);
        let max = self.max;
        self.sources
            .retain(|_, p| p.blocked(now) || p.drained_at > now || p.level(now, max) > 0);
    }
}

/// What gets a (rate-limited) log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Refused(Denied),
    Evicted,
    PenaltyStarted,
}

impl Event {
    const COUNT: usize = 6;

    fn index(self) -> usize {
        match self {
            Event::Refused(Denied::ConnectionLimit) => 0,
            Event::Refused(Denied::Penalised) => 1,
            Event::Refused(Denied::PerSource) => 2,
            Event::Refused(Denied::Full) => 3,
            Event::Evicted => 4,
            Event::PenaltyStarted => 5,
        }
    }
}

/// At most one log line per kind of event per interval; each line says how
/// many events of its kind happened since the previous one.
#[derive(Debug)]
struct EventLog {
    interval: Duration,
    /// Per kind: events not yet reported, and when the last line was logged.
    kinds: [(u64, Option<Instant>); Event::COUNT],
}

impl EventLog {
    fn new(interval: Duration) -> EventLog {
        EventLog {
            interval,
            kinds: [(0, None); Event::COUNT],
        }
    }

    fn note(&mut self, event: Event, now: Instant) -> Option<u64> {
        let (unreported, last) = &mut self.kinds[event.index()];
        *unreported += 1;
        if last.is_some_and(|last| now.saturating_duration_since(last) < self.interval) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(unreported))
    }
}

/// The admission table behind a mutex, with the clock and the logging.
#[derive(Debug)]
pub(crate) struct Admission {
    table: Mutex<Table>,
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Arc<Admission> {
        Arc::new(Admission {
            table: Mutex::new(Table::new(Policy::new(limits))),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent across a panic elsewhere: every method
        // updates the places and the counts together, without panicking.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection from `peer`, or why not (logged).
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Denied> {
        let now = Instant::now();
        let mut table = self.lock();
        match table.admit(peer, now) {
            Ok(admitted) => {
                let evicted = admitted
                    .evicted
                    .and_then(|victim| Some((victim, table.log(Event::Evicted, now)?)));
                drop(table);
                if let Some((victim, count)) = evicted {
                    info!(
                        evicted_source = %victim,
                        %peer,
                        count,
                        "every unauthenticated place taken: closed an older connection, from \
                         a source holding at least as many, to admit a newcomer (count: since \
                         the last such line)"
                    );
                }
                Ok(Slot {
                    admission: Arc::clone(self),
                    id: admitted.id,
                    evict: admitted.evict,
                })
            }
            Err(refusal) => {
                let count = table.log(Event::Refused(refusal), now);
                drop(table);
                log_refusal(refusal, peer, count);
                Err(refusal)
            }
        }
    }

    /// Counts and logs a refusal decided elsewhere (the connection limit).
    pub(crate) fn refuse(&self, refusal: Denied, peer: IpAddr) {
        let now = Instant::now();
        let mut table = self.lock();
        table.refused(refusal);
        let count = table.log(Event::Refused(refusal), now);
        drop(table);
        log_refusal(refusal, peer, count);
    }

    pub(crate) fn stats(&self) -> AdmissionStats {
        self.lock().stats(Instant::now())
    }
}

/// Reads a running server's [`AdmissionStats`]; from
/// [`BoundServer::admission_monitor`](crate::BoundServer::admission_monitor).
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdmissionMonitor {
    admission: Arc<Admission>,
}

impl AdmissionMonitor {
    pub(crate) fn new(admission: &Arc<Admission>) -> AdmissionMonitor {
        AdmissionMonitor {
            admission: Arc::clone(admission),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> AdmissionStats {
        self.admission.stats()
    }
}

fn log_refusal(refusal: Denied, peer: IpAddr, count: Option<u64>) {
    if let Some(count) = count {
        warn!(
            %peer,
            reason = refusal.as_str(),
            count,
            "connection refused before the SSH handshake (count: refusals for this reason \
             since the last such line)"
        );
    }
}

/// A connection's unauthenticated place. Dropping it frees the place (if
/// the connection has not authenticated already) and records how the
/// connection ended.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    id: u64,
    evict: CancellationToken,
}

impl Slot {
    /// Cancelled when the place is given to a newcomer: the connection
    /// should close.
    pub(crate) fn evicted(&self) -> &CancellationToken {
        &self.evict
    }

    /// The connection's SSH version line has arrived.
    pub(crate) fn version_received(&self) {
        self.admission.lock().version_received(self.id);
    }

    /// A deadline passed: the connection is being closed.
    pub(crate) fn deadline_passed(&self) {
        self.admission.lock().deadline_passed(self.id);
    }

    /// The server is closing the connection for a reason of its own
    /// (shutdown): no offence.
    pub(crate) fn spare(&self) {
        self.admission.lock().spare(self.id);
    }

    /// The connection authenticated: its place is free now.
    pub(crate) fn authenticated(&self) {
        self.admission.lock().authenticated(self.id, Instant::now());
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut table = self.admission.lock();
        let Some(ended) = table.release(self.id, now) else {
            return;
        };
        let logged = ended
            .penalty
            .and_then(|penalty| Some((penalty, table.log(Event::PenaltyStarted, now)?)));
        drop(table);
        debug!(source = %ended.source, offence = ended.offence.as_str(), "unauthenticated connection ended");
        if let Some((penalty, count)) = logged {
            warn!(
                source = %ended.source,
                offence = ended.offence.as_str(),
                ?penalty,
                count,
                "source penalised: its new connections are refused for a while \
                 (count: penalties since the last such line)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn policy(max: usize, per_source: usize) -> Policy {
        Policy {
            max_unauthenticated: max,
            max_per_source: per_source,
            penalty_base: Duration::from_secs(1),
            penalty_max: Duration::from_secs(60),
            exempt: Vec::new(),
            log_interval: Duration::from_secs(10),
        }
    }

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")),
            Source::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:10.0.0.1")),
            Source::of(ip("10.0.0.1"))
        );
        assert_eq!(Source::of(ip("2001:db8::7")).to_string(), "2001:db8::/64");
        assert_eq!(Source::of(ip("10.0.0.1")).to_string(), "10.0.0.1");
    }

    #[test]
    fn a_source_is_refused_beyond_its_limit_and_admitted_again_when_one_ends() {
        let now = Instant::now();
        let mut table = Table::new(policy(64, 3));
        let ids: Vec<u64> = (0..3)
            .map(|_| table.admit(ip("10.0.0.1"), now).unwrap().id)
            .collect();
        assert_eq!(
            table.admit(ip("10.0.0.1"), now).unwrap_err(),
            Denied::PerSource
        );
        // Another source, even an IPv6 one, is not affected.
        table.admit(ip("10.0.0.2"), now).unwrap();
        table.admit(ip("2001:db8::1"), now).unwrap();
        table.spare(ids[0]);
        assert_eq!(table.release(ids[0], now), None, "spared: no offence");
        table.admit(ip("10.0.0.1"), now).unwrap();
        table.check();
        assert_eq!(table.stats(now).refused_per_source, 1);
        assert_eq!(table.stats(now).unauthenticated, 5);
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_its_limit() {
        let now = Instant::now();
        let mut table = Table::new(policy(64, 2));
        table.admit(ip("2001:db8::1"), now).unwrap();
        table.admit(ip("2001:db8::ffff:2"), now).unwrap();
        assert_eq!(
            table.admit(ip("2001:db8::3"), now).unwrap_err(),
            Denied::PerSource
        );
        table.admit(ip("2001:db8:0:1::3"), now).unwrap();
    }

    #[test]
    fn when_full_a_newcomer_takes_the_place_of_the_oldest_silent_connection() {
        let now = Instant::now();
        let mut table = Table::new(policy(4, 4));
        let a: Vec<Admitted> = (0..4)
            .map(|_| table.admit(ip("10.0.0.1"), now).unwrap())
            .collect();
        table.version_received(a[0].id);
        let fresh = table.admit(ip("10.0.0.9"), now).unwrap();
        // a[0] sent its version: a[1] is the oldest silent one.
        assert_eq!(fresh.evicted, Some(Source::of(ip("10.0.0.1"))));
        assert!(a[1].evict.is_cancelled());
        assert!(!a[0].evict.is_cancelled() && !a[2].evict.is_cancelled());
        // The evicted connection's end is no offence: its place is gone already.
        assert_eq!(table.release(a[1].id, now), None);
        table.check();
        assert_eq!(table.stats(now).evicted, 1);
        assert_eq!(table.stats(now).unauthenticated, 4);
    }

    #[test]
    fn a_newcomer_never_evicts_its_own_source() {
        let now = Instant::now();
        let mut table = Table::new(policy(4, 8));
        for _ in 0..4 {
            table.admit(ip("10.0.0.1"), now).unwrap();
        }
        assert_eq!(table.admit(ip("10.0.0.1"), now).unwrap_err(), Denied::Full);
        table.check();
    }

    #[test]
    fn a_source_cannot_evict_a_lighter_one() {
        let now = Instant::now();
        let mut table = Table::new(policy(4, 8));
        // Two sources of two silent connections each: a third connection of
        // either would leave it heavier than the other, so it is refused.
        for source in ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"] {
            table.admit(ip(source), now).unwrap();
        }
        assert_eq!(table.admit(ip("10.0.0.1"), now).unwrap_err(), Denied::Full);
        assert_eq!(table.admit(ip("10.0.0.2"), now).unwrap_err(), Denied::Full);
        // A new source evicts the oldest silent one.
        let fresh = table.admit(ip("10.0.0.3"), now).unwrap();
        assert_eq!(fresh.evicted, Some(Source::of(ip("10.0.0.1"))));
        table.check();
    }

    #[test]
    fn connections_that_sent_their_version_are_evicted_only_from_a_heavier_source() {
        let now = Instant::now();
        let mut table = Table::new(policy(4, 8));
        let mut ids = Vec::new();
        for source in ["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2"] {
            let admitted = table.admit(ip(source), now).unwrap();
            table.version_received(admitted.id);
            ids.push(admitted);
        }
        // 10.0.0.2 (1 place, 2 after) evicts 10.0.0.1's oldest (3 places).
        let second = table.admit(ip("10.0.0.2"), now).unwrap();
        assert_eq!(second.evicted, Some(Source::of(ip("10.0.0.1"))));
        assert!(ids[0].evict.is_cancelled());
        table.version_received(second.id);
        // Now 2 and 2: a third from 10.0.0.2 would make it the heavier.
        assert_eq!(table.admit(ip("10.0.0.2"), now).unwrap_err(), Denied::Full);
        // A new source evicts from the heaviest (2 places > 1), oldest first.
        let third = table.admit(ip("10.0.0.3"), now).unwrap();
        assert_eq!(third.evicted, Some(Source::of(ip("10.0.0.1"))));
        assert!(ids[1].evict.is_cancelled());
        table.check();
    }

    #[test]
    fn a_prompt_client_is_admitted_among_dozens_of_silent_sources_holding_every_place() {
        let now = Instant::now();
        let mut table = Table::new(policy(64, 8));
        for round in 0..12 {
            for source in 0..36 {
                let attacker = IpAddr::from([10, 1, 0, source]);
                match table.admit(attacker, now + round * MS) {
                    Ok(_) | Err(Denied::Full) => {}
                    Err(other) => panic!("{other}"),
                }
            }
        }
        // The sources evicted each other's oldest connections: the places
        // are shared out evenly (64 among 36: one or two each).
        assert_eq!(table.stats(now).unauthenticated, 64);
        assert!(table.stats(now).evicted >= 12 * 36 - 64 - 36);
        assert!(
            table.held.values().all(|n| (1..=2).contains(n)),
            "{:?}",
            table.held
        );
        for attempt in 0..5 {
            let legit = table
                .admit(IpAddr::from([10, 2, 0, attempt]), now + S)
                .unwrap();
            table.version_received(legit.id);
            assert!(legit.evicted.is_some());
        }
        table.check();
    }

    #[test]
    fn when_full_of_connections_that_sent_their_version_from_equal_sources_newcomers_are_refused() {
        let now = Instant::now();
        let mut table = Table::new(policy(4, 8));
        for n in 0..4u8 {
            let admitted = table.admit(IpAddr::from([10, 0, 0, n]), now).unwrap();
            table.version_received(admitted.id);
        }
        assert_eq!(table.admit(ip("10.0.0.9"), now).unwrap_err(), Denied::Full);
        assert_eq!(table.stats(now).refused_full, 1);
    }

    #[test]
    fn outcomes_are_offences_by_what_the_connection_did() {
        let now = Instant::now();
        let mut table = Table::new(Policy {
            penalty_base: Duration::ZERO,
            ..policy(64, 64)
        });
        let silent = table.admit(ip("10.0.0.1"), now).unwrap().id;
        let slow = table.admit(ip("10.0.0.1"), now).unwrap().id;
        let failed = table.admit(ip("10.0.0.1"), now).unwrap().id;
        let good = table.admit(ip("10.0.0.1"), now).unwrap().id;
        table.version_received(slow);
        table.deadline_passed(slow);
        table.version_received(failed);
        table.version_received(good);
        table.authenticated(good, now);
        let offence = |table: &mut Table, id| table.release(id, now).map(|e| e.offence);
        assert_eq!(offence(&mut table, silent), Some(Offence::NoVersion));
        assert_eq!(offence(&mut table, slow), Some(Offence::AuthDeadline));
        assert_eq!(offence(&mut table, failed), Some(Offence::AuthFailed));
        assert_eq!(offence(&mut table, good), None);
        // Releasing twice changes nothing: counts never go below zero.
        assert_eq!(offence(&mut table, silent), None);
        let stats = table.stats(now);
        assert_eq!(
            (
                stats.no_version,
                stats.auth_deadline,
                stats.auth_failed,
                stats.authenticated
            ),
            (1, 1, 1, 1)
        );
        assert_eq!((stats.unauthenticated, stats.sources), (0, 0));
        assert_eq!(stats.penalties, 0, "penalties are off");
        table.check();
    }

    /// Admits one connection from `source` at `at` and ends it without a version.
    fn offend(table: &mut Table, source: &str, at: Instant) -> Result<Option<Duration>, Denied> {
        let id = table.admit(ip(source), at)?.id;
        Ok(table.release(id, at).and_then(|ended| ended.penalty))
    }

    #[test]
    fn a_source_is_penalised_after_its_allowance_and_recovers_when_its_debt_drains() {
        let start = Instant::now();
        let mut table = Table::new(policy(64, 8));
        // Unit 1 s, allowance 3 s: the fourth offence at once starts a 4 s penalty.
        for _ in 0..3 {
            assert_eq!(offend(&mut table, "10.0.0.1", start), Ok(None));
        }
        assert_eq!(offend(&mut table, "10.0.0.1", start), Ok(Some(4 * S)));
        assert_eq!(
            table.admit(ip("10.0.0.1"), start + 3 * S).unwrap_err(),
            Denied::Penalised
        );
        // Other sources are not affected.
        table.admit(ip("10.0.0.2"), start + S).unwrap();
        assert_eq!(table.stats(start + S).penalised_sources, 1);
        // Recovered once the debt has drained.
        table.admit(ip("10.0.0.1"), start + 4 * S).unwrap();
        assert_eq!(table.stats(start + 4 * S).penalised_sources, 0);
        assert_eq!(table.stats(start).refused_penalised, 1);
        table.check();
    }

    #[test]
    fn offences_spread_out_enough_never_penalise() {
        let start = Instant::now();
        let mut table = Table::new(policy(64, 8));
        // A health check that connects and closes every 2 s: each unit
        // drains before the next.
        for n in 0..1000 {
            assert_eq!(offend(&mut table, "10.0.0.1", start + n * 2 * S), Ok(None));
        }
    }

    #[test]
    fn repeated_penalties_grow_up_to_the_maximum_and_shrink_after_good_behaviour() {
        let mut now = Instant::now();
        let mut table = Table::new(policy(64, 8));
        let mut penalties = Vec::new();
        for _ in 0..12 {
            // Offend until penalised, then wait for the penalty to end.
            let penalty = loop {
                if let Some(penalty) = offend(&mut table, "10.0.0.1", now).unwrap() {
                    break penalty;
                }
            };
            penalties.push(penalty.as_secs());
            assert_eq!(
                table.admit(ip("10.0.0.1"), now + penalty - MS).unwrap_err(),
                Denied::Penalised
            );
            now += penalty;
        }
        // Unit 1 s, doubling at each penalty; the max is 60 s.
        assert_eq!(penalties, [4, 4, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]);
        // Ten maxima without offence: the unit halves ten times, from 2^12 to
        // 2^2 seconds, so that a single offence starts a 4 s penalty.
        now += 10 * 60 * S;
        assert_eq!(offend(&mut table, "10.0.0.1", now), Ok(Some(4 * S)));
    }

    #[test]
    fn an_offence_during_a_penalty_lengthens_it_up_to_the_maximum() {
        let start = Instant::now();
        let mut table = Table::new(policy(64, 64));
        // Ten connections open, then the source is penalised by others.
        let open: Vec<u64> = (0..10)
            .map(|_| table.admit(ip("10.0.0.1"), start).unwrap().id)
            .collect();
        for _ in 0..4 {
            offend(&mut table, "10.0.0.1", start).unwrap();
        }
        assert!(
            table
                .penalties
                .is_blocked(Source::of(ip("10.0.0.1")), start)
        );
        // The ten end without a version: each adds a unit of 2 s.
        for id in open {
            assert_eq!(table.release(id, start).unwrap().penalty, None);
        }
        let until = table.penalties.sources[&Source::of(ip("10.0.0.1"))].blocked_until;
        assert_eq!(until, Some(start + 24 * S));
        // Sixty connections end at once: 4 s at a unit of 1 s, then 56 units
        // of 2 s, capped at 60 s.
        let open: Vec<u64> = (0..60)
            .map(|_| table.admit(ip("10.0.0.2"), start).unwrap().id)
            .collect();
        for id in open {
            let _ = table.release(id, start);
        }
        let until = table.penalties.sources[&Source::of(ip("10.0.0.2"))].blocked_until;
        assert_eq!(until, Some(start + 60 * S));
    }

    #[test]
    fn absurd_penalty_settings_are_capped_instead_of_overflowing() {
        let now = Instant::now();
        let mut table = Table::new(Policy::new(&Limits {
            penalty_base: Duration::MAX,
            penalty_max: Duration::MAX,
            ..Limits::default()
        }));
        assert_eq!(
            offend(&mut table, "10.0.0.1", now),
            Ok(Some(LONGEST_PENALTY))
        );
        assert_eq!(
            table.admit(ip("10.0.0.1"), now).unwrap_err(),
            Denied::Penalised
        );
    }

    #[test]
    fn authenticating_clears_the_sources_debt() {
        let now = Instant::now();
        let mut table = Table::new(policy(64, 8));
        for _ in 0..3 {
            offend(&mut table, "10.0.0.1", now).unwrap();
        }
        let good = table.admit(ip("10.0.0.1"), now).unwrap().id;
        table.version_received(good);
        table.authenticated(good, now);
        assert_eq!(table.stats(now).tracked_sources, 0);
        // The debt started over: three more offences are allowed.
        for _ in 0..3 {
            assert_eq!(offend(&mut table, "10.0.0.1", now), Ok(None));
        }
    }

    #[test]
    fn exempt_networks_have_no_per_source_limit_and_no_penalty() {
        let now = Instant::now();
        let mut table = Table::new(Policy {
            exempt: vec!["10.9.0.0/16".parse().unwrap()],
            ..policy(64, 2)
        });
        for _ in 0..20 {
            offend(&mut table, "10.9.3.4", now).unwrap();
        }
        for _ in 0..10 {
            table.admit(ip("10.9.3.4"), now).unwrap();
        }
        assert_eq!(table.stats(now).tracked_sources, 0);
        assert_eq!(table.stats(now).no_version, 20, "still counted");
    }

    #[test]
    fn the_penalty_table_is_bounded_and_expired_records_make_room() {
        let start = Instant::now();
        let mut table = Table::new(policy(64, 8));
        let source = |n: usize| {
            IpAddr::from(std::net::Ipv4Addr::from(
                u32::try_from(0x0a00_0000 + n).unwrap(),
            ))
        };
        for n in 0..MAX_TRACKED_SOURCES + 100 {
            let id = table.admit(source(n), start).unwrap().id;
            let _ = table.release(id, start);
        }
        assert_eq!(table.stats(start).tracked_sources, MAX_TRACKED_SOURCES);
        // Once their debt has drained, the records go to make room.
        let later = start + 2 * S;
        let id = table
            .admit(source(MAX_TRACKED_SOURCES + 200), later)
            .unwrap()
            .id;
        let _ = table.release(id, later);
        assert_eq!(table.stats(later).tracked_sources, 1);
        table.check();
    }

    #[test]
    fn log_lines_are_one_per_kind_per_interval_and_count_what_they_skipped() {
        let start = Instant::now();
        let mut log = EventLog::new(Duration::from_secs(10));
        let full = Event::Refused(Denied::Full);
        assert_eq!(log.note(full, start), Some(1));
        for n in 1..1000 {
            assert_eq!(log.note(full, start + n * 5 * MS), None);
        }
        // Another kind has its own line.
        assert_eq!(log.note(Event::Evicted, start + S), Some(1));
        assert_eq!(log.note(full, start + 10 * S), Some(1000));
        assert_eq!(log.note(full, start + 11 * S), None);
    }

    /// Log output, captured.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_flood_of_refusals_logs_one_line_per_reason_with_its_count() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let admission = Admission::new(&Limits {
            max_unauthenticated: 1,
            exempt_networks: Vec::new(),
            ..Limits::default()
        });
        let _held = admission.admit(ip("10.0.0.1")).unwrap();
        for _ in 0..1000 {
            assert_eq!(admission.admit(ip("10.0.0.1")).unwrap_err(), Denied::Full);
            admission.refuse(Denied::ConnectionLimit, ip("10.0.0.2"));
        }
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("unauthenticated limit reached") && lines[0].contains("count=1"));
        assert!(lines[1].contains("connection limit reached"));
        assert_eq!(admission.stats().refused_full, 1000);
        assert_eq!(admission.stats().refused_connection_limit, 1000);
    }

    #[tokio::test]
    async fn slots_free_their_places_when_dropped_and_report_their_offence() {
        let limits = Limits {
            max_unauthenticated: 4,
            exempt_networks: Vec::new(),
            ..Limits::default()
        };
        let admission = Admission::new(&limits);
        let mut slots: Vec<Slot> = (0..4)
            .map(|_| admission.admit(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(admission.admit(ip("10.0.0.1")).unwrap_err(), Denied::Full);
        slots[0].version_received();
        slots[0].authenticated();
        assert_eq!(admission.stats().unauthenticated, 3);
        slots.push(admission.admit(ip("10.0.0.1")).unwrap());
        slots[1].version_received();
        slots[2].spare();
        // Its deadline passed before it sent a version: no version, still.
        slots[3].deadline_passed();
        // A newcomer from elsewhere evicts the oldest silent one, slots[2].
        let newcomer = admission.admit(ip("10.0.0.2")).unwrap();
        assert!(slots[2].evicted().is_cancelled());
        admission.refuse(Denied::ConnectionLimit, ip("10.0.0.3"));
        drop(slots);
        drop(newcomer);
        let stats = AdmissionMonitor::new(&admission).stats();
        assert_eq!((stats.unauthenticated, stats.sources), (0, 0));
        assert_eq!(stats.authenticated, 1);
        assert_eq!(stats.auth_failed, 1, "slots[1]");
        assert_eq!(stats.no_version, 3, "slots[3], slots[4] and the newcomer");
        assert_eq!((stats.evicted, stats.refused_full), (1, 1));
        assert_eq!(stats.refused_connection_limit, 1);
        admission.lock().check();
    }
}
