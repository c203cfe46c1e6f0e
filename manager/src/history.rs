//! History in SQL (releases and finished tasks) through sqlx's `Any` driver: SQLite by default,
//! PostgreSQL when a `postgres://` URL is configured. Migrations are embedded and portable (TEXT and
//! BIGINT only), and every query uses `$n` placeholders, which both databases accept.

use std::str::FromStr as _;
use std::time::Duration;

use atlantis_common::api::manager::{Manifest, Release, TaskStatus};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row as _};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The database refused or failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored document could not be read back.
    #[error("corrupt stored document: {0}")]
    Decode(#[from] serde_json::Error),
    /// That release number exists already (a concurrent writer won).
    #[error("release {0} exists already")]
    Duplicate(i64),
    /// A row that should be there is not.
    #[error("{0} is missing")]
    Missing(String),
}

/// The history database.
#[derive(Debug, Clone)]
pub struct History {
    pool: AnyPool,
}

impl History {
    /// Connects (creating a SQLite file if needed) and runs the migrations.
    pub async fn open(url: &str) -> Result<History, HistoryError> {
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        let opts = AnyConnectOptions::from_str(&url)?;
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        if sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA busy_timeout=5000")
                .execute(&pool)
                .await?;
        }
        MIGRATOR.run(&pool).await?;
        Ok(History { pool })
    }

    /// The next release number of app/env (1 for the first).
    pub async fn next_release_number(&self, app: &str, env: &str) -> Result<i64, HistoryError> {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(number), 0) AS n FROM releases WHERE app = $1 AND env = $2",
        )
        .bind(app)
        .bind(env)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? + 1)
    }

    /// Records a release; refuses a number that exists.
    pub async fn record_release(&self, r: &Release) -> Result<(), HistoryError> {
        let res = sqlx::query(
            "INSERT INTO releases (app, env, number, sha, image, manifest, task_id, containers, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&r.app)
        .bind(&r.env)
        .bind(r.number)
        .bind(&r.sha)
        .bind(&r.image)
        .bind(serde_json::to_string(&r.manifest)?)
        .bind(&r.task_id)
        .bind(serde_json::to_string(&r.containers)?)
        .bind(r.created_ms)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                Err(HistoryError::Duplicate(r.number))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Releases of app/env, newest first (at most `limit`).
    pub async fn releases(
        &self,
        app: &str,
        env: &str,
        limit: i64,
    ) -> Result<Vec<Release>, HistoryError> {
        let rows = sqlx::query(
            "SELECT app, env, number, sha, image, manifest, task_id, containers, created_ms \
             FROM releases WHERE app = $1 AND env = $2 ORDER BY number DESC LIMIT $3",
        )
        .bind(app)
        .bind(env)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(release_of).collect()
    }

    /// One release.
    pub async fn release(
        &self,
        app: &str,
        env: &str,
        number: i64,
    ) -> Result<Option<Release>, HistoryError> {
        let row = sqlx::query(
            "SELECT app, env, number, sha, image, manifest, task_id, containers, created_ms \
             FROM releases WHERE app = $1 AND env = $2 AND number = $3",
        )
        .bind(app)
        .bind(env)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(release_of).transpose()
    }

    /// Deletes the history of an app (all envs when `env` is None).
    pub async fn forget(&self, app: &str, env: Option<&str>) -> Result<u64, HistoryError> {
        let r = match env {
            Some(e) => {
                sqlx::query("DELETE FROM releases WHERE app = $1 AND env = $2")
                    .bind(app)
                    .bind(e)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM releases WHERE app = $1")
                    .bind(app)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(r.rows_affected())
    }

    /// Stores a task (insert or replace its document).
    pub async fn save_task(&self, t: &TaskStatus) -> Result<(), HistoryError> {
        let doc = serde_json::to_string(t)?;
        let state = serde_json::to_value(t.state)?;
        let state = state.as_str().unwrap_or("unknown").to_owned();
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(&t.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO tasks (id, app, env, state, document, created_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.id)
        .bind(&t.app)
        .bind(t.env.clone().unwrap_or_default())
        .bind(state)
        .bind(doc)
        .bind(t.created_ms as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A stored task.
    pub async fn task(&self, id: &str) -> Result<Option<TaskStatus>, HistoryError> {
        let row = sqlx::query("SELECT document FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(serde_json::from_str(
                &r.try_get::<String, _>("document")?,
            )?)),
        }
    }

    /// Most recent tasks of an app (all apps with None), newest first.
    pub async fn tasks(
        &self,
        app: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TaskStatus>, HistoryError> {
        let rows =
            match app {
                Some(a) => sqlx::query(
                    "SELECT document FROM tasks WHERE app = $1 ORDER BY created_ms DESC LIMIT $2",
                )
                .bind(a)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query("SELECT document FROM tasks ORDER BY created_ms DESC LIMIT $1")
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                }
            };
        rows.iter()
            .map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>("document")?)?))
            .collect()
    }

    /// The connection pool (other tables of the same database: grants and audit, see `auth::store`).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn release_of(r: &sqlx::any::AnyRow) -> Result<Release, HistoryError> {
    let manifest: Manifest = serde_json::from_str(&r.try_get::<String, _>("manifest")?)?;
    let containers: Vec<String> = serde_json::from_str(&r.try_get::<String, _>("containers")?)?;
    Ok(Release {
        app: r.try_get("app")?,
        env: r.try_get("env")?,
        number: r.try_get("number")?,
        sha: r.try_get("sha")?,
        image: r.try_get("image")?,
        manifest,
        task_id: r.try_get("task_id")?,
        containers,
        created_ms: r.try_get("created_ms")?,
    })
}
