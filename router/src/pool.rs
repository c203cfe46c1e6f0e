//! Pools at run time: backends with their health, load and idle connections, and the balancing choice
//! (the health checks that feed it are in [`crate::health`]).
//!
//! Choice: the best health tier the pool accepts (OK, then DEGRADED, then CRITICAL if allowed), then the
//! lowest `(in flight + 1) / weight`, where a backend's weight ramps from 1/32 to 1 during the pool's slow
//! start after it becomes usable. Ties rotate. MAINTENANCE and UNKNOWN (not yet checked) get no traffic.
//! Pool state outlives table swaps: a new table refers to the same `PoolState` while the pool exists.
//!
//! Idle connections are kept per backend and worker for the pool's `keepalive_ms` ([`Reuse`]): a request
//! that must not be sent twice takes only one idle for less than half of it, since the backend may be
//! closing an older one just as the request arrives.

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed,
};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use atlantis_common::routing::{Backend, Health, Pool, Protocol};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::metrics::{PoolMetrics, RouterMetrics};
use crate::upstream::Upstream;

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the router started (a monotonic clock cheap to store in an atomic).
pub fn now_ms() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// [`now_ms`] at `t`, without reading the clock.
pub fn ms_at(t: Instant) -> u64 {
    t.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_millis() as u64
        + 1
}

/// Which idle connections one request may reuse.
#[derive(Debug, Clone, Copy)]
pub struct Reuse {
    /// The request's start ([`ms_at`]).
    now: u64,
    /// Idle longer than this: not for this request (left for others).
    max_age: u64,
    /// Idle this long or longer: closed (the pool's `keepalive_ms`).
    keepalive: u64,
}

impl Reuse {
    /// The limits for a request that started at `start`: connections idle up to the pool's
    /// `keepalive_ms`, or up to half of it for a request that must not be sent twice (the backend may be
    /// closing such a connection just as the request arrives, and it cannot be retried).
    pub fn new(start: Instant, keepalive_ms: u64, idempotent: bool) -> Reuse {
        Reuse {
            now: ms_at(start),
            max_age: if idempotent {
                keepalive_ms
            } else {
                keepalive_ms / 2
            },
            keepalive: keepalive_ms,
        }
    }

    /// Takes the most recently returned connection of `list` if it is young enough; when it is too old
    /// to be reused at all, so is every other (they were returned earlier), and they are closed.
    fn take<T>(self, list: &parking_lot::Mutex<Vec<Parked<T>>>) -> Option<T> {
        let mut l = list.lock();
        let age = self.now.saturating_sub(l.last()?.since);
        if age >= self.keepalive {
            let old = std::mem::take(&mut *l);
            drop(l);
            drop(old);
            return None;
        }
        if age > self.max_age {
            return None;
        }
        l.pop().map(|p| p.conn)
    }
}

/// Why a backend connection could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailed {
    /// Refused, reset or unreachable: answered 502 when no backend is left.
    Refused,
    /// No answer within the pool's `connect_timeout_ms`: answered 504 when no backend is left.
    Timeout,
}

/// Bounds of the idle connection pools.
#[derive(Debug, Clone, Copy)]
pub struct IdleLimits {
    /// Idle connections per backend and worker; 0: no bound but `total`, so a backend keeps as many as
    /// its peak concurrency opened (a connection is opened only when none is idle, so the idle list
    /// never holds more than were in use at once) until they expire after the pool's `keepalive_ms`.
    pub per_backend: usize,
    /// Idle connections in the whole process (the memory bound).
    pub total: usize,
}

/// Idle connections held in the whole process.
static IDLE_TOTAL: AtomicUsize = AtomicUsize::new(0);

/// One idle connection's share of [`IdleLimits::total`], given back when dropped.
struct IdleSlot(());

impl IdleSlot {
    fn take(total: usize) -> Option<IdleSlot> {
        IDLE_TOTAL
            .fetch_update(Relaxed, Relaxed, |n| (n < total).then_some(n + 1))
            .ok()
            .map(|_| IdleSlot(()))
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        IDLE_TOTAL.fetch_sub(1, Relaxed);
    }
}

/// An idle connection and the time it was returned (`now_ms`).
struct Parked<T> {
    conn: T,
    since: u64,
    _slot: IdleSlot,
}

/// Adds `conn` to `list` within `limits`; dropped (closed) beyond them.
fn park<T>(list: &parking_lot::Mutex<Vec<Parked<T>>>, conn: T, limits: IdleLimits) {
    let mut l = list.lock();
    if limits.per_backend > 0 && l.len() >= limits.per_backend {
        return;
    }
    if let Some(slot) = IdleSlot::take(limits.total) {
        l.push(Parked {
            conn,
            since: now_ms(),
            _slot: slot,
        });
    }
}

