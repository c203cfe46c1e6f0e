//! Free loopback ports for services that cannot bind port 0 themselves.

use std::net::{SocketAddr, TcpListener};

/// A port that was free a moment ago on 127.0.0.1. Another process may take it before the service binds
/// it, so callers check that the service they reach is their own and retry with a new port if not.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// True when something accepts TCP connections at `addr`.
pub fn is_listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).is_ok()
}
