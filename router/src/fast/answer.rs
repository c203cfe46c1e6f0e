//! Answers made by the router on the fast path (no route, no backend, backend errors and timeouts, and
//! the refusal of ambiguous framing). Each carries a `Date` header, like hyper's answers, and is written
//! within the body idle timeout (a client that stops reading does not hold the connection).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpStream;

use super::{Conn, Head, date, io};
use crate::idle::IdleBound;
use crate::pool::{BackendState, PoolState};

impl Conn<'_> {
    /// A router-made answer for a routed request (counted in the pool's metrics).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn routed_answer(
        &mut self,
        client: &mut TcpStream,
        head: &Head,
        pool: &PoolState,
        backend: Option<&Arc<BackendState>>,
        status: StatusCode,
        code: &'static str,
        text: &'static str,
    ) -> bool {
        pool.metrics
            .record(status.as_u16(), head.start.elapsed().as_secs_f64());
        if self.shared.access_log {
            tracing::info!(target: "atlantis_router::access", port = self.info.port, peer = %self.info.peer,
                pool = pool.name.as_str(), backend = backend.map(|b| b.name.as_str()).unwrap_or("-"),
                status = status.as_u16(), ms = head.start.elapsed().as_secs_f64() * 1000.0,
                "Request routed.");
        }
        self.answer(client, head, status, code, text).await
    }

    /// Writes a router-made answer. The connection stays open unless the request body is unread.
    pub(super) async fn answer(
        &mut self,
        client: &mut TcpStream,
        head: &Head,
        status: StatusCode,
        code: &'static str,
        text: &'static str,
    ) -> bool {
        let keep = head.body_left == 0;
        let body = if head.head_request { "" } else { text };
        self.write_answer(client, status, Some(code), text.len(), keep, body)
            .await
            && keep
    }

    /// The 400 for a request with both `Content-Length` and `Transfer-Encoding` (the connection closes).
    pub(super) async fn refuse_framing(&mut self, client: &mut TcpStream) {
        const TEXT: &str = "both Content-Length and Transfer-Encoding\n";
        let status = StatusCode::BAD_REQUEST;
        self.write_answer(client, status, None, TEXT.len(), false, TEXT)
            .await;
    }

    /// Formats and writes an answer; false if it could not be written.
    async fn write_answer(
        &mut self,
        client: &mut TcpStream,
        status: StatusCode,
        code: Option<&'static str>,
        length: usize,
        keep: bool,
        body: &str,
    ) -> bool {
        let out = &mut self.out;
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
        );
        if let Some(code) = code {
            let _ = write!(out, "x-atlantis-error: {code}\r\n");
        }
        date::put_header(out);
        let _ = write!(
            out,
            "content-length: {length}\r\n{}\r\n{body}",
            if keep { "" } else { "connection: close\r\n" },
        );
        let mut bound = IdleBound::new(Duration::from_millis(self.limits.body_idle_timeout_ms));
        io::write_all(client, out, &mut self.timer, &mut bound)
            .await
            .is_ok()
    }
}
