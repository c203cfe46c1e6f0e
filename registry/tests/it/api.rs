//! The Distribution API over HTTP, against the filesystem and the S3 driver.

use reqwest::StatusCode;

use crate::common::{
    Backend, Call as _, OCI_INDEX, OCI_MANIFEST, TestRegistry, bytes, error_code, header as h,
    image_manifest, on_both_backends, sha256,
};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

async fn flow(backend: Backend) {
    let r = TestRegistry::start(backend).await;

    let resp = r.get("/v2/").call().await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "docker-distribution-api-version"), "registry/2.0");

    // Monolithic blob push, HEAD, GET, ranges.
    let layer = bytes(1, 300_000);
    let ld = r.push_blob("apps/web", &layer).await;
    let blob_path = format!("/v2/apps/web/blobs/{ld}");
    let resp = r.head(&blob_path).call().await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "content-length"), "300000");
    assert_eq!(h(&resp, "docker-content-digest"), ld);
    let got = r.blob("apps/web", &ld).await;
    assert!(got[..] == layer[..], "blob content round-trips");
    let resp = r
        .get(&blob_path)
        .header("range", "bytes=10-19")
        .call()
        .await;
    assert_eq!(resp.status(), 206);
    assert_eq!(h(&resp, "content-range"), "bytes 10-19/300000");
    assert_eq!(&resp.bytes().await.unwrap()[..], &layer[10..20]);
    let status = r.get(&blob_path).header("range", "bytes=300000-").status();
    assert_eq!(status.await, 416);
    // The blob is not visible in another repository.
    assert_eq!(r.blob_status("apps/other", &ld).await, 404);

    // Chunked upload with Content-Range, status, an out-of-order chunk, then PUT with the last chunk.
    let big = bytes(2, 250_000);
    let bd = sha256(&big);
    let resp = r.post("/v2/apps/web/blobs/uploads/").call().await;
    assert_eq!(resp.status(), 202);
    let loc = h(&resp, "location").to_owned();
    assert!(loc.starts_with("/v2/apps/web/blobs/uploads/"), "{loc}");
    assert_eq!(h(&resp, "range"), "0-0");
    let resp = r
        .chunk(&loc, "0-99999", big[..100_000].to_vec())
        .header("content-type", "application/octet-stream")
        .call()
        .await;
    assert_eq!(resp.status(), 202);
    assert_eq!(h(&resp, "range"), "0-99999");
    let resp = r.get(&loc).call().await;
    assert_eq!(resp.status(), 204);
    assert_eq!(h(&resp, "range"), "0-99999");
    let overlapping = r.chunk(&loc, "50000-149999", big[50_000..150_000].to_vec());
    assert_eq!(
        overlapping.error().await,
        (416, "BLOB_UPLOAD_INVALID"),
        "overlapping chunk"
    );
    let next = r.chunk(&loc, "100000-199999", big[100_000..200_000].to_vec());
    assert_eq!(
        next.status().await,
        202,
        "the upload survived the refused chunk"
    );
    // Not visible before the final PUT.
    assert_eq!(r.blob_status("apps/web", &bd).await, 404);
    let resp = r
        .put(format!("{loc}?digest={bd}"))
        .body(big[200_000..].to_vec())
        .call()
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(h(&resp, "docker-content-digest"), bd);
    assert_eq!(h(&resp, "location"), format!("/v2/apps/web/blobs/{bd}"));
    assert!(r.blob("apps/web", &bd).await[..] == big[..]);

    // Streamed PATCH without Content-Range, then an empty PUT (what docker and skopeo do); a sha512 digest.
    let third = bytes(3, 70_000);
    let td = format!(
        "sha512:{}",
        hex::encode(<sha2::Sha512 as sha2::Digest>::digest(&third))
    );
    let loc = r.start_upload("apps/web").await;
    assert_eq!(r.patch(&loc).body(third.clone()).status().await, 202);
    assert_eq!(r.put(format!("{loc}?digest={td}")).status().await, 201);
    let resp = r.head(format!("/v2/apps/web/blobs/{td}")).call().await;
    assert_eq!(
        (resp.status(), h(&resp, "content-length")),
        (StatusCode::OK, "70000")
    );

    // Manifests by tag and by digest.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let (m, md) = r
        .push_image("apps/web", "v1", &config, &[&layer, &big])
        .await;
    for reference in ["v1", md.as_str()] {
        let resp = r
            .get(format!("/v2/apps/web/manifests/{reference}"))
            .call()
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(h(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(h(&resp, "docker-content-digest"), md);
        assert!(resp.bytes().await.unwrap()[..] == m[..]);
        let resp = r
            .head(format!("/v2/apps/web/manifests/{reference}"))
            .call()
            .await;
        assert_eq!(
            (resp.status(), h(&resp, "content-length")),
            (StatusCode::OK, m.len().to_string().as_str())
        );
    }
    let by_digest = r.put_manifest("apps/web", &md, OCI_MANIFEST, m.clone());
    assert_eq!(by_digest.status().await, 201, "PUT by digest");

    // Tags with pagination and Link headers.
    for t in ["v2", "v3", "latest", "a-tag"] {
        let put = r.put_manifest("apps/web", t, OCI_MANIFEST, m.clone());
        assert_eq!(put.status().await, 201);
    }
    let mut all = Vec::new();
    let mut next = Some("/v2/apps/web/tags/list?n=2".to_owned());
    let mut pages = 0;
    while let Some(url) = next.take() {
        let resp = r.get(&url).call().await;
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
    let v = r.get("/v2/apps/web/tags/list?last=v1").json_value().await;
    assert_eq!(v["tags"], serde_json::json!(["v2", "v3"]));
    let unknown_repo = r.get("/v2/nothing/here/tags/list").error().await;
    assert_eq!(unknown_repo, (404, "NAME_UNKNOWN"));

    // Cross-repository mount, nested names, catalog.
    let resp = r
        .post(format!(
            "/v2/team/deep/nested/repo/blobs/uploads/?mount={ld}&from=apps/web"
        ))
        .call()
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(h(&resp, "docker-content-digest"), ld);
    assert_eq!(r.blob_status("team/deep/nested/repo", &ld).await, 200);
    let unknown = sha256(b"not here");
    let mount = r.post(format!(
        "/v2/team/x/blobs/uploads/?mount={unknown}&from=apps/web"
    ));
    assert_eq!(
        mount.status().await,
        202,
        "mount of an unknown blob starts an upload"
    );
    let v = r.get("/v2/_catalog").json_value().await;
    assert_eq!(
        v["repositories"],
        serde_json::json!(["apps/web", "team/deep/nested/repo", "team/x"])
    );
    let resp = r.get("/v2/_catalog?n=1").call().await;
    assert!(
        h(&resp, "link").contains("last=apps%2Fweb"),
        "{}",
        h(&resp, "link")
    );

    // Referrers with artifactType filtering and the OCI-Subject header.
    let empty = b"{}".to_vec();
    r.push_blob("apps/web", &empty).await;
    let referrer = |kind: &str| {
        image_manifest(
            &empty,
            &[],
            Some((&md, m.len())),
            Some(&format!("application/vnd.example.{kind}")),
        )
    };
    let sig = referrer("sig");
    let resp = r
        .put_manifest("apps/web", "sig1", OCI_MANIFEST, sig.clone())
        .call()
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(h(&resp, "oci-subject"), md);
    let sbom = referrer("sbom");
    let sbom_d = sha256(&sbom);
    let put = r.put_manifest("apps/web", &sbom_d, OCI_MANIFEST, sbom);
    assert_eq!(put.status().await, 201);
    let resp = r.get(format!("/v2/apps/web/referrers/{md}")).call().await;
    assert_eq!(h(&resp, "content-type"), OCI_INDEX);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
    let resp = r
        .get(format!(
            "/v2/apps/web/referrers/{md}?artifactType=application/vnd.example.sig"
        ))
        .call()
        .await;
    assert_eq!(h(&resp, "oci-filters-applied"), "artifactType");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], sha256(&sig));
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.example.sig"
    );
    let v = r
        .get(format!("/v2/apps/web/referrers/{unknown}"))
        .json_value()
        .await;
    assert_eq!(v["manifests"], serde_json::json!([]));

    // An index over the image; one over an unknown manifest is refused.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{ "mediaType": OCI_MANIFEST, "digest": md, "size": m.len(), "platform": {"architecture":"amd64","os":"linux"} }]
    }))
    .unwrap();
    let put = r.put_manifest("apps/web", "multi", OCI_INDEX, index);
    assert_eq!(put.status().await, 201);
    let bad_index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{ "mediaType": OCI_MANIFEST, "digest": unknown, "size": 3 }]
    }))
    .unwrap();
    let put = r.put_manifest("apps/web", "bad", OCI_INDEX, bad_index);
    assert_eq!(put.error().await, (400, "MANIFEST_BLOB_UNKNOWN"));

    // Docker schema2 manifest and manifest list.
    let d2 = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha256(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": ld, "size": layer.len() }]
    }))
    .unwrap();
    let put = r.put_manifest("apps/web", "docker", DOCKER_MANIFEST, d2.clone());
    assert_eq!(put.status().await, 201);
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [{ "mediaType": DOCKER_MANIFEST, "digest": sha256(&d2), "size": d2.len(), "platform": {"architecture":"amd64","os":"linux"} }]
    }))
    .unwrap();
    let put = r.put_manifest("apps/web", "dockerlist", DOCKER_LIST, list);
    assert_eq!(put.status().await, 201);
    let resp = r.get("/v2/apps/web/manifests/dockerlist").call().await;
    assert_eq!(h(&resp, "content-type"), DOCKER_LIST);

    // Deletes: a tag, a manifest by digest (its tags go too), a blob; cancelling an upload.
    let status = r.delete("/v2/apps/web/manifests/latest").status();
    assert_eq!(status.await, 202);
    assert_eq!(r.manifest_status("apps/web", "latest").await, 404);
    assert_eq!(r.manifest_status("apps/web", "v1").await, 200);
    let status = r
        .delete(format!("/v2/apps/web/manifests/{}", sha256(&sig)))
        .status();
    assert_eq!(status.await, 202);
    let v = r
        .get(format!("/v2/apps/web/referrers/{md}"))
        .json_value()
        .await;
    assert_eq!(
        v["manifests"].as_array().unwrap().len(),
        1,
        "a deleted referrer disappears"
    );
    assert_eq!(r.manifest_status("apps/web", "sig1").await, 404);
    let status = r.delete(format!("/v2/apps/web/blobs/{td}")).status();
    assert_eq!(status.await, 202);
    let gone = r.get(format!("/v2/apps/web/blobs/{td}")).error().await;
    assert_eq!(gone, (404, "BLOB_UNKNOWN"));
    let loc = r.start_upload("apps/web").await;
    assert_eq!(r.patch(&loc).body(vec![1u8; 10]).status().await, 202);
    assert_eq!(r.delete(&loc).status().await, 204);
    assert_eq!(r.get(&loc).error().await, (404, "BLOB_UPLOAD_UNKNOWN"));

    // Metrics count what happened.
    let text = r.get("/metrics").text_body().await;
    assert!(text.contains("atlantis_registry_http_requests_total{method=\"PUT\",route=\"manifest\",status=\"201\"}"), "{text}");
    assert!(
        text.contains("atlantis_registry_blobs_committed_total"),
        "{text}"
    );
    r.stop().await;
}

