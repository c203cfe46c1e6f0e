//! Socket reads and writes of the fast path bounded by the body idle timeout ([`IdleBound`]).
//!
//! Each call first tries the socket directly (`try_read`/`try_write`: the same system call a plain read or
//! write makes, and none when the socket is known not to be ready). Only an operation that would block
//! arms the timer and waits for readiness, so a request whose sockets keep up costs no timer work. A
//! blocked write is tried once more directly when the timer fires (see [`crate::idle`]).

use std::io::ErrorKind;
use std::pin::Pin;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::idle::{IdleBound, probe_write, stalled};

/// Writes all of `buf`, failing after the bound without progress.
pub(super) async fn write_all(
    s: &TcpStream,
    mut buf: &[u8],
    timer: &mut Pin<Box<Sleep>>,
    bound: &mut IdleBound,
) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.try_write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                bound.progress();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                bound.arm(timer.as_mut());
                tokio::select! {
                    biased;
                    r = s.writable() => r?,
                    _ = timer.as_mut() => {
                        // A slow reader may leave room the reactor does not report yet.
                        if let Ok(n @ 1..) = probe_write(s, buf) {
                            buf = &buf[n..];
                            bound.progress();
                        }
                        if bound.next_window(timer.as_mut()) {
                            return Err(stalled("client stopped reading"));
                        }
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is available into `buf` (0 at the end of the stream), failing after the bound without
/// progress.
pub(super) async fn read_buf(
    s: &TcpStream,
    buf: &mut BytesMut,
    timer: &mut Pin<Box<Sleep>>,
    bound: &mut IdleBound,
) -> std::io::Result<usize> {
    loop {
        match s.try_read_buf(buf) {
            Ok(n) => {
                bound.progress();
                return Ok(n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                bound.arm(timer.as_mut());
                tokio::select! {
                    biased;
                    r = s.readable() => r?,
                    _ = bound.expired(timer.as_mut()) => return Err(stalled("backend stopped sending")),
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
