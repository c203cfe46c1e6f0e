//! Upgraded connections (WebSocket and other `101 Switching Protocols` answers): bytes are copied both
//! ways until either side closes, or until nothing has moved either way for
//! `limits.tunnel_idle_timeout_ms`, so an abandoned tunnel cannot hold two sockets forever.
//!
//! A tunnel to a backend that left its pool is closed at the drain deadline (`crate::drain`): a
//! WebSocket client gets a close frame (1001, going away) at a frame boundary, then the end of the
//! stream.
//!
//! Activity is recorded as milliseconds since the tunnel opened in one atomic, written by every read or
//! write that moves bytes; a watchdog sleeps until the last activity plus the timeout and ends the copy
//! only when no activity came meanwhile.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::Instant;

/// A WebSocket close frame from a server, status 1001 (going away), unmasked, no reason.
pub const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// How long a closing tunnel may take to finish the frame under way, and then for the client to close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Copies between the client `a` and the backend `b` until one side closes, an error, `idle` without a
/// byte moved, or `close` resolves (the backend's drain deadline, `crate::drain`). Returns the bytes
/// copied from `a` to `b` and from `b` to `a`.
///
/// On `close`, the backend-to-client copy stops at a frame boundary when `websocket` (the frames are
/// followed as they pass: headers only), sends the client a close frame (1001, going away) and ends
/// its side; the client's close answer still reaches the backend, within [`CLOSE_GRACE`].
pub async fn run<A, B>(
    a: A,
    b: B,
    idle: Duration,
    close: impl std::future::Future<Output = ()>,
    websocket: bool,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let a = Activity {
        inner: a,
        start,
        last: last.clone(),
    };
    let b = Activity {
        inner: b,
        start,
        last: last.clone(),
    };
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let up = async {
        let n = tokio::io::copy(&mut ar, &mut bw).await?;
        let _ = bw.shutdown().await;
        Ok::<u64, io::Error>(n)
    };
    let down = down(&mut br, &mut aw, close, websocket);
    tokio::pin!(up, down);
    let (mut up_n, mut down_n) = (None, None);
    let mut grace: Option<Instant> = None;
    loop {
        let deadline = start + Duration::from_millis(last.load(Relaxed)) + idle;
        let deadline = grace.map_or(deadline, |g| g.min(deadline));
        tokio::select! {
            r = &mut up, if up_n.is_none() => up_n = Some(r?),
            r = &mut down, if down_n.is_none() => {
                let (n, closed) = r?;
                down_n = Some(n);
                if closed {
                    grace = Some(Instant::now() + CLOSE_GRACE);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if grace.is_some_and(|g| Instant::now() >= g) {
                    return Ok((up_n.unwrap_or(0), down_n.unwrap_or(0)));
                }
                let quiet = start.elapsed().saturating_sub(Duration::from_millis(last.load(Relaxed)));
                if quiet >= idle {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle"));
                }
            }
        }
        if let (Some(u), Some(d)) = (up_n, down_n) {
            return Ok((u, d));
        }
    }
}

/// The backend-to-client copy. Returns the bytes copied and whether it ended because of `close`.
async fn down<R, W>(
    r: &mut R,
    w: &mut W,
    close: impl std::future::Future<Output = ()>,
    websocket: bool,
) -> io::Result<(u64, bool)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut frames = Frames::default();
    let mut copied = 0u64;
    tokio::pin!(close);
    loop {
        let n = tokio::select! {
            biased;
            _ = &mut close => break,
            n = r.read(&mut buf) => n?,
        };
        if n == 0 {
            w.shutdown().await?;
            return Ok((copied, false));
        }
        if websocket {
            frames.feed(&buf[..n]);
        }
        w.write_all(&buf[..n]).await?;
        copied += n as u64;
    }
    if websocket {
        // The frame under way goes out whole (bounded), so the close frame starts at a boundary.
        let finish = async {
            while !frames.at_boundary() {
                let want = frames.need().min(buf.len());
                let n = r.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Ok(false);
                }
                frames.feed(&buf[..n]);
                w.write_all(&buf[..n]).await?;
                copied += n as u64;
            }
            Ok::<bool, io::Error>(true)
        };
        if let Ok(Ok(true)) = tokio::time::timeout(CLOSE_GRACE, finish).await {
            w.write_all(&CLOSE_GOING_AWAY).await?;
        }
    }
    w.flush().await?;
    w.shutdown().await?;
    Ok((copied, true))
}

/// Follows WebSocket frame boundaries in a byte stream (headers parsed, payloads skipped).
#[derive(Default)]
struct Frames {
    head: [u8; 14],
    have: usize,
    left: u64,
}

impl Frames {
    /// The length of the header being read (known once its first two bytes are in).
    fn head_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let b1 = self.head[1];
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
    }

    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.left > 0 {
                let k = self.left.min(b.len() as u64) as usize;
                self.left -= k as u64;
                b = &b[k..];
                continue;
            }
            let k = (self.head_len() - self.have).min(b.len());
            self.head[self.have..self.have + k].copy_from_slice(&b[..k]);
            self.have += k;
            b = &b[k..];
            if self.have == self.head_len() {
                let h = &self.head;
                self.left = match h[1] & 0x7f {
                    126 => u16::from_be_bytes([h[2], h[3]]) as u64,
                    127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                    n => n as u64,
                };
                self.have = 0;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Bytes that can be read without crossing into the next frame.
    fn need(&self) -> usize {
        if self.left > 0 {
            self.left.min(usize::MAX as u64) as usize
        } else {
            self.head_len() - self.have
        }
    }
}

/// An I/O object that records when it last moved bytes.
struct Activity<T> {
    inner: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::Frames;

    #[test]
    fn frame_boundaries_are_followed_across_splits() {
        // A 5-byte text frame, a 300-byte binary frame (16-bit length), a masked 2-byte frame.
        let mut s = vec![0x81, 5];
        s.extend_from_slice(b"hello");
        s.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        s.extend(std::iter::repeat_n(7u8, 300));
        s.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2]);
        let ends = [7, 7 + 4 + 300, s.len()];
        for split in 1..s.len() {
            let mut f = Frames::default();
            f.feed(&s[..split]);
            assert_eq!(f.at_boundary(), ends.contains(&split), "split at {split}");
            f.feed(&s[split..]);
            assert!(f.at_boundary(), "split at {split}");
        }
        let mut f = Frames::default();
        f.feed(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(f.need(), 65536);
        f.feed(&[0x81]);
        assert_eq!(f.need(), 65535);
    }
}