/// One worker's idle connections to a backend.
type IdleList = parking_lot::Mutex<Vec<Parked<Upstream>>>;

/// One worker's idle raw connections (the HTTP/1.1 fast path's).
type RawIdleList = parking_lot::Mutex<Vec<Parked<tokio::net::TcpStream>>>;

const HEALTHS: [Health; 5] = [
    Health::Ok,
    Health::Degraded,
    Health::Critical,
    Health::Maintenance,
    Health::Unknown,
];

/// One backend of one pool.
pub struct BackendState {
    /// Its address.
    pub addr: Backend,
    /// `host:port` as text.
    pub name: String,
    health: AtomicU8,
    usable_since: AtomicU64,
    /// Requests sent and not yet finished.
    pub in_flight: AtomicU32,
    /// Requests answered.
    pub served: AtomicU64,
    /// Connection failures.
    pub failures: AtomicU64,
    /// Open tunnels (upgraded connections; each is counted in `in_flight` too).
    pub tunnels: AtomicU32,
    /// Set when the backend leaves its pool (read on the request path, where `removed` would lock).
    left: AtomicBool,
    /// Idle connections, one list per worker (a connection is driven by the worker that opened it).
    idle: Box<[IdleList]>,
    raw_idle: Box<[RawIdleList]>,
    /// The shared HTTP/2 connection of each worker (`protocol: h2c` pools).
    h2: crate::h2c::Slots,
    resolved: Option<SocketAddr>,
    cancel: CancellationToken,
    /// Cancelled at the drain deadline of a backend that left its pool (`crate::drain`): tunnels and
    /// streamed bodies still open to it end cleanly.
    closing: CancellationToken,
    gauge: Gauge,
}

impl BackendState {
    fn new(addr: Backend, checks: bool, gauge: Gauge) -> BackendState {
        let name = addr.to_string();
        let resolved = name.parse::<SocketAddr>().ok();
        let initial = if checks { Health::Unknown } else { Health::Ok };
        let b = BackendState {
            addr,
            name,
            health: AtomicU8::new(initial as u8),
            usable_since: AtomicU64::new(now_ms()),
            in_flight: AtomicU32::new(0),
            served: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            tunnels: AtomicU32::new(0),
            left: AtomicBool::new(false),
            idle: (0..crate::workers::slots())
                .map(|_| parking_lot::Mutex::new(Vec::new()))
                .collect(),
            raw_idle: (0..crate::workers::slots())
                .map(|_| parking_lot::Mutex::new(Vec::new()))
                .collect(),
            h2: crate::h2c::slots(),
            resolved,
            cancel: CancellationToken::new(),
            closing: CancellationToken::new(),
            gauge,
        };
        b.gauge.set(initial as i64);
        b
    }

    /// Current health.
    pub fn health(&self) -> Health {
        HEALTHS[self.health.load(Relaxed) as usize]
    }

    /// Sets the health; a backend that becomes usable starts its slow start.
    pub fn set_health(&self, h: Health) {
        let old = HEALTHS[self.health.swap(h as u8, Relaxed) as usize];
        let usable = |x: Health| matches!(x, Health::Ok | Health::Degraded);
        if usable(h) && !usable(old) {
            self.usable_since.store(now_ms(), Relaxed);
        }
        if old != h {
            tracing::info!(backend = %self.name, from = %old, to = %h, "Backend health changed.");
        }
        self.gauge.set(h as i64);
    }

    /// Weight in 32..=1024 during slow start, 1024 after.
    fn weight(&self, now: u64, slow_start_ms: u64) -> u64 {
        if slow_start_ms == 0 {
            return 1024;
        }
        let age = now.saturating_sub(self.usable_since.load(Relaxed));
        if age >= slow_start_ms {
            1024
        } else {
            (age * 1024 / slow_start_ms).max(32)
        }
    }

    /// Milliseconds left in this backend's slow start (0 once over, or when `slow_start_ms` is 0), counted
    /// from when it last became usable.
    pub fn slow_start_left_ms(&self, slow_start_ms: u64) -> u64 {
        let age = now_ms().saturating_sub(self.usable_since.load(Relaxed));
        slow_start_ms.saturating_sub(age)
    }

