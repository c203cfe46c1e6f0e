//! Request heads on the fast path: parsing with `httparse`, deciding which requests are simple enough
//! for it, and rewriting the head for the backend (only the forwarding headers change).

use std::time::Instant;

use bytes::Buf;

use super::{Conn, Head, MAX_FAST_BODY, MAX_HEADERS};
use crate::proxy::{View, strip_port};
use crate::table::Route;

impl Conn<'_> {
    /// Whether the buffered head carries both `Content-Length` and `Transfer-Encoding` (a request
    /// smuggling vector: hyper would let Transfer-Encoding win; the router refuses it).
    pub(super) fn ambiguous_framing(&self) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&self.buf), Ok(httparse::Status::Complete(_))) {
            return false;
        }
        let has = |n: &str| req.headers.iter().any(|h| h.name.eq_ignore_ascii_case(n));
        has("content-length") && has("transfer-encoding")
    }

    /// Parses a complete simple head: `Ok(None)` for more bytes, `Err` for hyper.
    pub(super) fn parse(&mut self) -> Result<Option<Head>, ()> {
        let start = Instant::now();
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(&self.buf) {
            // A complete head over the limit is hyper's to refuse (431).
            Ok(httparse::Status::Complete(n)) if n <= self.limits.max_header_bytes => n,
            Ok(httparse::Status::Complete(_)) => return Err(()),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Err(());
        };
        if !matches!(
            method,
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH"
        ) || !target.starts_with('/')
            || !target.bytes().all(uri_byte)
        {
            return Err(());
        }
        let mut host = None;
        let mut length: Option<u64> = None;
        let (mut xff, mut rid) = (None, None);
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                if host.is_some() || !h.value.iter().all(|b| b.is_ascii_graphic()) {
                    return Err(());
                }
                host = Some(std::str::from_utf8(h.value).map_err(|_| ())?);
            } else if name.eq_ignore_ascii_case("content-length") {
                // One plain decimal value only: anything else (duplicates too) is hyper's to judge.
                if length.is_some()
                    || h.value.is_empty()
                    || h.value.len() > 18
                    || !h.value.iter().all(u8::is_ascii_digit)
                {
                    return Err(());
                }
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse().ok());
                // Larger bodies go to hyper, which streams both ways at once (an echoing backend
                // would otherwise block on a full socket).
                if length.is_none_or(|l| l > MAX_FAST_BODY) {
                    return Err(());
                }
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                if xff.is_some() || !h.value.iter().all(|b| *b == b' ' || b.is_ascii_graphic()) {
                    return Err(());
                }
                xff = Some(h.value);
            } else if name.eq_ignore_ascii_case("x-request-id") {
                if rid.is_some() {
                    return Err(());
                }
                rid = Some(h.value);
            } else if [
                "connection",
                "transfer-encoding",
                "upgrade",
                "expect",
                "te",
                "trailer",
                "keep-alive",
                "proxy-connection",
                "http2-settings",
            ]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
            {
                return Err(());
            }
        }
        let Some(host_hdr) = host else {
            return Err(());
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let route = {
            let table = self.shared.table.load();
            let view = View::raw(strip_port(host_hdr), path, query, req.headers);
            table.route(self.info.port, &view, None)
        };
        if let Route::Pool(p) = &route
            && p.h2c()
        {
            // HTTP/2 backends are hyper's to speak to.
            return Err(());
        }
        // The head for the backend: the request line and headers as they came, minus the forwarding
        // headers, which are set here.
        let mut out = Vec::with_capacity(len + 160);
        let mut rid_at = 0..0;
        if matches!(route, Route::Pool(_)) {
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            out.extend_from_slice(target.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
            for h in req.headers.iter() {
                if [
                    "x-forwarded-for",
                    "x-forwarded-proto",
                    "x-forwarded-host",
                    "x-request-id",
                ]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n))
                {
                    continue;
                }
                out.extend_from_slice(h.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(h.value);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"x-forwarded-for: ");
            if let Some(prev) = xff {
                out.extend_from_slice(prev);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(self.peer_ip.as_bytes());
            out.extend_from_slice(if self.info.tls {
                b"\r\nx-forwarded-proto: https\r\nx-forwarded-host: "
            } else {
                b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: "
            });
            out.extend_from_slice(host_hdr.as_bytes());
            out.extend_from_slice(b"\r\nx-request-id: ");
            rid_at.start = out.len();
            match rid {
                Some(v) if !v.is_empty() && v.len() <= 128 => out.extend_from_slice(v),
                _ => {
                    let mut id = [0u8; 20];
                    self.shared.ids.fill(&mut id);
                    out.extend_from_slice(&id);
                }
            }
            rid_at.end = out.len();
            out.extend_from_slice(b"\r\n\r\n");
        }
        let head_request = method == "HEAD";
        let idempotent = matches!(method, "GET" | "HEAD" | "OPTIONS");
        self.buf.advance(len);
        let length = length.unwrap_or(0);
        let buffered = (self.buf.len() as u64).min(length);
        out.extend_from_slice(&self.buf[..buffered as usize]);
        self.buf.advance(buffered as usize);
        Ok(Some(Head {
            route,
            out,
            body_left: length - buffered,
            head_request,
            idempotent,
            start,
            rid: rid_at,
        }))
    }
}

/// Bytes allowed in a fast-path request target (RFC 3986 characters); others go to hyper.
fn uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}
