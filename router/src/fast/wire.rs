//! Byte-level helpers of the fast path: finding the end of a chunked body, and replaying bytes already
//! read in front of a stream handed to hyper.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Finds the end of a chunked body in a byte stream (the bytes are forwarded as they are).
#[derive(Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum ChunkState {
    #[default]
    Size,
    /// After the size digits: extensions up to LF.
    Ext,
    Data,
    /// The CRLF after a chunk's data, up to LF.
    DataEnd,
    /// Trailer lines after the last chunk: at the start of a line.
    TrailerStart,
    /// Inside a trailer line, up to LF.
    TrailerLine,
    /// CR of the final empty line seen.
    EndLf,
    Done,
}

impl Chunked {
    /// Consumes bytes of `b`; returns how many belong to the body and whether it ended.
    pub(crate) fn feed(&mut self, b: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < b.len() && self.state != ChunkState::Done {
            let c = b[i];
            match self.state {
                ChunkState::Size => match (c as char).to_digit(16) {
                    Some(d) if self.size >> 56 == 0 => self.size = self.size * 16 + d as u64,
                    _ if c == b'\n' => self.after_size(),
                    _ => self.state = ChunkState::Ext,
                },
                ChunkState::Ext => {
                    if c == b'\n' {
                        self.after_size();
                    }
                }
                ChunkState::Data => {
                    let n = ((b.len() - i) as u64).min(self.size) as usize;
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    continue;
                }
                ChunkState::DataEnd => {
                    if c == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::TrailerStart => {
                    self.state = match c {
                        b'\r' => ChunkState::EndLf,
                        b'\n' => ChunkState::Done,
                        _ => ChunkState::TrailerLine,
                    }
                }
                ChunkState::TrailerLine => {
                    if c == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::EndLf => {
                    self.state = if c == b'\n' {
                        ChunkState::Done
                    } else {
                        ChunkState::TrailerLine
                    }
                }
                ChunkState::Done => {}
            }
            i += 1;
        }
        (i, self.state == ChunkState::Done)
    }

    fn after_size(&mut self) {
        self.state = if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
    }
}

/// A stream with bytes already read replayed in front (the hand-over to hyper).
pub(crate) struct Rewind<S> {
    pub(crate) pre: bytes::Bytes,
    pub(crate) inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_end_is_found_across_splits() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let (a, done_a) = c.feed(&body[..split]);
            if split >= end {
                assert_eq!((a, done_a), (end, true), "split {split}");
                continue;
            }
            assert_eq!((a, done_a), (split, false), "split {split}");
            let (b, done) = c.feed(&body[split..]);
            assert!(done, "split {split}");
            assert_eq!(split + b, end, "split {split}");
        }
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"0\r\n\r\n"), (5, true));
    }
}