    /// The socket address to dial (names are resolved on every connect).
    pub async fn socket_addr(&self) -> std::io::Result<SocketAddr> {
        if let Some(a) = self.resolved {
            return Ok(a);
        }
        tokio::net::lookup_host((self.addr.host.as_str(), self.addr.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
    }

    /// Takes the most recently used idle connection of this worker within `reuse` (the caller checks it
    /// is still open).
    pub fn checkout(&self, reuse: Reuse) -> Option<Upstream> {
        reuse.take(self.idle_here())
    }

    /// Returns a connection whose exchange is complete to the idle list (unless the pool's
    /// `keepalive_ms` is 0: no reuse).
    pub fn checkin(&self, mut up: Upstream, limits: IdleLimits, keepalive_ms: u64) {
        if keepalive_ms == 0 || !up.reusable() || self.cancel.is_cancelled() {
            return;
        }
        park(self.idle_here(), up, limits);
    }

    /// This worker's shared HTTP/2 connection slot (`protocol: h2c` pools).
    pub fn h2_slot(&self) -> &tokio::sync::Mutex<crate::h2c::Slot> {
        &self.h2[crate::workers::current() % self.h2.len()]
    }

    /// Whether the backend left its pool.
    pub fn removed(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the backend leaves its pool.
    pub fn removed_signal(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Whether the backend left its pool (a relaxed load, for the request path).
    pub fn draining(&self) -> bool {
        self.left.load(Relaxed)
    }

    fn leave(&self) {
        self.left.store(true, Relaxed);
        self.cancel.cancel();
    }

    /// Asks what is still open to this backend (it left its pool) to end now: tunnels send a close and
    /// streamed bodies end.
    pub fn close_now(&self) {
        self.closing.cancel();
    }

    /// Whether [`BackendState::close_now`] was called.
    pub fn closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Resolves at [`BackendState::close_now`].
    pub fn closing_signal(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.closing.clone().cancelled_owned()
    }

    /// Counts a tunnel open while the guard lives.
    pub fn tunnel(self: &Arc<Self>) -> TunnelCount {
        self.tunnels.fetch_add(1, Relaxed);
        TunnelCount(self.clone())
    }

    /// Takes the most recently used idle raw connection of this worker within `reuse` (the fast path
    /// retries a request whose reused connection turns out closed, when it may be sent twice).
    pub fn checkout_raw(&self, reuse: Reuse) -> Option<tokio::net::TcpStream> {
        let i = crate::workers::current() % self.raw_idle.len();
        reuse.take(&self.raw_idle[i])
    }

    /// Returns a raw connection whose exchange is complete to the idle list (unless the pool's
    /// `keepalive_ms` is 0: no reuse).
    pub fn checkin_raw(&self, s: tokio::net::TcpStream, limits: IdleLimits, keepalive_ms: u64) {
        if keepalive_ms == 0 || self.cancel.is_cancelled() {
            return;
        }
        let i = crate::workers::current() % self.raw_idle.len();
        park(&self.raw_idle[i], s, limits);
    }

    /// Closes idle connections unused for the pool's `keepalive_ms` (no request would reuse them, and an
    /// unused socket should not be held).
    pub fn expire_idle(&self, keepalive_ms: u64) {
        let now = now_ms();
        for l in self.idle.iter() {
            l.lock()
                .retain(|p| now.saturating_sub(p.since) < keepalive_ms);
        }
        for l in self.raw_idle.iter() {
            l.lock()
                .retain(|p| now.saturating_sub(p.since) < keepalive_ms);
        }
    }

    fn idle_here(&self) -> &IdleList {
        &self.idle[crate::workers::current() % self.idle.len()]
    }

    fn clear_idle(&self) {
        for l in self.idle.iter() {
            l.lock().clear();
        }
        for l in self.raw_idle.iter() {
            l.lock().clear();
        }
        // A shared HTTP/2 connection closes once its last request is done.
        crate::h2c::clear(&self.h2);
    }

    /// Number of idle connections.
    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|l| l.lock().len()).sum::<usize>()
            + self.raw_idle.iter().map(|l| l.lock().len()).sum::<usize>()
    }
}

/// An open tunnel to a backend, counted in [`BackendState::tunnels`] while it lives.
pub struct TunnelCount(Arc<BackendState>);

impl Drop for TunnelCount {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Relaxed);
    }
}

/// A pool and its backends.
pub struct PoolState {
    /// Pool name.
    pub name: String,
    cfg: ArcSwap<Pool>,
    /// `cfg.protocol == H2c`, read by the fast path without loading `cfg`.
    h2c: AtomicBool,
    backends: ArcSwap<Vec<Arc<BackendState>>>,
    rr: AtomicUsize,
    /// Hot-path metric handles.
    pub metrics: PoolMetrics,
}

impl PoolState {
    /// A pool with no backends.
    pub fn new(name: &str, cfg: Pool, metrics: &RouterMetrics) -> PoolState {
        PoolState {
            name: name.into(),
            h2c: AtomicBool::new(cfg.protocol == Protocol::H2c),
            cfg: ArcSwap::from_pointee(cfg),
            backends: ArcSwap::from_pointee(Vec::new()),
            rr: AtomicUsize::new(0),
            metrics: metrics.pool(name),
        }
    }

