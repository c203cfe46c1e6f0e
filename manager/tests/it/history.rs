//! One history suite, run against SQLite and against a real PostgreSQL.

use atlantis_common::api::manager::{Manifest, Release, TaskKind, TaskState, TaskStatus, TaskStep};
use atlantis_manager::history::{History, HistoryError};

fn release(app: &str, env: &str, number: i64, sha: &str) -> Release {
    Release {
        app: app.into(),
        env: env.into(),
        number,
        sha: sha.into(),
        image: format!("registry.local/apps/{app}@sha256:{}", "a".repeat(64)),
        manifest: Manifest {
            instances: 2,
            ..Manifest::default()
        },
        task_id: format!("task-{number}"),
        containers: vec![format!("{app}-{}-{env}-abc123", &sha[..7])],
        created_ms: 1_700_000_000_000 + number,
    }
}

async fn suite(h: &History) {
    // Release numbers start at 1 and are per app/env.
    assert_eq!(h.next_release_number("web", "prod").await.unwrap(), 1);
    h.record_release(&release("web", "prod", 1, "1111111aaaa"))
        .await
        .unwrap();
    h.record_release(&release("web", "prod", 2, "2222222bbbb"))
        .await
        .unwrap();
    h.record_release(&release("web", "staging", 1, "3333333cccc"))
        .await
        .unwrap();
    assert_eq!(h.next_release_number("web", "prod").await.unwrap(), 3);
    assert_eq!(h.next_release_number("web", "staging").await.unwrap(), 2);
    assert_eq!(h.next_release_number("api", "prod").await.unwrap(), 1);

    // A number taken twice is refused and changes nothing.
    let dup = h
        .record_release(&release("web", "prod", 2, "9999999ffff"))
        .await;
    assert!(matches!(dup, Err(HistoryError::Duplicate(2))), "{dup:?}");
    let two = h.release("web", "prod", 2).await.unwrap().unwrap();
    assert_eq!(two, release("web", "prod", 2, "2222222bbbb"));

    // Newest first, bounded, documents round-trip.
    let list = h.releases("web", "prod", 10).await.unwrap();
    assert_eq!(
        list.iter().map(|r| r.number).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(list[1].manifest.instances, 2);
    assert_eq!(h.releases("web", "prod", 1).await.unwrap().len(), 1);
    assert!(h.release("web", "prod", 7).await.unwrap().is_none());

    // Tasks: saved, replaced, listed per app.
    let mut t = TaskStatus {
        version: 1,
        id: "t1".into(),
        kind: TaskKind::Deploy,
        app: "web".into(),
        env: Some("prod".into()),
        state: TaskState::Running,
        steps: vec![TaskStep {
            name: "start containers".into(),
            started_ms: 1,
            took_ms: Some(5),
            detail: "quote ' and \"".into(),
        }],
        warnings: vec![],
        error: None,
        release: None,
        created_ms: 10,
        finished_ms: None,
    };
    h.save_task(&t).await.unwrap();
    t.state = TaskState::Failed;
    t.error = Some("zone b is short".into());
    h.save_task(&t).await.unwrap();
    assert_eq!(h.task("t1").await.unwrap().unwrap(), t);
    let mut t2 = t.clone();
    t2.id = "t2".into();
    t2.app = "api".into();
    t2.created_ms = 20;
    h.save_task(&t2).await.unwrap();
    assert_eq!(h.tasks(Some("web"), 10).await.unwrap(), vec![t.clone()]);
    assert_eq!(
        h.tasks(None, 10)
            .await
            .unwrap()
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        vec!["t2", "t1"]
    );
    assert!(h.task("nope").await.unwrap().is_none());

    // Forgetting an env leaves the others.
    assert_eq!(h.forget("web", Some("prod")).await.unwrap(), 2);
    assert!(h.releases("web", "prod", 10).await.unwrap().is_empty());
    assert_eq!(h.releases("web", "staging", 10).await.unwrap().len(), 1);
    assert_eq!(h.forget("web", None).await.unwrap(), 1);
}

#[tokio::test]
async fn history_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("h.db").display());
    let h = History::open(&url).await.unwrap();
    suite(&h).await;
    h.close().await;
    // Migrations are idempotent: opening again works and keeps the data.
    let h = History::open(&url).await.unwrap();
    assert_eq!(h.next_release_number("web", "prod").await.unwrap(), 1);
    h.close().await;
}

#[tokio::test]
async fn history_on_postgres() {
    let pg = tokio::task::spawn_blocking(atlantis_testkit::Postgres::start)
        .await
        .unwrap();
    let url = pg.create_database("history");
    let h = History::open(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pg.log_tail(20)));
    suite(&h).await;
    h.close().await;
    let h = History::open(&url).await.unwrap();
    assert_eq!(h.next_release_number("api", "prod").await.unwrap(), 1);
    h.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}
