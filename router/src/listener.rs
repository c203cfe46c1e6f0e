//! Listeners: one accept loop per configured port, opened and closed as the table changes.
//!
//! A new port in the table opens a listener; a deleted port stops accepting at once and its open
//! connections are shut down gracefully (in-flight requests finish, bounded by the drain timeout). Each
//! connection is served by hyper as HTTP/1.1 or HTTP/2 (h2c by its preface, or ALPN over TLS), with bounded header
//! size and a header-read timeout that also closes idle keep-alive connections; writes to a client that
//! stops reading fail after the body idle timeout.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::idle::StallIo;
use crate::proxy::{self, ConnInfo, Shared};
use crate::table::Table;
use crate::tls::Tls;

struct Active {
    tls: bool,
    cancel: CancellationToken,
}

/// The set of open listeners.
pub struct Listeners {
    ip: IpAddr,
    limits: Limits,
    shared: Arc<Shared>,
    tls: Option<Arc<Tls>>,
    builder: Arc<Protocols>,
    active: BTreeMap<u16, Active>,
    workers: Vec<tokio::runtime::Handle>,
    /// Ports that could not be opened, with the reason.
    pub failed: Arc<parking_lot::Mutex<BTreeMap<u16, String>>>,
    tracker: Tracker,
}

impl Listeners {
    /// No listeners yet.
    pub fn new(
        ip: IpAddr,
        limits: Limits,
        shared: Arc<Shared>,
        tls: Option<Arc<Tls>>,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Listeners {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
            .max_buf_size(limits.max_header_bytes)
            .writev(false)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_streams)
            .max_header_list_size(limits.max_header_bytes as u32)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Listeners {
            ip,
            limits,
            shared,
            tls,
            builder: Arc::new(Protocols { h1, h2 }),
            active: BTreeMap::new(),
            workers,
            failed: Arc::default(),
            tracker: Tracker::default(),
        }
    }

    /// The ports currently listening.
    pub fn ports(&self) -> Vec<u16> {
        self.active.keys().copied().collect()
    }

    /// Opens and closes listeners so they match `table`.
    pub fn reconcile(&mut self, table: &Table) {
        let gone: Vec<u16> = self
            .active
            .iter()
            .filter(|(port, a)| table.ports.get(port).is_none_or(|p| p.tls != a.tls))
            .map(|(p, _)| *p)
            .collect();
        for port in gone {
            if let Some(a) = self.active.remove(&port) {
                tracing::info!(port, "Closing listener.");
                a.cancel.cancel();
            }
        }
        let mut failed = self.failed.lock();
        failed.retain(|p, _| table.ports.contains_key(p));
        for (port, entry) in &table.ports {
            if self.active.contains_key(port) {
                continue;
            }
            if entry.tls && self.tls.is_none() {
                failed.insert(*port, "tls port but the router has no certificates".into());
                continue;
            }
            // One SO_REUSEPORT socket per worker: the kernel spreads connections over the workers.
            let addr = SocketAddr::new(self.ip, *port);
            let bound: std::io::Result<Vec<(tokio::runtime::Handle, TcpListener)>> = self
                .workers
                .iter()
                .map(|h| {
                    let _in_worker = h.enter();
                    bind(addr).map(|l| (h.clone(), l))
                })
                .collect();
            match bound {
                Ok(listeners) => {
                    failed.remove(port);
                    let cancel = CancellationToken::new();
                    let tls = if entry.tls { self.tls.clone() } else { None };
                    tracing::info!(
                        port,
                        tls = entry.tls,
                        workers = listeners.len(),
                        "Listening."
                    );
                    for (h, l) in listeners {
                        let task = accept_loop(
                            l,
                            *port,
                            tls.clone(),
                            self.builder.clone(),
                            self.shared.clone(),
                            self.limits.clone(),
                            cancel.clone(),
                            self.tracker.clone(),
                        );
                        self.tracker.spawn_on(&h, task);
                    }
                    self.active.insert(
                        *port,
                        Active {
                            tls: entry.tls,
                            cancel,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(port, error = %e, "Cannot open listener.");
                    failed.insert(*port, e.to_string());
                }
            }
        }
    }

    /// Closes every listener and waits (bounded) for connections to drain.
    pub async fn shutdown(&mut self) {
        for (_, a) in std::mem::take(&mut self.active) {
            a.cancel.cancel();
        }
        let _ = tokio::time::timeout(
            Duration::from_millis(self.limits.drain_timeout_ms + 1000),
            self.tracker.wait(),
        )
        .await;
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    port: u16,
    tls: Option<Arc<Tls>>,
    builder: Arc<Protocols>,
    shared: Arc<Shared>,
    limits: Limits,
    cancel: CancellationToken,
    tracker: Tracker,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.server.clone()));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = cancel.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(port, error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            port,
            tls: acceptor.is_some(),
            peer,
        };
        let (builder, shared, cancel, limits, acceptor) = (
            builder.clone(),
            shared.clone(),
            cancel.clone(),
            limits.clone(),
            acceptor.clone(),
        );
        tracker.spawn(async move {
            // The connection's slot is held as long as the connection, or a tunnel it became, lives.
            let hold = Arc::new(ConnHold {
                _permit: permit,
                port: cancel.clone(),
            });
            match acceptor {
                None => {
                    crate::fast::serve(stream, info, builder, shared, cancel, hold, &limits).await
                }
                Some(acc) => {
                    let hs = Duration::from_millis(limits.tls_handshake_timeout_ms);
                    // Writes to a client that stops reading fail after the body idle timeout.
                    let stream =
                        StallIo::new(stream, Duration::from_millis(limits.body_idle_timeout_ms));
                    match tokio::time::timeout(hs, acc.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve(s, h2, info, builder, shared, cancel, hold, &limits).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(port, %peer, error = %e, "TLS handshake failed.")
                        }
                        Err(_) => tracing::debug!(port, %peer, "TLS handshake timed out."),
                    }
                }
            }
        });
    }
}

