//! The idle (no progress) bound on body copies, shared by the fast path and the hyper path.
//!
//! A copy that makes no progress for `limits.body_idle_timeout_ms` (a backend that stops sending
//! mid-body, a client that stops reading) fails, so neither side can pin a connection forever. It costs
//! nothing while the sockets keep up: the timer is armed (one clock read) only when an operation would
//! block, progress only sets a flag, and the timer is re-armed lazily when it fires. It fires every half
//! timeout while armed; two windows in a row without progress end the copy, so a copy fails after between
//! one and one and a half timeouts without progress.
//!
//! Writes need one more step: the kernel reports a socket writable again only once about a third of its
//! send buffer is free, which a slow but steady reader may take longer than the timeout to free. So when
//! the timer fires on a blocked write, the write is tried once directly on the socket ([`probe_write`]):
//! any room in the buffer counts as progress, and only a client that reads nothing at all is cut off.
//!
//! [`StallIo`] applies the bound to writes to a client served by hyper; the fast path and the streamed
//! response body ([`crate::body`]) use [`IdleBound`] with a timer of their own.

use std::future::Future;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// No-progress accounting of one copy (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleBound {
    half: Duration,
    armed: bool,
    progress: bool,
    quiet: u8,
}

impl IdleBound {
    /// A bound of `timeout` without progress.
    pub(crate) fn new(timeout: Duration) -> IdleBound {
        IdleBound {
            half: timeout / 2,
            armed: false,
            progress: false,
            quiet: 0,
        }
    }

    /// Records progress (bytes moved).
    #[inline]
    pub(crate) fn progress(&mut self) {
        self.progress = true;
    }

    /// An operation would block: arms `timer` unless it is armed already.
    pub(crate) fn arm(&mut self, timer: Pin<&mut Sleep>) {
        if !self.armed {
            self.armed = true;
            self.progress = false;
            self.quiet = 0;
            timer.reset(Instant::now() + self.half);
        }
    }

    /// A window ended (the timer fired): true when the bound is exceeded, else the timer is re-armed.
    pub(crate) fn next_window(&mut self, timer: Pin<&mut Sleep>) -> bool {
        if std::mem::take(&mut self.progress) {
            self.quiet = 0;
        } else {
            self.quiet += 1;
            if self.quiet >= 2 {
                return true;
            }
        }
        timer.reset(Instant::now() + self.half);
        false
    }

    /// Polls the armed timer: ready once the bound is exceeded; re-arms it while there is progress.
    pub(crate) fn poll_expired(
        &mut self,
        mut timer: Pin<&mut Sleep>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.next_window(timer.as_mut()) {
                return Poll::Ready(());
            }
        }
    }

    /// Waits until the bound is exceeded (the timer must be armed).
    pub(crate) async fn expired(&mut self, mut timer: Pin<&mut Sleep>) {
        std::future::poll_fn(|cx| self.poll_expired(timer.as_mut(), cx)).await
    }

    /// Arms a timer allocated on first use and returns it.
    fn armed<'t>(&mut self, timer: &'t mut Option<Pin<Box<Sleep>>>) -> Pin<&'t mut Sleep> {
        let t = timer.get_or_insert_with(|| {
            self.armed = true;
            self.progress = false;
            self.quiet = 0;
            Box::pin(tokio::time::sleep(self.half))
        });
        self.arm(t.as_mut());
        t.as_mut()
    }

    /// Arms a timer allocated on first use and polls it: ready once the bound is exceeded.
    pub(crate) fn poll_stalled(
        &mut self,
        timer: &mut Option<Pin<Box<Sleep>>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let t = self.armed(timer);
        self.poll_expired(t, cx)
    }
}

/// The error of a copy stopped by the bound.
pub(crate) fn stalled(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// Tries a write directly on the socket, past the reactor's readiness (which the kernel signals only once
/// a third of the send buffer is free). Three system calls: only for a write blocked for half the timeout.
pub(crate) fn probe_write(s: &TcpStream, buf: &[u8]) -> std::io::Result<usize> {
    // A duplicate of the descriptor shares the socket and its non-blocking mode.
    let mut dup = std::net::TcpStream::from(s.as_fd().try_clone_to_owned()?);
    dup.write(buf)
}

/// A client socket whose writes fail after the idle bound without progress (a client that stops reading).
/// Reads pass through: an idle keep-alive connection is the header-read timeout's business. It sits under
/// TLS, so progress is measured on the socket itself.
pub(crate) struct StallIo {
    inner: TcpStream,
    bound: IdleBound,
    timer: Option<Pin<Box<Sleep>>>,
}

impl StallIo {
    /// Wraps `inner`.
    pub(crate) fn new(inner: TcpStream, timeout: Duration) -> StallIo {
        StallIo {
            inner,
            bound: IdleBound::new(timeout),
            timer: None,
        }
    }

    /// A write of `buf` would block: pending, bytes written by a probe, or the error once the bound is
    /// exceeded.
    fn blocked(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut t = self.bound.armed(&mut self.timer);
        loop {
            if t.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Ok(n @ 1..) = probe_write(&self.inner, buf) {
                self.bound.progress();
                self.bound.next_window(t.as_mut());
                return Poll::Ready(Ok(n));
            }
            if self.bound.next_window(t.as_mut()) {
                return Poll::Ready(Err(stalled("client stopped reading")));
            }
        }
    }
}

impl AsyncRead for StallIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.blocked(cx, buf),
            r => {
                self.bound.progress();
                r
            }
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                self.blocked(cx, first)
            }
            r => {
                self.bound.progress();
                r
            }
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bound_fires_after_two_quiet_windows() {
        let ms = Duration::from_millis;
        let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        // No progress: two windows of 100 ms.
        let mut quiet = IdleBound::new(ms(200));
        let start = Instant::now();
        quiet.arm(timer.as_mut());
        quiet.arm(timer.as_mut());
        quiet.expired(timer.as_mut()).await;
        let took = start.elapsed();
        assert!(took >= ms(200) && took < ms(1200), "{took:?}");
        // Progress in the first window: it is re-armed once, then two quiet windows.
        let mut b = IdleBound::new(ms(200));
        let start = Instant::now();
        b.arm(timer.as_mut());
        b.progress();
        b.expired(timer.as_mut()).await;
        let took = start.elapsed();
        assert!(took >= ms(300) && took < ms(1300), "{took:?}");
    }
}
