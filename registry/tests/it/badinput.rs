//! Bad input: each request gets its spec error code, nothing is stored, nothing panics.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;

use crate::common::{
    Backend, Call as _, OCI_MANIFEST, TestRegistry, Then, bytes, error_code, image_manifest,
    partial_request, sha256,
};

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
    partial_request(
        addr,
        head,
        announced,
        sent,
        Then::Close(Duration::from_secs(10)),
    );
}

/// A PATCH of `loc` announcing 1000 bytes that sends only `sent` and then stalls, from a blocking task.
/// Returns the reply and how long it took.
fn stalled_patch(
    addr: std::net::SocketAddr,
    loc: &str,
    sent: usize,
) -> tokio::task::JoinHandle<(String, Duration)> {
    let head = format!("PATCH {loc} HTTP/1.1");
    tokio::task::spawn_blocking(move || {
        partial_request(
            addr,
            &head,
            1000,
            &vec![1u8; sent],
            Then::Stall(Duration::from_secs(20)),
        )
    })
}

/// A filesystem registry with its configuration tweaked.
async fn registry(tweak: impl FnOnce(&mut atlantis_registry::Config)) -> TestRegistry {
    TestRegistry::start_with(Backend::Fs, None, tweak).await
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
    let r = registry(|c| c.limits.max_manifest_bytes = 64 * 1024).await;
    let root = r.root();
    let layer = bytes(1, 10_000);
    let ld = r.push_blob("apps/t", &layer).await;
    let config = b"{}".to_vec();
    r.push_blob("apps/t", &config).await;
    let before = files(&root);
    let manifest =
        |reference: &str, body: Vec<u8>| r.put_manifest("apps/t", reference, OCI_MANIFEST, body);

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        // Wrong, malformed and hostile digests.
        (
            r.post(format!(
                "/v2/apps/t/blobs/uploads/?digest={}",
                sha256(b"other")
            ))
            .body(layer.clone()),
            400,
            "DIGEST_INVALID",
        ),
        (
            r.post("/v2/apps/t/blobs/uploads/?digest=sha256:1234")
                .body(layer.clone()),
            400,
            "DIGEST_INVALID",
        ),
        (
            r.post("/v2/apps/t/blobs/uploads/?digest=md5:d41d8cd98f00b204e9800998ecf8427e")
                .body(b"x".to_vec()),
            400,
            "DIGEST_INVALID",
        ),
        (
            r.get("/v2/apps/t/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd"),
            400,
            "NAME_INVALID",
        ),
        (
            r.get("/v2/apps/t/blobs/sha256:....etc"),
            400,
            "DIGEST_INVALID",
        ),
        (r.get("/v2/apps/t/blobs/SHA256:ABC"), 400, "DIGEST_INVALID"),
        (
            r.get(format!("/v2/apps/t/blobs/{}", sha256(b"absent"))),
            404,
            "BLOB_UNKNOWN",
        ),
        // Invalid names and traversal in names.
        (r.get("/v2/UPPER/tags/list"), 400, "NAME_INVALID"),
        (r.get("/v2/a%2Fb/manifests/latest"), 400, "NAME_INVALID"),
        (r.post("/v2/a__-b/blobs/uploads/"), 400, "NAME_INVALID"),
        (
            r.get(format!("/v2/{}/tags/list", "a".repeat(300))),
            400,
            "NAME_INVALID",
        ),
        (
            r.put("/v2/apps/t/manifests/.hidden").body(b"{}".to_vec()),
            400,
            "MANIFEST_INVALID",
        ),
        // Manifests: malformed, wrong schema, unknown blobs, digest mismatch, oversized.
        (
            manifest("m", b"{not json".to_vec()),
            400,
            "MANIFEST_INVALID",
        ),
        (
            manifest("m", b"{\"schemaVersion\":1}".to_vec()),
            400,
            "MANIFEST_INVALID",
        ),
        (
            manifest(
                "m",
                image_manifest(&config, &[b"missing layer"], None, None),
            ),
            400,
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            manifest(
                &sha256(b"other"),
                image_manifest(&config, &[&layer], None, None),
            ),
            400,
            "DIGEST_INVALID",
        ),
        (
            r.put("/v2/apps/t/manifests/m")
                .header("content-type", OCI_MANIFEST)
                .body(vec![b' '; 100_000]),
            413,
            "SIZE_INVALID",
        ),
        (r.get("/v2/apps/t/manifests/nope"), 404, "MANIFEST_UNKNOWN"),
        // Reading a reference that is neither a tag nor a digest: unknown, not invalid.
        (
            r.get("/v2/apps/t/manifests/.hidden"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            r.get("/v2/apps/t/manifests/sha256:1234"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            r.get(format!("/v2/apps/t/manifests/{}", "x".repeat(200))),
            404,
            "MANIFEST_UNKNOWN",
        ),
        // Uploads: unknown sessions and ids that are not UUIDs.
        (
            r.patch("/v2/apps/t/blobs/uploads/00000000-0000-4000-8000-000000000000")
                .body(b"x".to_vec()),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            r.get("/v2/apps/t/blobs/uploads/..%2F..%2Fx"),
            400,
            "NAME_INVALID",
        ),
        (
            r.put("/v2/apps/t/blobs/uploads/not-a-uuid?digest=sha256:00"),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        // Wrong methods.
        (r.post("/v2/apps/t/manifests/x"), 405, "UNSUPPORTED"),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        assert_eq!(req.error().await, (status, code), "case {i}");
    }
    // HEAD has no body to carry a code: the status alone says unknown.
    for reference in [".hidden", "sha256:1234"] {
        let head = r.head(format!("/v2/apps/t/manifests/{reference}")).send();
        assert_eq!(head.await.unwrap().status(), 404, "HEAD {reference}");
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
    let put = manifest("m", serde_json::to_vec(&wrong).unwrap());
    assert_eq!(put.error().await, (400, "MANIFEST_INVALID"));

    // Chunks: out of order, overlapping, length mismatches. Each leaves the stored upload as it was or gone.
    let loc = r.start_upload("apps/t").await;
    assert_eq!(r.chunk(&loc, "0-9", vec![7u8; 10]).status().await, 202);
    assert_eq!(
        r.chunk(&loc, "20-29", vec![7u8; 10]).error().await,
        (416, "BLOB_UPLOAD_INVALID"),
        "gap"
    );
    assert_eq!(
        r.chunk(&loc, "5-14", vec![7u8; 10]).error().await,
        (416, "BLOB_UPLOAD_INVALID"),
        "overlap"
    );
    assert_eq!(
        r.chunk(&loc, "10-19", vec![7u8; 5]).error().await,
        (400, "SIZE_INVALID"),
        "range and length disagree"
    );
    let resp = r.get(&loc).call().await;
    assert_eq!(
        resp.headers()["range"],
        "0-9",
        "refused chunks appended nothing"
    );
    assert_eq!(r.delete(&loc).status().await, 204);
    let put = r.put(format!("{loc}?digest={}", sha256(&[7u8; 10])));
    assert_eq!(
        put.error().await.status,
        404,
        "a cancelled upload cannot be completed"
    );
    // A final chunk that makes the digest wrong fails the commit and removes the upload.
    let loc = r.start_upload("apps/t").await;
    assert_eq!(r.chunk(&loc, "0-9", vec![7u8; 10]).status().await, 202);
    let put = r
        .put(format!("{loc}?digest={}", sha256(&[7u8; 11])))
        .body(vec![8u8; 1]);
    assert_eq!(put.error().await, (400, "DIGEST_INVALID"));
    assert_eq!(
        r.get(&loc).error().await.status,
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
    let loc = r.start_upload("apps/t").await;
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
    assert_eq!(r.get(&loc).error().await.status, 404);

    // Nothing new was stored, and the good blob is intact.
    assert_eq!(files(&root), before, "bad requests stored nothing");
    assert!(r.blob("apps/t", &ld).await[..] == layer[..]);
    assert_eq!(r.tags("apps/t").await, serde_json::json!([]));
    r.stop().await;
}

/// A client that stops sending mid-body is cut off after the idle timeout, and its upload is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_is_abandoned() {
    let r = registry(|c| c.limits.body_idle_timeout = Duration::from_millis(500)).await;
    let loc = r.start_upload("apps/slow").await;
    let (text, waited) = stalled_patch(r.addr, &loc, 100).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("BLOB_UPLOAD_INVALID"), "{text}");
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    assert_eq!(r.get(&loc).error().await.status, 404, "upload discarded");
    r.stop().await;
}

/// With deletes disabled, DELETE of blobs and manifests is refused and removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_can_be_disabled() {
    let r = registry(|c| c.delete_enabled = false).await;
    let layer = bytes(3, 1000);
    let ld = r.push_blob("apps/keep", &layer).await;
    let blob = r.delete(format!("/v2/apps/keep/blobs/{ld}"));
    assert_eq!(blob.error().await, (405, "UNSUPPORTED"));
    let manifest = r.delete("/v2/apps/keep/manifests/latest");
    assert_eq!(manifest.error().await, (405, "UNSUPPORTED"));
    assert_eq!(r.blob_status("apps/keep", &ld).await, 200);
    r.stop().await;
}

/// Uploads streaming at once are bounded: one more gets 429 TOOMANYREQUESTS until a permit frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_are_bounded() {
    let r = registry(|c| {
        c.limits.max_concurrent_uploads = 1;
        c.limits.body_idle_timeout = Duration::from_secs(2);
    })
    .await;
    let stalled = r.start_upload("apps/busy").await;
    let holder = stalled_patch(r.addr, &stalled, 10);
    let other = r.start_upload("apps/busy").await;
    atlantis_testkit::eventually(
        Duration::from_secs(10),
        "a 429 while the stalled body holds the permit",
        || async {
            let resp = r.patch(&other).body(vec![2u8; 5]).call().await;
            if resp.status() == 429 {
                assert_eq!(error_code(resp).await.code, "TOOMANYREQUESTS");
                Some(())
            } else {
                assert_eq!(resp.status(), 202);
                None
            }
        },
    )
    .await;
    let (text, _) = holder.await.unwrap();
    assert!(
        text.starts_with("HTTP/1.1 400"),
        "the stalled body is cut off: {text}"
    );
    let patch = r.patch(&other).body(vec![2u8; 5]);
    assert_eq!(patch.status().await, 202, "the permit is free again");
    r.stop().await;
}