on_both_backends!(flow: api_flow_filesystem, api_flow_s3);

/// An upload survives a registry restart: the new process resumes it and re-hashes the stored bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_resumes_after_restart() {
    let keep = tempfile::tempdir().unwrap();
    let root = keep.path().join("storage");
    let first =
        TestRegistry::start_with(Backend::Fs, None, |cfg| cfg.storage.root = root.clone()).await;
    let data = bytes(9, 200_000);
    let d = sha256(&data);
    let loc = first.start_upload("apps/resume").await;
    let resp = first.chunk(&loc, "0-99999", data[..100_000].to_vec());
    assert_eq!(resp.status().await, 202);
    let second =
        TestRegistry::start_with(Backend::Fs, None, |cfg| cfg.storage.root = root.clone()).await;
    first.stop().await;
    let resp = second.get(&loc).call().await;
    assert_eq!(
        (resp.status(), h(&resp, "range")),
        (StatusCode::NO_CONTENT, "0-99999")
    );
    let resp = second.chunk(&loc, "100000-199999", data[100_000..].to_vec());
    assert_eq!(resp.status().await, 202);
    // A wrong digest at the end is refused and leaves nothing.
    let resp = second
        .put(format!("{loc}?digest={}", sha256(b"x")))
        .call()
        .await;
    assert_eq!(error_code(resp).await, (400, "DIGEST_INVALID"));
    assert_eq!(second.get(&loc).status().await, 404);
    // Again, correctly.
    let loc = second.start_upload("apps/resume").await;
    second
        .patch(&loc)
        .body(data[..100_000].to_vec())
        .call()
        .await;
    let resp = second
        .put(format!("{loc}?digest={d}"))
        .body(data[100_000..].to_vec());
    assert_eq!(resp.status().await, 201);
    assert!(second.blob("apps/resume", &d).await[..] == data[..]);
    assert!(
        root.join("blobs").exists(),
        "the second process wrote to the shared root"
    );
    second.stop().await;
}