    /// The pool settings.
    pub fn config(&self) -> Arc<Pool> {
        self.cfg.load_full()
    }

    /// Whether the backends speak HTTP/2 (`protocol: h2c`); the fast path leaves such requests to hyper.
    pub fn h2c(&self) -> bool {
        self.h2c.load(Relaxed)
    }

    /// The backends.
    pub fn backends(&self) -> Arc<Vec<Arc<BackendState>>> {
        self.backends.load_full()
    }

    /// Replaces the settings.
    pub fn set_config(&self, cfg: Pool) {
        let old = self.cfg.load();
        if **old != cfg {
            if old.protocol != cfg.protocol {
                // Connections of the other protocol are not used again.
                for b in self.backends.load().iter() {
                    b.clear_idle();
                }
            }
            self.h2c.store(cfg.protocol == Protocol::H2c, Relaxed);
            self.cfg.store(Arc::new(cfg));
        }
    }

    /// Makes the backend set equal to `want`, keeping the state of backends that stay and starting health
    /// checks for new ones.
    pub fn set_backends(self: &Arc<Self>, want: &[Backend], metrics: &RouterMetrics) {
        let old = self.backends.load_full();
        if old.len() == want.len() && old.iter().zip(want).all(|(a, b)| a.addr == *b) {
            return;
        }
        let checks = self.cfg.load().healthz_every_ms > 0;
        let mut next = Vec::with_capacity(want.len());
        for w in want {
            match old.iter().find(|b| b.addr == *w) {
                Some(b) => next.push(b.clone()),
                None => {
                    let b = Arc::new(BackendState::new(
                        w.clone(),
                        checks,
                        metrics.backend_health(&self.name, &w.to_string()),
                    ));
                    tokio::spawn(crate::health::run(Arc::downgrade(self), b.clone()));
                    next.push(b);
                }
            }
        }
        for b in old.iter() {
            if !want.contains(&b.addr) {
                b.leave();
                b.clear_idle();
                metrics.forget_backend(&self.name, &b.name);
            }
        }
        self.backends.store(Arc::new(next));
    }

    /// Stops every backend (the pool was deleted).
    pub fn close(&self, metrics: &RouterMetrics) {
        for b in self.backends.load().iter() {
            b.leave();
            b.clear_idle();
            metrics.forget_backend(&self.name, &b.name);
        }
    }

    /// Picks a backend, skipping those in `exclude`.
    pub fn choose(&self, exclude: &[usize]) -> Option<Arc<BackendState>> {
        let backends = self.backends.load();
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let cfg = self.cfg.load();
        let accept = cfg.accept as u8;
        let start = self.rr.fetch_add(1, Relaxed);
        let now = now_ms();
        let mut best: Option<(u8, u64, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let b = &backends[i];
            let h = b.health.load(Relaxed);
            if h > accept || exclude.contains(&(Arc::as_ptr(b) as usize)) {
                continue;
            }
            let cost = (b.in_flight.load(Relaxed) as u64 + 1) * 1024 * 1024
                / b.weight(now, cfg.slow_start_ms);
            if best.is_none_or(|(bh, bc, _)| (h, cost) < (bh, bc)) {
                best = Some((h, cost, i));
            }
        }
        best.map(|(_, _, i)| backends[i].clone())
    }

    /// Marks a backend that refused a connection as CRITICAL until its next good health check (only when
    /// health checks are on, since nothing else would bring it back).
    pub fn connect_failed(&self, b: &BackendState) {
        b.failures.fetch_add(1, Relaxed);
        if self.cfg.load().healthz_every_ms > 0 {
            b.set_health(Health::Critical);
        }
    }

    /// Runs `connect` for backend `b` within `limit`; a failure or timeout is logged, counted against the
    /// backend (see [`PoolState::connect_failed`]) and given back as the error, so the caller tries
    /// another (and answers 504 rather than 502 when the last one timed out).
    pub async fn connect_within<T>(
        &self,
        b: &BackendState,
        limit: std::time::Duration,
        connect: impl std::future::Future<Output = std::io::Result<T>>,
    ) -> Result<T, ConnectFailed> {
        let (why, failed) = match tokio::time::timeout(limit, connect).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => (e.to_string(), ConnectFailed::Refused),
            Err(_) => ("connect timeout".into(), ConnectFailed::Timeout),
        };
        tracing::warn!(pool = %self.name, backend = %b.name, error = %why, "Backend connection failed, trying another.");
        self.connect_failed(b);
        Err(failed)
    }
}
