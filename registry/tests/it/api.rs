//! The Distribution API over HTTP, against the filesystem and the S3 driver.

use reqwest::StatusCode;

use crate::common::{
    Backend, TestRegistry, bytes, client, error_code, image_manifest, push_blob, push_image, sha256,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn h<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn flow(backend: Backend) {
    let r = TestRegistry::start(backend).await;
    let c = client();

    let resp = c.get(r.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "docker-distribution-api-version"), "registry/2.0");

    // Monolithic blob push, HEAD, GET, ranges.
    let layer = bytes(1, 300_000);
    let ld = push_blob(&c, &r, "apps/web", &layer).await;
    let resp = c
        .head(r.url(&format!("/v2/apps/web/blobs/{ld}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "content-length"), "300000");
    assert_eq!(h(&resp, "docker-content-digest"), ld);
    let got = c
        .get(r.url(&format!("/v2/apps/web/blobs/{ld}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == layer[..], "blob content round-trips");
    let resp = c
        .get(r.url(&format!("/v2/apps/web/blobs/{ld}")))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(h(&resp, "content-range"), "bytes 10-19/300000");
    assert_eq!(&resp.bytes().await.unwrap()[..], &layer[10..20]);
    let resp = c
        .get(r.url(&format!("/v2/apps/web/blobs/{ld}")))
        .header("range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    // The blob is not visible in another repository.
    let resp = c
        .head(r.url(&format!("/v2/apps/other/blobs/{ld}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // Chunked upload with Content-Range, status, an out-of-order chunk, then PUT with the last chunk.
    let big = bytes(2, 250_000);
    let bd = sha256(&big);
    let resp = c
        .post(r.url("/v2/apps/web/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let loc = h(&resp, "location").to_owned();
    assert!(loc.starts_with("/v2/apps/web/blobs/uploads/"), "{loc}");
    assert_eq!(h(&resp, "range"), "0-0");
    let resp = c
        .patch(r.url(&loc))
        .header("content-range", "0-99999")
        .header("content-type", "application/octet-stream")
        .body(big[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(h(&resp, "range"), "0-99999");
    let resp = c.get(r.url(&loc)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(h(&resp, "range"), "0-99999");
    let (status, code) = error_code(
        c.patch(r.url(&loc))
            .header("content-range", "50000-149999")
            .body(big[50_000..150_000].to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (416, "BLOB_UPLOAD_INVALID"),
        "overlapping chunk"
    );
    let resp = c
        .patch(r.url(&loc))
        .header("content-range", "100000-199999")
        .body(big[100_000..200_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "the upload survived the refused chunk");
    // Not visible before the final PUT.
    assert_eq!(
        c.head(r.url(&format!("/v2/apps/web/blobs/{bd}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let resp = c
        .put(r.url(&format!("{loc}?digest={bd}")))
        .body(big[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(h(&resp, "docker-content-digest"), bd);
    assert_eq!(h(&resp, "location"), format!("/v2/apps/web/blobs/{bd}"));
    let got = c
        .get(r.url(&format!("/v2/apps/web/blobs/{bd}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == big[..]);

    // Streamed PATCH without Content-Range, then an empty PUT (what docker and skopeo do); a sha512 digest.
    let third = bytes(3, 70_000);
    let td = format!(
        "sha512:{}",
        hex::encode(<sha2::Sha512 as sha2::Digest>::digest(&third))
    );
    let loc = h(
        &c.post(r.url("/v2/apps/web/blobs/uploads/"))
            .send()
            .await
            .unwrap(),
        "location",
    )
    .to_owned();
    assert_eq!(
        c.patch(r.url(&loc))
            .body(third.clone())
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let resp = c
        .put(r.url(&format!("{loc}?digest={td}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = c
        .head(r.url(&format!("/v2/apps/web/blobs/{td}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (resp.status(), h(&resp, "content-length")),
        (StatusCode::OK, "70000")
    );

    // Manifests by tag and by digest.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let (m, md) = push_image(&c, &r, "apps/web", "v1", &config, &[&layer, &big]).await;
    for reference in ["v1", md.as_str()] {
        let resp = c
            .get(r.url(&format!("/v2/apps/web/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(h(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(h(&resp, "docker-content-digest"), md);
        assert!(resp.bytes().await.unwrap()[..] == m[..]);
        let resp = c
            .head(r.url(&format!("/v2/apps/web/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            (resp.status(), h(&resp, "content-length")),
            (StatusCode::OK, m.len().to_string().as_str())
        );
    }
    let resp = c
        .put(r.url(&format!("/v2/apps/web/manifests/{md}")))
        .header("content-type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "PUT by digest");

    // Tags with pagination and Link headers.
    for t in ["v2", "v3", "latest", "a-tag"] {
        let resp = c
            .put(r.url(&format!("/v2/apps/web/manifests/{t}")))
            .header("content-type", OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let mut all = Vec::new();
    let mut next = Some("/v2/apps/web/tags/list?n=2".to_owned());
    let mut pages = 0;
    while let Some(url) = next.take() {
        let resp = c.get(r.url(&url)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let link = h(&resp, "link").to_owned();
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["name"], "apps/web");
        let page: Vec<String> = v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        assert!(page.len() <= 2);
        all.extend(page);
        if !link.is_empty() {
            next = Some(
                link.trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned(),
            );
        }
        pages += 1;
    }
    assert_eq!(all, vec!["a-tag", "latest", "v1", "v2", "v3"]);
    assert_eq!(pages, 3);
    let v: serde_json::Value = c
        .get(r.url("/v2/apps/web/tags/list?last=v1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], serde_json::json!(["v2", "v3"]));
    let (status, code) = error_code(
        c.get(r.url("/v2/nothing/here/tags/list"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "NAME_UNKNOWN"));

    // Cross-repository mount, nested names, catalog.
    let resp = c
        .post(r.url(&format!(
            "/v2/team/deep/nested/repo/blobs/uploads/?mount={ld}&from=apps/web"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(h(&resp, "docker-content-digest"), ld);
    assert_eq!(
        c.head(r.url(&format!("/v2/team/deep/nested/repo/blobs/{ld}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let unknown = sha256(b"not here");
    let resp = c
        .post(r.url(&format!(
            "/v2/team/x/blobs/uploads/?mount={unknown}&from=apps/web"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        202,
        "mount of an unknown blob starts an upload"
    );
    let v: serde_json::Value = c
        .get(r.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["apps/web", "team/deep/nested/repo", "team/x"])
    );
    let resp = c.get(r.url("/v2/_catalog?n=1")).send().await.unwrap();
    assert!(
        h(&resp, "link").contains("last=apps%2Fweb"),
        "{}",
        h(&resp, "link")
    );

    // Referrers with artifactType filtering and the OCI-Subject header.
    let empty = b"{}".to_vec();
    push_blob(&c, &r, "apps/web", &empty).await;
    let sig = image_manifest(
        &empty,
        &[],
        Some((&md, m.len())),
        Some("application/vnd.example.sig"),
    );
    let resp = c
        .put(r.url("/v2/apps/web/manifests/sig1"))
        .header("content-type", OCI_MANIFEST)
        .body(sig.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(h(&resp, "oci-subject"), md);
    let sbom = image_manifest(
        &empty,
        &[],
        Some((&md, m.len())),
        Some("application/vnd.example.sbom"),
    );
    let sbom_d = sha256(&sbom);
    let resp = c
        .put(r.url(&format!("/v2/apps/web/manifests/{sbom_d}")))
        .header("content-type", OCI_MANIFEST)
        .body(sbom)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = c
        .get(r.url(&format!("/v2/apps/web/referrers/{md}")))
        .send()
        .await
        .unwrap();
    assert_eq!(h(&resp, "content-type"), OCI_INDEX);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
    let resp = c
        .get(r.url(&format!(
            "/v2/apps/web/referrers/{md}?artifactType=application/vnd.example.sig"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(h(&resp, "oci-filters-applied"), "artifactType");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], sha256(&sig));
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.example.sig"
    );
    let v: serde_json::Value = c
        .get(r.url(&format!("/v2/apps/web/referrers/{unknown}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"], serde_json::json!([]));

    // An index over the image; one over an unknown manifest is refused.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{ "mediaType": OCI_MANIFEST, "digest": md, "size": m.len(), "platform": {"architecture":"amd64","os":"linux"} }]
    }))
    .unwrap();
    let resp = c
        .put(r.url("/v2/apps/web/manifests/multi"))
        .header("content-type", OCI_INDEX)
        .body(index)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let bad_index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{ "mediaType": OCI_MANIFEST, "digest": unknown, "size": 3 }]
    }))
    .unwrap();
    let (status, code) = error_code(
        c.put(r.url("/v2/apps/web/manifests/bad"))
            .header("content-type", OCI_INDEX)
            .body(bad_index)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "MANIFEST_BLOB_UNKNOWN"));

    // Docker schema2 manifest and manifest list.
    let d2 = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha256(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": ld, "size": layer.len() }]
    }))
    .unwrap();
    let resp = c
        .put(r.url("/v2/apps/web/manifests/docker"))
        .header(
            "content-type",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .body(d2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{ "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": sha256(&d2), "size": d2.len(), "platform": {"architecture":"amd64","os":"linux"} }]
    }))
    .unwrap();
    let resp = c
        .put(r.url("/v2/apps/web/manifests/dockerlist"))
        .header(
            "content-type",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = c
        .get(r.url("/v2/apps/web/manifests/dockerlist"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        h(&resp, "content-type"),
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );

    // Deletes: a tag, a manifest by digest (its tags go too), a blob; cancelling an upload.
    assert_eq!(
        c.delete(r.url("/v2/apps/web/manifests/latest"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        c.get(r.url("/v2/apps/web/manifests/latest"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(r.url("/v2/apps/web/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.delete(r.url(&format!("/v2/apps/web/manifests/{}", sha256(&sig))))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let v: serde_json::Value = c
        .get(r.url(&format!("/v2/apps/web/referrers/{md}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["manifests"].as_array().unwrap().len(),
        1,
        "a deleted referrer disappears"
    );
    assert_eq!(
        c.get(r.url("/v2/apps/web/manifests/sig1"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.delete(r.url(&format!("/v2/apps/web/blobs/{td}")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let (status, code) = error_code(
        c.get(r.url(&format!("/v2/apps/web/blobs/{td}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"));
    let loc = h(
        &c.post(r.url("/v2/apps/web/blobs/uploads/"))
            .send()
            .await
            .unwrap(),
        "location",
    )
    .to_owned();
    assert_eq!(
        c.patch(r.url(&loc))
            .body(vec![1u8; 10])
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(c.delete(r.url(&loc)).send().await.unwrap().status(), 204);
    let (status, code) = error_code(c.get(r.url(&loc)).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));

    // Metrics count what happened.
    let text = c
        .get(r.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("atlantis_registry_http_requests_total{method=\"PUT\",route=\"manifest\",status=\"201\"}"), "{text}");
    assert!(
        text.contains("atlantis_registry_blobs_committed_total"),
        "{text}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_flow_filesystem() {
    flow(Backend::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_flow_s3() {
    flow(Backend::S3).await;
}

/// An upload survives a registry restart: the new process resumes it and re-hashes the stored bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_resumes_after_restart() {
    let keep = tempfile::tempdir().unwrap();
    let root = keep.path().join("storage");
    let first =
        TestRegistry::start_with(Backend::Fs, None, |cfg| cfg.storage.root = root.clone()).await;
    let c = client();
    let data = bytes(9, 200_000);
    let d = sha256(&data);
    let loc = h(
        &c.post(first.url("/v2/apps/resume/blobs/uploads/"))
            .send()
            .await
            .unwrap(),
        "location",
    )
    .to_owned();
    let resp = c
        .patch(first.url(&loc))
        .header("content-range", "0-99999")
        .body(data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let second =
        TestRegistry::start_with(Backend::Fs, None, |cfg| cfg.storage.root = root.clone()).await;
    first.stop().await;
    let resp = c.get(second.url(&loc)).send().await.unwrap();
    assert_eq!(
        (resp.status(), h(&resp, "range")),
        (StatusCode::NO_CONTENT, "0-99999")
    );
    let resp = c
        .patch(second.url(&loc))
        .header("content-range", "100000-199999")
        .body(data[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // A wrong digest at the end is refused and leaves nothing.
    let resp = c
        .put(second.url(&format!("{loc}?digest={}", sha256(b"x"))))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (400, "DIGEST_INVALID".to_owned()));
    assert_eq!(c.get(second.url(&loc)).send().await.unwrap().status(), 404);
    // Again, correctly.
    let loc = h(
        &c.post(second.url("/v2/apps/resume/blobs/uploads/"))
            .send()
            .await
            .unwrap(),
        "location",
    )
    .to_owned();
    c.patch(second.url(&loc))
        .body(data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    let resp = c
        .put(second.url(&format!("{loc}?digest={d}")))
        .body(data[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let got = c
        .get(second.url(&format!("/v2/apps/resume/blobs/{d}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == data[..]);
    assert!(
        root.join("blobs").exists(),
        "the second process wrote to the shared root"
    );
    second.stop().await;
}
