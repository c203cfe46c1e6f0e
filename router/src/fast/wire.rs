//! Byte-level helpers of the fast path: finding the end of a chunked body, and replaying bytes already
//! read in front of a stream handed to hyper.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Finds the end of a chunked body in a byte stream (the bytes are forwarded as they are), checking the
/// framing strictly (RFC 9112 section 7.1): hex sizes of at most 16 digits, extensions without control
/// bytes, CRLF line ends everywhere, trailer lines that start with a field-name character, at most
/// [`MAX_TRAILER_BYTES`] of trailers. Anything else is an error, after which the body is abandoned (both
/// connections closed), so that no client can read the framing differently from the router.
#[derive(Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    trailer_bytes: usize,
}

/// The most trailer bytes accepted after the last chunk.
pub(crate) const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// A chunked body that breaks the framing rules.
#[derive(Debug, PartialEq)]
pub(crate) struct BadChunk;

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum ChunkState {
    #[default]
    Size,
    /// After the size digits: extensions up to CR.
    Ext,
    /// CR of the size line seen.
    SizeLf,
    Data,
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// Trailer lines after the last chunk: at the start of a line.
    TrailerStart,
    /// Inside a trailer line, up to CR.
    TrailerLine,
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
}

impl Chunked {
    /// Whether the bytes fed so far end between two chunks (where a last chunk may be written).
    pub(crate) fn between_chunks(&self) -> bool {
        self.state == ChunkState::Size && self.digits == 0
    }

    /// Consumes bytes of `b`; returns how many belong to the body and whether it ended.
    pub(crate) fn feed(&mut self, b: &[u8]) -> Result<(usize, bool), BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < b.len() && self.state != Done {
            let c = b[i];
            let text = c == b'\t' || (c >= b' ' && c != 0x7f);
            self.state = match self.state {
                Size => match (c as char).to_digit(16) {
                    Some(d) if self.digits < 16 => {
                        self.size = self.size << 4 | u64::from(d);
                        self.digits += 1;
                        Size
                    }
                    Some(_) => return Err(BadChunk),
                    None if self.digits == 0 => return Err(BadChunk),
                    None if c == b'\r' => SizeLf,
                    None if matches!(c, b';' | b' ' | b'\t') => Ext,
                    None => return Err(BadChunk),
                },
                Ext if c == b'\r' => SizeLf,
                Ext if text => Ext,
                SizeLf if c == b'\n' => {
                    self.digits = 0;
                    if self.size == 0 { TrailerStart } else { Data }
                }
                Data => {
                    let n = ((b.len() - i) as u64).min(self.size) as usize;
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr if c == b'\r' => DataLf,
                DataLf if c == b'\n' => Size,
                TrailerStart if c == b'\r' => EndLf,
                TrailerStart if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c) => {
                    TrailerLine
                }
                TrailerLine if c == b'\r' => TrailerLf,
                TrailerLine if text => TrailerLine,
                TrailerLf if c == b'\n' => TrailerStart,
                EndLf if c == b'\n' => Done,
                _ => return Err(BadChunk),
            };
            if matches!(self.state, TrailerStart | TrailerLine | TrailerLf | EndLf) {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILER_BYTES {
                    return Err(BadChunk);
                }
            }
            i += 1;
        }
        Ok((i, self.state == Done))
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
            let (a, done_a) = c.feed(&body[..split]).unwrap();
            if split >= end {
                assert_eq!((a, done_a), (end, true), "split {split}");
                continue;
            }
            assert_eq!((a, done_a), (split, false), "split {split}");
            let (b, done) = c.feed(&body[split..]).unwrap();
            assert!(done, "split {split}");
            assert_eq!(split + b, end, "split {split}");
        }
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"0\r\n\r\n"), Ok((5, true)));
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"000\r\n\r\n"), Ok((7, true)));
        let mut c = Chunked::default();
        assert_eq!(
            c.feed(b"A; name=\"v\"\r\n0123456789\r\n0\r\n\r\n"),
            Ok((30, true))
        );
    }

    #[test]
    fn chunked_framing_is_checked_strictly() {
        let bad: &[&[u8]] = &[
            b"\r\n\r\n",                       // no size
            b" 5\r\nhello\r\n0\r\n\r\n",       // space before the size
            b"5\nhello\r\n0\r\n\r\n",          // bare LF after the size
            b"5\r\nhelloJUNK\n0\r\n\r\n",      // bytes after the data
            b"5\r\nhello\n0\r\n\r\n",          // bare LF after the data
            b"10000000000000000\r\n",          // 17 digits
            b"5;a\x01b\r\nhello\r\n0\r\n\r\n", // control byte in an extension
            b"0\r\n x: folded\r\n\r\n",        // trailer line starting with a space
            b"0\r\nx: 1\n\r\n",                // bare LF in the trailers
            b"0\r\n\rX",                       // CR not followed by LF at the end
            b"g\r\n",                          // not hex
        ];
        for b in bad {
            let mut c = Chunked::default();
            assert_eq!(c.feed(b), Err(BadChunk), "{:?}", String::from_utf8_lossy(b));
        }
        let mut big = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILER_BYTES / 8 + 1 {
            big.extend_from_slice(b"x: 123\r\n");
        }
        assert_eq!(Chunked::default().feed(&big), Err(BadChunk));
    }
}
