//! The idle (no progress) bound on body copies, shared by the fast path and the hyper path.
//!
//! A copy that makes no progress for `limits.body_idle_timeout_ms` (a backend that stops sending
//! mid-body, a client that stops reading) fails, so neither side can pin a connection forever. It costs
//! nothing while the sockets keep up: the timer is armed (one clock read) only when an operation would
//! block, progress only sets a flag, and the timer is re-armed lazily when it fires. It fires every half
//! timeout while armed; two windows in a row without progress end the copy, so a copy fails after between
//! one and one and a half timeouts without progress.
//!
//! [`StallIo`] applies the bound to writes to a client served by hyper; the fast path and the streamed
//! response body ([`crate::body`]) use [`IdleBound`] with a timer of their own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
            if std::mem::take(&mut self.progress) {
                self.quiet = 0;
            } else {
                self.quiet += 1;
                if self.quiet >= 2 {
                    return Poll::Ready(());
                }
            }
            timer.as_mut().reset(Instant::now() + self.half);
        }
    }

    /// Waits until the bound is exceeded (the timer must be armed).
    pub(crate) async fn expired(&mut self, mut timer: Pin<&mut Sleep>) {
        std::future::poll_fn(|cx| self.poll_expired(timer.as_mut(), cx)).await
    }

    /// Arms a lazily allocated timer and polls it: ready once the bound is exceeded.
    pub(crate) fn poll_stalled(
        &mut self,
        timer: &mut Option<Pin<Box<Sleep>>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let t = timer.get_or_insert_with(|| {
            self.armed = true;
            self.progress = false;
            self.quiet = 0;
            Box::pin(tokio::time::sleep(self.half))
        });
        self.arm(t.as_mut());
        self.poll_expired(t.as_mut(), cx)
    }
}

/// The error of a copy stopped by the bound.
pub(crate) fn stalled(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// A client stream whose writes fail after the idle bound without progress (a client that stops
/// reading). Reads pass through: an idle keep-alive connection is the header-read timeout's business.
pub(crate) struct StallIo<S> {
    inner: S,
    bound: IdleBound,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> StallIo<S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: S, timeout: Duration) -> StallIo<S> {
        StallIo {
            inner,
            bound: IdleBound::new(timeout),
            timer: None,
        }
    }

    /// A write would block: pending, or the error once the bound is exceeded.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match self.bound.poll_stalled(&mut self.timer, cx) {
            Poll::Ready(()) => Poll::Ready(Err(stalled("client stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.blocked(cx),
            r => {
                self.bound.progress();
                r
            }
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.blocked(cx),
            r => r,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.blocked(cx),
            r => r,
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.blocked(cx),
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
