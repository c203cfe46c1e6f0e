//! The storage driver conformance suite: the same checks against the filesystem driver and against the
//! S3 driver talking to a real S3 server (moto).

use std::sync::Arc;

use atlantis_registry::storage::fs::FsDriver;
use atlantis_registry::storage::s3::S3Driver;
use atlantis_registry::storage::{StorageDriver, StorageError};
use bytes::Bytes;
use futures::StreamExt as _;

use crate::common::{bytes, s3_config};

async fn read_all(
    d: &dyn StorageDriver,
    path: &str,
    offset: u64,
    len: Option<u64>,
) -> Result<Vec<u8>, StorageError> {
    let mut s = d.reader(path, offset, len).await?;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

async fn suite(d: Arc<dyn StorageDriver>, part: usize) {
    let d = d.as_ref();
    // get / put / overwrite / bounded get.
    assert!(d.get("a/b/c", 1024).await.unwrap_err().is_not_found());
    d.put("a/b/c", Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(&d.get("a/b/c", 1024).await.unwrap()[..], b"hello");
    d.put("a/b/c", Bytes::from_static(b"world!")).await.unwrap();
    assert_eq!(&d.get("a/b/c", 1024).await.unwrap()[..], b"world!");
    assert!(matches!(
        d.get("a/b/c", 3).await,
        Err(StorageError::TooLarge { .. })
    ));
    d.put("a/empty", Bytes::new()).await.unwrap();
    assert_eq!(d.get("a/empty", 10).await.unwrap().len(), 0);

    // stat.
    let f = d.stat("a/b/c").await.unwrap();
    assert_eq!((f.size, f.is_dir), (6, false));
    assert!(
        f.modified.elapsed().unwrap_or_default().as_secs() < 300,
        "modification time is recent"
    );
    assert!(d.stat("a/b").await.unwrap().is_dir);
    assert!(d.stat("a/nope").await.unwrap_err().is_not_found());

    // list: direct children, sorted, directories by name.
    d.put("a/b/d", Bytes::from_static(b"1")).await.unwrap();
    d.put("a/b/e/f", Bytes::from_static(b"2")).await.unwrap();
    assert_eq!(d.list("a/b").await.unwrap(), vec!["c", "d", "e"]);
    assert_eq!(d.list("a").await.unwrap(), vec!["b", "empty"]);
    assert!(d.list("a").await.is_ok() && d.list("").await.unwrap().contains(&"a".to_owned()));
    assert!(d.list("zz").await.unwrap_err().is_not_found());

    // reader: whole, ranged, at the end, past the end.
    let blob = bytes(1, 100_000);
    d.put("r/blob", Bytes::from(blob.clone())).await.unwrap();
    assert_eq!(read_all(d, "r/blob", 0, None).await.unwrap(), blob);
    assert_eq!(
        read_all(d, "r/blob", 1000, None).await.unwrap(),
        &blob[1000..]
    );
    assert_eq!(
        read_all(d, "r/blob", 10, Some(20)).await.unwrap(),
        &blob[10..30]
    );
    assert_eq!(
        read_all(d, "r/blob", 100_000, None).await.unwrap(),
        Vec::<u8>::new()
    );
    assert!(matches!(
        read_all(d, "r/blob", 100_001, None).await,
        Err(StorageError::InvalidOffset { .. })
    ));
    assert!(
        read_all(d, "r/missing", 0, None)
            .await
            .unwrap_err()
            .is_not_found()
    );

    // writer: invisible until commit, resumable after close, crossing part boundaries.
    let total = 2 * part + part / 2 + 12_345;
    let data = bytes(2, total);
    let cut = part + part / 3; // the first session ends inside a part
    let mut w = d.writer("w/x/data", false).await.unwrap();
    for chunk in data[..cut].chunks(777_777) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(w.size(), cut as u64);
    w.close().await.unwrap();
    assert!(
        d.stat("w/x/data").await.unwrap_err().is_not_found(),
        "not visible before commit"
    );
    assert_eq!(
        d.list("w/x").await.unwrap_or_default(),
        Vec::<String>::new(),
        "writer state is not listed"
    );
    let mut w = d.writer("w/x/data", true).await.unwrap();
    assert_eq!(w.size(), cut as u64, "append resumes at the stored size");
    for chunk in data[cut..].chunks(1_000_003) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(w.size(), total as u64);
    w.commit().await.unwrap();
    assert_eq!(d.stat("w/x/data").await.unwrap().size, total as u64);
    assert!(
        read_all(d, "w/x/data", 0, None).await.unwrap() == data,
        "committed content matches"
    );
    assert_eq!(d.list("w/x").await.unwrap(), vec!["data"]);

    // A small writer commits too, and an empty one.
    let mut w = d.writer("w/small", false).await.unwrap();
    w.write(Bytes::from_static(b"abc")).await.unwrap();
    w.close().await.unwrap();
    let mut w = d.writer("w/small", true).await.unwrap();
    w.write(Bytes::from_static(b"def")).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(&d.get("w/small", 100).await.unwrap()[..], b"abcdef");
    let w = d.writer("w/zero", false).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(d.stat("w/zero").await.unwrap().size, 0);

    // cancel discards everything, also earlier sessions; append=false starts over.
    let mut w = d.writer("w/c", false).await.unwrap();
    w.write(Bytes::from(bytes(3, part + 10))).await.unwrap();
    w.close().await.unwrap();
    let w = d.writer("w/c", true).await.unwrap();
    assert_eq!(w.size(), (part + 10) as u64);
    w.cancel().await.unwrap();
    assert!(d.stat("w/c").await.unwrap_err().is_not_found());
    let w = d.writer("w/c", true).await.unwrap();
    assert_eq!(w.size(), 0, "nothing survives a cancel");
    w.close().await.unwrap();
    let mut w = d.writer("w/c", false).await.unwrap();
    w.write(Bytes::from_static(b"q")).await.unwrap();
    w.close().await.unwrap();
    let w = d.writer("w/c", false).await.unwrap();
    assert_eq!(w.size(), 0, "append=false truncates");
    w.cancel().await.unwrap();

    // move: replaces the target, removes the source.
    d.put("m/src", Bytes::from_static(b"moved")).await.unwrap();
    d.put("m/dst/x", Bytes::from_static(b"old")).await.unwrap();
    d.move_to("m/src", "m/dst/x").await.unwrap();
    assert_eq!(&d.get("m/dst/x", 100).await.unwrap()[..], b"moved");
    assert!(d.stat("m/src").await.unwrap_err().is_not_found());
    assert!(
        d.move_to("m/src", "m/other")
            .await
            .unwrap_err()
            .is_not_found()
    );

    // delete: a file, a whole tree (with an open writer inside), missing.
    d.delete("a/b/d").await.unwrap();
    assert!(d.stat("a/b/d").await.unwrap_err().is_not_found());
    let mut w = d.writer("a/b/e/open", false).await.unwrap();
    w.write(Bytes::from(bytes(4, 1000))).await.unwrap();
    w.close().await.unwrap();
    d.delete("a").await.unwrap();
    assert!(d.stat("a").await.unwrap_err().is_not_found());
    assert!(d.stat("a/b/c").await.unwrap_err().is_not_found());
    assert!(d.delete("a").await.unwrap_err().is_not_found());
    let w = d.writer("a/b/e/open", true).await.unwrap();
    assert_eq!(
        w.size(),
        0,
        "deleting a tree removes writer state inside it"
    );
    w.cancel().await.unwrap();

    // Paths that could escape the root or reach driver-private files are refused.
    for bad in [
        "../x", "/abs", "a//b", "a/../b", ".hidden", "a/.b", "a\\b", "a b",
    ] {
        assert!(
            matches!(
                d.put(bad, Bytes::new()).await,
                Err(StorageError::InvalidPath { .. })
            ),
            "{bad}"
        );
        assert!(
            matches!(d.get(bad, 10).await, Err(StorageError::InvalidPath { .. })),
            "{bad}"
        );
        assert!(
            matches!(d.delete(bad).await, Err(StorageError::InvalidPath { .. })),
            "{bad}"
        );
    }

    // Concurrent puts of the same key: the result is one whole value, never a mix.
    let values: Vec<Vec<u8>> = (0..8).map(|i| bytes(100 + i, 64 * 1024)).collect();
    let futs = values
        .iter()
        .map(|v| d.put("c/same", Bytes::from(v.clone())));
    for r in futures::future::join_all(futs).await {
        r.unwrap();
    }
    let got = d.get("c/same", 1 << 20).await.unwrap();
    assert!(
        values.iter().any(|v| v[..] == got[..]),
        "concurrent puts left a whole value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_driver_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let d: Arc<dyn StorageDriver> = Arc::new(FsDriver::new(dir.path().join("root")).unwrap());
    suite(d, 5 * 1024 * 1024).await;
    // Nothing was written outside the root.
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("root")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_driver_conforms() {
    let cfg = s3_config();
    let d = Arc::new(S3Driver::new(&cfg).unwrap());
    suite(d.clone(), cfg.part_size).await;
    // Every key stayed under the prefix, and no multipart upload was left open.
    let keys = crate::common::s3_server().keys(&cfg.bucket, "");
    assert!(keys.iter().all(|k| k.starts_with("registry/")), "{keys:?}");
    let open = d
        .client()
        .list_multipart_uploads()
        .bucket(&cfg.bucket)
        .send()
        .await
        .unwrap();
    assert!(
        open.uploads().is_empty(),
        "multipart uploads left open: {:?}",
        open.uploads()
    );
}
