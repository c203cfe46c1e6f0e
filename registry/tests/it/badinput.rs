//! Bad input: each request gets its spec error code, nothing is stored, nothing panics.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;

use crate::common::{
    Backend, TestRegistry, bytes, client, error_code, image_manifest, push_blob, sha256,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Every file under the storage root, relative, sorted.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Sends a raw request whose body is cut short, then closes the connection.
fn truncated(addr: std::net::SocketAddr, head: &str, announced: usize, sent: &[u8]) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{head}\r\nHost: {addr}\r\nContent-Length: {announced}\r\n\r\n"
    )
    .unwrap();
    s.write_all(sent).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
}

/// A GET with the path exactly as given; returns (status, body).
fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_spec_errors_and_stores_nothing() {
    let r = TestRegistry::start_with(Backend::Fs, None, |c| {
        c.limits.max_manifest_bytes = 64 * 1024
    })
    .await;
    let root = r.dir.path().join("storage");
    let c = client();
    let layer = bytes(1, 10_000);
    let ld = push_blob(&c, &r, "apps/t", &layer).await;
    let config = b"{}".to_vec();
    push_blob(&c, &r, "apps/t", &config).await;
    let before = files(&root);

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        // Wrong, malformed and hostile digests.
        (
            c.post(r.url(&format!(
                "/v2/apps/t/blobs/uploads/?digest={}",
                sha256(b"other")
            )))
            .body(layer.clone()),
            400,
            "DIGEST_INVALID",
        ),
        (
            c.post(r.url("/v2/apps/t/blobs/uploads/?digest=sha256:1234"))
                .body(layer.clone()),
            400,
            "DIGEST_INVALID",
        ),
        (
            c.post(r.url("/v2/apps/t/blobs/uploads/?digest=md5:d41d8cd98f00b204e9800998ecf8427e"))
                .body(b"x".to_vec()),
            400,
            "DIGEST_INVALID",
        ),
        (
            c.get(r.url("/v2/apps/t/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd")),
            400,
            "NAME_INVALID",
        ),
        (
            c.get(r.url("/v2/apps/t/blobs/sha256:....etc")),
            400,
            "DIGEST_INVALID",
        ),
        (
            c.get(r.url("/v2/apps/t/blobs/SHA256:ABC")),
            400,
            "DIGEST_INVALID",
        ),
        (
            c.get(r.url(&format!("/v2/apps/t/blobs/{}", sha256(b"absent")))),
            404,
            "BLOB_UNKNOWN",
        ),
        // Invalid names and traversal in names.
        (c.get(r.url("/v2/UPPER/tags/list")), 400, "NAME_INVALID"),
        (
            c.get(r.url("/v2/a%2Fb/manifests/latest")),
            400,
            "NAME_INVALID",
        ),
        (
            c.post(r.url("/v2/a__-b/blobs/uploads/")),
            400,
            "NAME_INVALID",
        ),
        (
            c.get(r.url(&format!("/v2/{}/tags/list", "a".repeat(300)))),
            400,
            "NAME_INVALID",
        ),
        (
            c.put(r.url("/v2/apps/t/manifests/.hidden"))
                .body(b"{}".to_vec()),
            400,
            "MANIFEST_INVALID",
        ),
        // Manifests: malformed, wrong schema, unknown blobs, digest mismatch, oversized.
        (
            c.put(r.url("/v2/apps/t/manifests/m"))
                .header("content-type", OCI_MANIFEST)
                .body(b"{not json".to_vec()),
            400,
            "MANIFEST_INVALID",
        ),
        (
            c.put(r.url("/v2/apps/t/manifests/m"))
                .header("content-type", OCI_MANIFEST)
                .body(b"{\"schemaVersion\":1}".to_vec()),
            400,
            "MANIFEST_INVALID",
        ),
        (
            c.put(r.url("/v2/apps/t/manifests/m"))
                .header("content-type", OCI_MANIFEST)
                .body(image_manifest(&config, &[b"missing layer"], None, None)),
            400,
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            c.put(r.url(&format!("/v2/apps/t/manifests/{}", sha256(b"other"))))
                .header("content-type", OCI_MANIFEST)
                .body(image_manifest(&config, &[&layer], None, None)),
            400,
            "DIGEST_INVALID",
        ),
        (
            c.put(r.url("/v2/apps/t/manifests/m"))
                .header("content-type", OCI_MANIFEST)
                .body(vec![b' '; 100_000]),
            413,
            "SIZE_INVALID",
        ),
        (
            c.get(r.url("/v2/apps/t/manifests/nope")),
            404,
            "MANIFEST_UNKNOWN",
        ),
        // Uploads: unknown sessions and ids that are not UUIDs.
        (
            c.patch(r.url("/v2/apps/t/blobs/uploads/00000000-0000-4000-8000-000000000000"))
                .body(b"x".to_vec()),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            c.get(r.url("/v2/apps/t/blobs/uploads/..%2F..%2Fx")),
            400,
            "NAME_INVALID",
        ),
        (
            c.put(r.url("/v2/apps/t/blobs/uploads/not-a-uuid?digest=sha256:00")),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        // Wrong methods.
        (c.post(r.url("/v2/apps/t/manifests/x")), 405, "UNSUPPORTED"),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        let (s, got) = error_code(req.send().await.unwrap()).await;
        assert_eq!((s, got.as_str()), (status, code), "case {i}");
    }

    // Traversal that an HTTP client library would normalise away is sent raw.
    for path in [
        "/v2/%2e%2e/%2e%2e/etc/manifests/latest",
        "/v2/../../etc/manifests/latest",
        "/v2/apps/t/blobs/..%2f..%2fdata",
    ] {
        let (status, body) = raw_get(r.addr, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("NAME_INVALID"), "{path}: {body}");
    }

    // A manifest pointing at a blob with the wrong size is invalid.
    let mut wrong = serde_json::from_slice::<serde_json::Value>(&image_manifest(
        &config,
        &[&layer],
        None,
        None,
    ))
    .unwrap();
    wrong["layers"][0]["size"] = serde_json::json!(5);
    let resp = c
        .put(r.url("/v2/apps/t/manifests/m"))
        .header("content-type", OCI_MANIFEST)
        .body(serde_json::to_vec(&wrong).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (400, "MANIFEST_INVALID".to_owned()));

    // Chunks: out of order, overlapping, length mismatches. Each leaves the stored upload as it was or gone.
    let resp = c
        .post(r.url("/v2/apps/t/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        c.patch(r.url(&loc))
            .header("content-range", "0-9")
            .body(vec![7u8; 10])
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let resp = c
        .patch(r.url(&loc))
        .header("content-range", "20-29")
        .body(vec![7u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await,
        (416, "BLOB_UPLOAD_INVALID".to_owned()),
        "gap"
    );
    let resp = c
        .patch(r.url(&loc))
        .header("content-range", "5-14")
        .body(vec![7u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await,
        (416, "BLOB_UPLOAD_INVALID".to_owned()),
        "overlap"
    );
    let resp = c
        .patch(r.url(&loc))
        .header("content-range", "10-19")
        .body(vec![7u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await,
        (400, "SIZE_INVALID".to_owned()),
        "range and length disagree"
    );
    let resp = c.get(r.url(&loc)).send().await.unwrap();
    assert_eq!(
        resp.headers()["range"],
        "0-9",
        "refused chunks appended nothing"
    );
    assert_eq!(c.delete(r.url(&loc)).send().await.unwrap().status(), 204);
    let resp = c
        .put(r.url(&format!("{loc}?digest={}", sha256(&[7u8; 10]))))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await.0,
        404,
        "a cancelled upload cannot be completed"
    );
    // A final chunk that makes the digest wrong fails the commit and removes the upload.
    let resp = c
        .post(r.url("/v2/apps/t/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    let resp = c
        .patch(r.url(&loc))
        .header("content-range", "0-9")
        .body(vec![7u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = c
        .put(r.url(&format!("{loc}?digest={}", sha256(&[7u8; 11]))))
        .body(vec![8u8; 1])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (400, "DIGEST_INVALID".to_owned()));
    assert_eq!(
        error_code(c.get(r.url(&loc)).send().await.unwrap()).await.0,
        404,
        "a failed commit removes the upload"
    );

    // Truncated bodies: monolithic and chunked.
    truncated(
        r.addr,
        &format!(
            "POST /v2/apps/t/blobs/uploads/?digest={} HTTP/1.1",
            sha256(&bytes(5, 100_000))
        ),
        100_000,
        &bytes(5, 100_000)[..40_000],
    );
    let resp = c
        .post(r.url("/v2/apps/t/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    truncated(
        r.addr,
        &format!("PATCH {loc} HTTP/1.1"),
        50_000,
        &[1u8; 20_000],
    );
    atlantis_testkit::eventually(
        Duration::from_secs(10),
        "truncated uploads to be discarded",
        || async {
            let uploads = files(&root)
                .into_iter()
                .filter(|f| f.contains("_uploads"))
                .count();
            (uploads == 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        error_code(c.get(r.url(&loc)).send().await.unwrap()).await.0,
        404
    );

    // Nothing new was stored, and the good blob is intact.
    assert_eq!(files(&root), before, "bad requests stored nothing");
    let got = c
        .get(r.url(&format!("/v2/apps/t/blobs/{ld}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == layer[..]);
    let resp = c.get(r.url("/v2/apps/t/tags/list")).send().await.unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!([]));
    r.stop().await;
}

/// A client that stops sending mid-body is cut off after the idle timeout, and its upload is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_is_abandoned() {
    let r = TestRegistry::start_with(Backend::Fs, None, |c| {
        c.limits.body_idle_timeout = Duration::from_millis(500)
    })
    .await;
    let c = client();
    let resp = c
        .post(r.url("/v2/apps/slow/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    let addr = r.addr;
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "PATCH {loc} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n\r\n"
        )
        .unwrap();
        s.write_all(&[1u8; 100]).unwrap();
        // Keep the connection open without sending the rest.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        (
            String::from_utf8_lossy(&buf[..n]).into_owned(),
            started.elapsed(),
            loc,
        )
    })
    .await
    .unwrap();
    let (text, waited, loc) = reply;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("BLOB_UPLOAD_INVALID"), "{text}");
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    assert_eq!(
        error_code(c.get(r.url(&loc)).send().await.unwrap()).await.0,
        404,
        "upload discarded"
    );
    r.stop().await;
}

/// With deletes disabled, DELETE of blobs and manifests is refused and removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_can_be_disabled() {
    let r = TestRegistry::start_with(Backend::Fs, None, |c| c.delete_enabled = false).await;
    let c = client();
    let layer = bytes(3, 1000);
    let ld = push_blob(&c, &r, "apps/keep", &layer).await;
    let resp = c
        .delete(r.url(&format!("/v2/apps/keep/blobs/{ld}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (405, "UNSUPPORTED".to_owned()));
    let resp = c
        .delete(r.url("/v2/apps/keep/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (405, "UNSUPPORTED".to_owned()));
    let resp = c
        .head(r.url(&format!("/v2/apps/keep/blobs/{ld}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    r.stop().await;
}

/// Uploads streaming at once are bounded: one more gets 429 TOOMANYREQUESTS until a permit frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_are_bounded() {
    let r = TestRegistry::start_with(Backend::Fs, None, |c| {
        c.limits.max_concurrent_uploads = 1;
        c.limits.body_idle_timeout = Duration::from_secs(2);
    })
    .await;
    let c = client();
    let start = || async {
        let resp = c
            .post(r.url("/v2/apps/busy/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        resp.headers()["location"].to_str().unwrap().to_owned()
    };
    let stalled = start().await;
    let addr = r.addr;
    let holder = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "PATCH {stalled} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n\r\n"
        )
        .unwrap();
        s.write_all(&[1u8; 10]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let other = start().await;
    atlantis_testkit::eventually(
        Duration::from_secs(10),
        "a 429 while the stalled body holds the permit",
        || async {
            let resp = c
                .patch(r.url(&other))
                .body(vec![2u8; 5])
                .send()
                .await
                .unwrap();
            if resp.status() == 429 {
                let (_, code) = error_code(resp).await;
                assert_eq!(code, "TOOMANYREQUESTS");
                Some(())
            } else {
                assert_eq!(resp.status(), 202);
                None
            }
        },
    )
    .await;
    let text = holder.await.unwrap();
    assert!(
        text.starts_with("HTTP/1.1 400"),
        "the stalled body is cut off: {text}"
    );
    let resp = c
        .patch(r.url(&other))
        .body(vec![2u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "the permit is free again");
    r.stop().await;
}
