//! Garbage collection: mark every blob reachable from a tag or a manifest revision of any repository
//! (configs, layers, index children, and referrers, which are revisions themselves), then sweep the rest.
//!
//! Safety against pushes in progress: a blob whose content was written, or whose repository link was
//! written or re-stamped (by a mount or a `HEAD` existence check, see `Registry::head_blob`), within the
//! grace period is treated as live. A push uploads or checks its blobs before the manifest that references
//! them, so a push shorter than the grace period never loses a blob. Uploads older than the expiry are
//! deleted. With `dry_run`, nothing is deleted and the report says what would be.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::error::Result;
use crate::manifest;
use crate::names::RepoName;
use crate::paths;
use crate::registry::{Registry, optional};

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    pub grace: Duration,
    pub upload_expiry: Duration,
}

/// What was (or, in a dry run, would be) collected.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub repositories: usize,
    pub marked: usize,
    pub kept_recent: usize,
    pub swept: Vec<String>,
    pub swept_bytes: u64,
    pub links_removed: usize,
    pub uploads_removed: usize,
}

fn recent(modified: SystemTime, now: SystemTime, grace: Duration) -> bool {
    now.duration_since(modified)
        .map(|age| age < grace)
        .unwrap_or(true)
}

async fn digests_under(reg: &Registry, dir: &str) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for alg in optional(reg.driver.list(dir).await)?.unwrap_or_default() {
        for hex in optional(reg.driver.list(&format!("{dir}/{alg}")).await)?.unwrap_or_default() {
            if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// Marks a manifest, its blobs and, recursively, its child manifests. `visited` holds the manifests
/// already parsed, so a child reached before its own revision is still parsed exactly once.
async fn mark_manifest(
    reg: &Registry,
    root: &Digest,
    marked: &mut BTreeSet<Digest>,
    visited: &mut BTreeSet<Digest>,
) -> Result<()> {
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        if !visited.insert(d.clone()) {
            continue;
        }
        marked.insert(d.clone());
        let Some(body) = optional(
            reg.driver
                .get(&paths::blob_data(&d), reg.limits.max_manifest_bytes)
                .await,
        )?
        else {
            continue;
        };
        match manifest::parse("", &body) {
            Ok(p) => {
                marked.extend(p.blobs.into_iter().map(|b| b.digest));
                stack.extend(p.manifests.into_iter().map(|m| m.digest));
            }
            Err(e) => {
                tracing::warn!(digest = %d, error = %e, "Stored manifest does not parse; its blobs are not marked.")
            }
        }
    }
    Ok(())
}

/// Runs one collection.
pub async fn collect(reg: &Registry, opts: &GcOptions) -> Result<GcReport> {
    let now = SystemTime::now();
    let mut report = GcReport::default();
    let mut marked = BTreeSet::new();
    let mut visited = BTreeSet::new();
    let repos = reg.catalog().await?;
    report.repositories = repos.len();
    for name in &repos {
        let Ok(repo) = RepoName::parse(name) else {
            continue;
        };
        for d in digests_under(reg, &paths::revisions_dir(&repo)).await? {
            mark_manifest(reg, &d, &mut marked, &mut visited).await?;
        }
        for tag in reg.tags(&repo).await.unwrap_or_default() {
            if let Ok(d) = reg.resolve(&repo, &crate::names::Reference::Tag(tag)).await {
                mark_manifest(reg, &d, &mut marked, &mut visited).await?;
            }
        }
        for d in digests_under(reg, &paths::layers_dir(&repo)).await? {
            if let Some(info) = optional(reg.driver.stat(&paths::layer_link(&repo, &d)).await)?
                && recent(info.modified, now, opts.grace)
            {
                marked.insert(d);
            }
        }
        for id in optional(reg.driver.list(&paths::uploads_dir(&repo)).await)?.unwrap_or_default() {
            let Ok(uuid) = uuid::Uuid::parse_str(&id) else {
                continue;
            };
            let started = optional(reg.driver.stat(&paths::upload_started(&repo, &uuid)).await)?;
            if started.is_none_or(|i| !recent(i.modified, now, opts.upload_expiry)) {
                report.uploads_removed += 1;
                if !opts.dry_run {
                    optional(reg.driver.delete(&paths::upload_dir(&repo, &uuid)).await)?;
                }
            }
        }
    }
    report.marked = marked.len();

    let mut swept = BTreeSet::new();
    for alg in optional(reg.driver.list(paths::BLOBS).await)?.unwrap_or_default() {
        let alg_dir = format!("{}/{alg}", paths::BLOBS);
        for prefix in optional(reg.driver.list(&alg_dir).await)?.unwrap_or_default() {
            for hex in
                optional(reg.driver.list(&format!("{alg_dir}/{prefix}")).await)?.unwrap_or_default()
            {
                let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                    continue;
                };
                if marked.contains(&d) {
                    continue;
                }
                let Some(info) = optional(reg.driver.stat(&paths::blob_data(&d)).await)? else {
                    continue;
                };
                if recent(info.modified, now, opts.grace) {
                    report.kept_recent += 1;
                    continue;
                }
                report.swept_bytes += info.size;
                report.swept.push(d.to_string());
                if !opts.dry_run {
                    optional(
                        reg.driver
                            .delete(&format!("{alg_dir}/{prefix}/{hex}"))
                            .await,
                    )?;
                }
                swept.insert(d);
            }
        }
    }
    for name in &repos {
        let Ok(repo) = RepoName::parse(name) else {
            continue;
        };
        for d in digests_under(reg, &paths::layers_dir(&repo)).await? {
            if swept.contains(&d) {
                report.links_removed += 1;
                if !opts.dry_run {
                    optional(
                        reg.driver
                            .delete(crate::registry::parent(&paths::layer_link(&repo, &d)))
                            .await,
                    )?;
                }
            }
        }
    }
    tracing::info!(
        dry_run = opts.dry_run,
        repositories = report.repositories,
        marked = report.marked,
        swept = report.swept.len(),
        bytes = report.swept_bytes,
        "Garbage collection finished."
    );
    Ok(report)
}