/// The HTTP/1.1 and HTTP/2 server settings.
pub struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// What a client connection holds while it lives: its slot among the listener's `max_connections`, and
/// the port's closing signal. A WebSocket tunnel made from the connection keeps both: it counts as a
/// connection, and ends when its port closes.
pub struct ConnHold {
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// Cancelled when the port closes (or the router stops).
    pub port: CancellationToken,
}

/// Serves a connection with hyper (HTTP/2 when `h2`, else HTTP/1.1 with upgrades).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<I>(
    io: I,
    h2: bool,
    info: ConnInfo,
    builder: Arc<Protocols>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    hold: Arc<ConnHold>,
    limits: &Limits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drain = Duration::from_millis(limits.drain_timeout_ms);
    let result = if h2 {
        // An HTTP/2 connection with no stream open for the header read timeout is closed (GOAWAY), as
        // an idle HTTP/1.1 keep-alive connection is.
        let streams = Arc::new(Streams::default());
        let svc = {
            let streams = streams.clone();
            service_fn(move |req| {
                let open = OpenStream::new(streams.clone());
                let fut = proxy::handle(shared.clone(), info, req, hold.clone());
                async move {
                    let resp = fut.await?;
                    Ok::<_, std::convert::Infallible>(resp.map(|b| b.tracked(open)))
                }
            })
        };
        let idle = Duration::from_millis(limits.header_read_timeout_ms);
        let conn = builder.h2.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let check = tokio::time::sleep(idle);
        tokio::pin!(check);
        loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    break tokio::time::timeout(drain, conn).await.unwrap_or(Ok(()));
                }
                _ = check.as_mut() => match streams.idle_for() {
                    Some(quiet) if quiet >= idle => {
                        tracing::debug!(port = info.port, peer = %info.peer, "Idle HTTP/2 connection closed.");
                        conn.as_mut().graceful_shutdown();
                        break tokio::time::timeout(drain, conn).await.unwrap_or(Ok(()));
                    }
                    Some(quiet) => check.as_mut().reset(tokio::time::Instant::now() + (idle - quiet)),
                    None => check.as_mut().reset(tokio::time::Instant::now() + idle),
                },
            }
        }
    } else {
        let svc = service_fn(move |req| proxy::handle(shared.clone(), info, req, hold.clone()));
        let conn = builder
            .h1
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                tokio::time::timeout(drain, conn).await.unwrap_or(Ok(()))
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(port = info.port, peer = %info.peer, error = %e, "Connection ended with an error.");
    }
}

/// The open streams of an HTTP/2 connection, and since when none is open.
pub(crate) struct Streams {
    open: std::sync::atomic::AtomicUsize,
    quiet_since: parking_lot::Mutex<std::time::Instant>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            open: std::sync::atomic::AtomicUsize::new(0),
            quiet_since: parking_lot::Mutex::new(std::time::Instant::now()),
        }
    }
}

impl Streams {
    /// How long no stream has been open; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        let since = self.quiet_since.lock();
        (self.open.load(std::sync::atomic::Ordering::Acquire) == 0).then(|| since.elapsed())
    }
}

/// One open stream; it ends when its response body is done (or dropped).
pub(crate) struct OpenStream(Arc<Streams>);

impl OpenStream {
    fn new(s: Arc<Streams>) -> OpenStream {
        s.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        OpenStream(s)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut since = self.0.quiet_since.lock();
        if self
            .0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            *since = std::time::Instant::now();
        }
    }
}

/// Counts spawned connection tasks so shutdown can wait for them.
#[derive(Clone, Default)]
struct Tracker {
    inner: Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>,
}

struct TrackGuard(Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.0.1.notify_waiters();
        }
    }
}

impl Tracker {
    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.spawn_on(&tokio::runtime::Handle::current(), f);
    }

    fn spawn_on<F: std::future::Future<Output = ()> + Send + 'static>(
        &self,
        h: &tokio::runtime::Handle,
        f: F,
    ) {
        self.inner
            .0
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let guard = TrackGuard(self.inner.clone());
        h.spawn(async move {
            let _guard = guard;
            f.await
        });
    }

    async fn wait(&self) {
        loop {
            let notified = self.inner.1.notified();
            if self.inner.0.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}
