//! Health probes, each bounded by a short timeout: HTTP GETs (reqwest), ZooKeeper's `ruok`, and the
//! Docker Engine's `/_ping` on its unix socket.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster CA directory, once `main` knows the data dir: `https://` calls (the supervisors) trust
/// that CA and present the manager's client certificate, as the manager does.
static CLUSTER_CA: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Uses the development CA in `dir` for `https://` calls.
pub fn use_cluster_ca(dir: &Path) {
    let _ = CLUSTER_CA.set(dir.to_owned());
}

/// A client for probes and API calls: no proxy, bounded timeouts; mutual TLS with the cluster CA when
/// it exists.
pub fn http_client() -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(Duration::from_secs(30));
    if let Some(dir) = CLUSTER_CA.get()
        && let Ok(tls) = atlantis_common::tls::client_config(
            &dir.join("ca.pem"),
            Some((&dir.join("client.pem"), &dir.join("client-key.pem"))),
        )
    {
        b = b.use_preconfigured_tls(tls);
    }
    b.build()
        .expect("an HTTP client with a checked TLS config builds")
}

/// `GET url` (with `Authorization: Bearer token` when given); the status, or an error text.
pub async fn http_status(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<u16, String> {
    let mut r = http.get(url).timeout(PROBE_TIMEOUT);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    match r.send().await {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(e) => Err(error_chain(&e)),
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// ZooKeeper's `ruok` four-letter word answers `imok`.
pub async fn zk_ok(addr: SocketAddr) -> Result<(), String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"ruok").await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        if buf == b"imok" {
            Ok(())
        } else {
            Err(format!("answered {:?}", String::from_utf8_lossy(&buf)))
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// The engine answers `GET /_ping` with 200 on its socket.
pub async fn docker_ok(socket: &Path) -> Result<(), String> {
    let fut = async {
        let mut s = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        if buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200") {
            Ok(())
        } else {
            Err("not ready".into())
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}
