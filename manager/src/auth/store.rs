//! Team -> app grants and the audit log, in the history database (migration `0016_auth.sql`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, Row as _};

use crate::history::HistoryError;

/// One audited call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Unique id.
    pub id: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Who (`-` when no valid token was given).
    pub user: String,
    /// What: `<METHOD> <route>` (for example `POST /v1/apps/{app}/envs/{env}/deploy`), or `login`.
    pub action: String,
    /// Which app ("" when none).
    pub app: String,
    /// Which env ("" when none).
    pub env: String,
    /// The request path.
    pub target: String,
    /// Peer address.
    pub source: String,
    /// `ok`, `denied` (401/403), `failed`, or `started` while the call runs (and if its end could not
    /// be recorded).
    pub result: String,
    /// HTTP status.
    pub status: u16,
    /// More: the error code, or the command line of an exec.
    pub detail: String,
}

/// Filters of an audit query.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Only this app.
    pub app: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Actions containing this text.
    pub action: Option<String>,
    /// Only entries at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// Grants and audit.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    seq: Arc<AtomicU64>,
}

impl Store {
    /// Uses the history's pool (its migrations created the tables).
    pub fn new(pool: AnyPool) -> Store {
        Store {
            pool,
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Grants `team` access to `app` (idempotent).
    pub async fn allow(&self, team: &str, app: &str, by: &str) -> Result<(), HistoryError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM team_apps WHERE team = $1 AND app = $2")
            .bind(team)
            .bind(app)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO team_apps (team, app, created_ms, created_by) VALUES ($1, $2, $3, $4)",
        )
        .bind(team)
        .bind(app)
        .bind(crate::tasks::now_ms() as i64)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a grant; false when there was none.
    pub async fn disallow(&self, team: &str, app: &str) -> Result<bool, HistoryError> {
        let r = sqlx::query("DELETE FROM team_apps WHERE team = $1 AND app = $2")
            .bind(team)
            .bind(app)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Apps granted to `team`, sorted.
    pub async fn team_apps(&self, team: &str) -> Result<Vec<String>, HistoryError> {
        let rows = sqlx::query("SELECT app FROM team_apps WHERE team = $1 ORDER BY app")
            .bind(team)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>("app"))
            .collect::<Result<_, _>>()?)
    }

    /// Teams that have at least one grant, sorted.
    pub async fn teams(&self) -> Result<Vec<String>, HistoryError> {
        let rows = sqlx::query("SELECT DISTINCT team FROM team_apps ORDER BY team")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>("team"))
            .collect::<Result<_, _>>()?)
    }

    /// True when one of `teams` is granted `app`.
    pub async fn granted(&self, teams: &[String], app: &str) -> Result<bool, HistoryError> {
        if teams.is_empty() {
            return Ok(false);
        }
        let rows = sqlx::query("SELECT team FROM team_apps WHERE app = $1")
            .bind(app)
            .fetch_all(&self.pool)
            .await?;
        for r in rows {
            let t: String = r.try_get("team")?;
            if teams.contains(&t) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes every team grant of `app` (the app is unregistered: a new app of the same name
    /// inherits nothing); returns how many there were.
    pub async fn forget_app(&self, app: &str) -> Result<u64, HistoryError> {
        let r = sqlx::query("DELETE FROM team_apps WHERE app = $1")
            .bind(app)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Appends an audit entry (its id and sequence are filled in here).
    pub async fn audit(&self, e: AuditEntry) -> Result<(), HistoryError> {
        self.audit_begin(e).await.map(|_| ())
    }

    /// Appends an audit entry before the call it records is carried out (result `started` until
    /// [`Store::audit_end`]); returns its id. A call whose entry cannot be written is not carried out.
    pub async fn audit_begin(&self, mut e: AuditEntry) -> Result<String, HistoryError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) as i64;
        e.id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO audit (id, at_ms, seq, user_name, action, app, env, target, source, result, status, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&e.id)
        .bind(e.at_ms)
        .bind(seq)
        .bind(&e.user)
        .bind(&e.action)
        .bind(&e.app)
        .bind(&e.env)
        .bind(&e.target)
        .bind(&e.source)
        .bind(&e.result)
        .bind(i64::from(e.status))
        .bind(&e.detail)
        .execute(&self.pool)
        .await?;
        Ok(e.id)
    }

    /// Completes the entry `id` with the call's result, status and detail.
    pub async fn audit_end(
        &self,
        id: &str,
        result: &str,
        status: u16,
        detail: &str,
    ) -> Result<(), HistoryError> {
        let r = sqlx::query("UPDATE audit SET result = $1, status = $2, detail = $3 WHERE id = $4")
            .bind(result)
            .bind(i64::from(status))
            .bind(detail)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 1 {
            Ok(())
        } else {
            Err(HistoryError::Missing(format!("audit entry {id}")))
        }
    }

    /// Audit entries matching `q`, newest first.
    pub async fn audit_log(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, HistoryError> {
        let escaped: String = q
            .action
            .as_deref()
            .unwrap_or("")
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let app = q.app.clone().unwrap_or_default();
        let user = q.user.clone().unwrap_or_default();
        let rows = sqlx::query(
            "SELECT id, at_ms, user_name, action, app, env, target, source, result, status, detail FROM audit \
             WHERE ($1 = '' OR app = $2) AND ($3 = '' OR user_name = $4) AND action LIKE $5 ESCAPE '\\' \
             AND at_ms >= $6 ORDER BY at_ms DESC, seq DESC LIMIT $7",
        )
        .bind(&app)
        .bind(&app)
        .bind(&user)
        .bind(&user)
        .bind(format!("%{escaped}%"))
        .bind(q.since_ms.unwrap_or(0))
        .bind(q.limit.unwrap_or(100).clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    user: r.try_get("user_name")?,
                    action: r.try_get("action")?,
                    app: r.try_get("app")?,
                    env: r.try_get("env")?,
                    target: r.try_get("target")?,
                    source: r.try_get("source")?,
                    result: r.try_get("result")?,
                    status: u16::try_from(r.try_get::<i64, _>("status")?).unwrap_or(0),
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
