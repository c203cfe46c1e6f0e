//! WebSocket upgrades, HTTP/2 (h2c and ALPN), TLS chosen by SNI and reloaded, forwarding headers, and
//! streamed bodies.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use atlantis_router::config::CertConfig;
use atlantis_testkit::{ZooKeeper, eventually, ports::free_port, require_bin};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Backend, Conf, Router, client, one_pool, wait_ok, wait_route};

async fn simple_setup(test: &str) -> (Conf, Backend, u16) {
    let (conf, b, port) = one_pool(test, "static", "true").await;
    (conf, b, port)
}

/// Opens a WebSocket through the router (the test backend echoes after its 101).
pub(crate) async fn ws_open(port: u16) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s
}

/// A masked text frame "hello" goes through the tunnel and comes back byte for byte.
pub(crate) async fn ws_echo(s: &mut tokio::net::TcpStream) {
    let frame = [
        0x81u8,
        0x85,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ];
    s.write_all(&frame).await.unwrap();
    let mut back = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(back, frame);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_echoes() {
    let (conf, _b, port) = simple_setup("ws").await;
    let router = Router::start(&conf).await;
    wait_ok(port, "/", "b").await;
    let mut s = ws_open(port).await;
    for _ in 0..3 {
        ws_echo(&mut s).await;
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_idle_tunnel_is_closed() {
    let (conf, _b, port) = simple_setup("wsidle").await;
    let idle = Duration::from_millis(400);
    let router = Router::start_with(&conf, |c| {
        c.limits.tunnel_idle_timeout_ms = idle.as_millis() as u64
    })
    .await;
    wait_ok(port, "/", "b").await;
    let mut s = ws_open(port).await;
    // An active tunnel outlives the idle timeout many times over.
    let active = std::time::Instant::now();
    while active.elapsed() < idle * 4 {
        tokio::time::sleep(idle / 4).await;
        ws_echo(&mut s).await;
    }
    // A quiet one is closed by the router: the read ends (EOF or reset) after the timeout, not before.
    let quiet = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the router closes an idle tunnel");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "unexpected bytes on an idle tunnel: {r:?}"
    );
    assert!(
        quiet.elapsed() >= idle - Duration::from_millis(50),
        "closed after {:?}, before the idle timeout",
        quiet.elapsed()
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_and_forwarding_headers() {
    let (conf, _b, port) = simple_setup("h2").await;
    let router = Router::start(&conf).await;
    let url = format!("http://127.0.0.1:{port}/hello?x=1");
    wait_route(&client(), &url, "x.test", 200, "b").await;
    // h2c with prior knowledge, from reqwest...
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // A Host header that disagrees with the authority does not reach the backend.
    let r = h2
        .get(&url)
        .header("x-request-id", "abc-123")
        .header("x-forwarded-for", "10.1.2.3")
        .header("host", "internal.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
    assert_eq!(
        seen["headers"]["x-forwarded-for"], "10.1.2.3, 127.0.0.1",
        "{seen}"
    );
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        format!("127.0.0.1:{port}"),
        "{seen}"
    );
    assert_eq!(seen["headers"]["x-request-id"], "abc-123", "{seen}");
    assert_eq!(
        seen["headers"]["host"],
        format!("127.0.0.1:{port}"),
        "{seen}"
    );
    assert_eq!(seen["path"], "/hello");
    assert_eq!(seen["query"], "x=1");
    // ...and from curl.
    require_bin("curl", "curl");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // HTTP/1.1: hop-by-hop headers are dropped both ways, a request id is added.
    let r = client()
        .get(&url)
        .header("connection", "keep-alive, x-private")
        .header("x-private", "1")
        .header("keep-alive", "timeout=5")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-hop").is_none(), "{:?}", r.headers());
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let seen: serde_json::Value = r.json().await.unwrap();
    assert!(seen["headers"].get("x-private").is_none(), "{seen}");
    assert!(seen["headers"].get("keep-alive").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-request-id"], rid.as_str(), "{seen}");
    assert_eq!(rid.len(), 20);
    // HTTP/1.1 absolute form: the target's authority is the Host the backend sees.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        b"GET http://public.test/abs HTTP/1.1\r\nHost: internal.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let seen: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(seen["headers"]["host"], "public.test", "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-host"], "public.test", "{seen}");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let (conf, _b, port) = simple_setup("stream").await;
    let router = Router::start(&conf).await;
    let c = client();
    wait_route(&c, &format!("http://127.0.0.1:{port}/"), "x.test", 200, "b").await;
    let big = c
        .get(format!("http://127.0.0.1:{port}/big"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(big.len(), 8 << 20);
    let payload: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        payload.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let back = c
        .post(format!("http://127.0.0.1:{port}/echo"))
        .body(body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        back.as_ref() == payload.as_slice(),
        "echoed {} bytes",
        back.len()
    );
    router.stop().await;
}

pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA, as `ca.pem` / `ca.key`.
pub(crate) fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Test CA",
        ],
    );
}

/// A leaf for `name` signed by the CA, as `<name>.pem` / `<name>.key`; the subject's O is `org`.
pub(crate) fn make_leaf(dir: &Path, name: &str, org: &str) {
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!("basicConstraints=CA:FALSE\nsubjectAltName=DNS:{name}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key.new"),
            "-subj",
            &format!("/O={org}/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem.new"),
        ],
    );
    // Swap both files in by rename so the router never sees half a pair for long.
    std::fs::rename(
        dir.join(format!("{name}.key.new")),
        dir.join(format!("{name}.key")),
    )
    .unwrap();
    std::fs::rename(
        dir.join(format!("{name}.pem.new")),
        dir.join(format!("{name}.pem")),
    )
    .unwrap();
}

fn curl_tls(dir: &Path, name: &str, port: u16, extra: &[&str]) -> (String, String) {
    let url = format!("https://{name}:{port}/");
    let resolve = format!("{name}:{port}:127.0.0.1");
    let ca = dir.join("ca.pem");
    let mut args = vec![
        "-sS",
        "-v",
        "--noproxy",
        "*",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = Command::new("curl")
        .args(&args)
        .env_remove("CURL_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_by_sni_and_reload() {
    require_bin("openssl", "openssl");
    require_bin("curl", "curl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d);
    make_leaf(d, "a.example", "first");
    make_leaf(d, "b.example", "first");
    let zk = ZooKeeper::shared();
    let conf = Conf::new(&zk.connect_string(), "tls").await;
    let b = Backend::start("b").await;
    conf.pool("p", json!({"healthz_every_ms": 200})).await;
    conf.backend("p", &b.node()).await;
    conf.rule("all", "static", "true", "p").await;
    conf.trie("root", &["all"]).await;
    let port = free_port();
    conf.put(
        atlantis_common::zk::Section::Ports,
        "secure",
        json!({"port": port, "trie": "root", "tls": true}),
    )
    .await;
    let certs = vec![
        CertConfig {
            names: vec!["a.example".into()],
            cert: d.join("a.example.pem"),
            key: d.join("a.example.key"),
        },
        CertConfig {
            names: vec!["b.example".into()],
            cert: d.join("b.example.pem"),
            key: d.join("b.example.key"),
        },
    ];
    let router = Router::start_with(&conf, |c| {
        c.tls.certs = certs;
        c.tls.reload_interval_ms = 100;
    })
    .await;
    let (out, err) = eventually(Duration::from_secs(15), "TLS port to serve", || async {
        let (out, err) = curl_tls(d, "a.example", port, &[]);
        (out == "2 200").then_some((out, err))
    })
    .await;
    assert!(
        err.contains("subject: O=first; CN=a.example")
            || err.contains("subject: O = first, CN = a.example"),
        "{out} {err}"
    );
    assert!(
        err.contains("ALPN: server accepted h2") || err.contains("ALPN, server accepted to use h2"),
        "{err}"
    );
    let (out, err) = curl_tls(d, "b.example", port, &["--http1.1"]);
    assert_eq!(out, "1.1 200", "{err}");
    assert!(
        err.contains("CN=b.example") || err.contains("CN = b.example"),
        "{err}"
    );
    // Replace a.example's certificate on disk: the router picks up the new one.
    make_leaf(d, "a.example", "second");
    eventually(
        Duration::from_secs(10),
        "the reloaded certificate",
        || async {
            let (out, err) = curl_tls(d, "a.example", port, &[]);
            (out == "2 200" && (err.contains("O=second") || err.contains("O = second")))
                .then_some(())
        },
    )
    .await;
    // A client trusting another CA is refused.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--resolve",
            &format!("a.example:{port}:127.0.0.1"),
            &format!("https://a.example:{port}/"),
        ])
        .env("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    router.stop().await;
}
