//! Tasks: long operations run in the background; their progress is kept in memory (for streaming),
//! written to ZooKeeper `tasks/<id>` as it happens (so a restarted manager can see what was in flight),
//! and stored in the SQL history when they end (then the ZooKeeper node is removed).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use atlantis_common::api::manager::{TaskKind, TaskState, TaskStatus, TaskStep};
use atlantis_common::zk::Coord;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::history::History;

/// Tasks kept in memory after they end (older ones are read from SQL).
const KEEP_FINISHED: usize = 256;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The registry of tasks of this manager.
#[derive(Clone)]
pub struct Tasks {
    coord: Coord,
    history: History,
    live: Arc<Mutex<HashMap<String, watch::Receiver<TaskStatus>>>>,
    finished: Arc<Mutex<VecDeque<String>>>,
}

impl Tasks {
    /// A registry writing to `coord` and `history`.
    pub fn new(coord: Coord, history: History) -> Tasks {
        Tasks {
            coord,
            history,
            live: Arc::default(),
            finished: Arc::default(),
        }
    }

    /// A fresh task ID.
    pub fn new_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Starts tracking a task.
    pub async fn start(&self, id: String, kind: TaskKind, app: &str, env: Option<&str>) -> Task {
        let status = TaskStatus {
            version: 1,
            id: id.clone(),
            kind,
            app: app.to_owned(),
            env: env.map(str::to_owned),
            state: TaskState::Running,
            steps: Vec::new(),
            warnings: Vec::new(),
            error: None,
            release: None,
            created_ms: now_ms(),
            finished_ms: None,
        };
        let (tx, rx) = watch::channel(status.clone());
        self.live.lock().insert(id.clone(), rx);
        let t = Task {
            tasks: self.clone(),
            tx: Arc::new(tx),
        };
        t.persist().await;
        t
    }

    /// A task's status: live, or from the history.
    pub async fn get(&self, id: &str) -> Option<TaskStatus> {
        if let Some(rx) = self.live.lock().get(id) {
            return Some(rx.borrow().clone());
        }
        self.history.task(id).await.ok().flatten()
    }

    /// A live task's updates.
    pub fn subscribe(&self, id: &str) -> Option<watch::Receiver<TaskStatus>> {
        self.live.lock().get(id).cloned()
    }

    fn retire(&self, id: &str) {
        let mut f = self.finished.lock();
        f.push_back(id.to_owned());
        while f.len() > KEEP_FINISHED {
            if let Some(old) = f.pop_front() {
                self.live.lock().remove(&old);
            }
        }
    }
}

/// A running task: its steps, warnings and outcome.
#[derive(Clone)]
pub struct Task {
    tasks: Tasks,
    tx: Arc<watch::Sender<TaskStatus>>,
}

impl Task {
    /// The ID.
    pub fn id(&self) -> String {
        self.tx.borrow().id.clone()
    }

    async fn persist(&self) {
        let s = self.tx.borrow().clone();
        let path = self.tasks.coord.layout().task(&s.id);
        if let Err(e) = self.tasks.coord.put(&path, &s).await {
            tracing::warn!(task = %s.id, error = %e, "Cannot write task progress to ZooKeeper.");
        }
    }

    /// Starts a step (ending the one before).
    pub async fn step(&self, name: &str) {
        self.tx.send_modify(|s| {
            close_step(s);
            s.steps.push(TaskStep {
                name: name.to_owned(),
                started_ms: now_ms(),
                took_ms: None,
                detail: String::new(),
            });
        });
        tracing::info!(task = %self.id(), step = name, "Task step.");
        self.persist().await;
    }

    /// Adds detail to the current step.
    pub fn detail(&self, d: impl Into<String>) {
        let d = d.into();
        self.tx.send_modify(|s| {
            if let Some(last) = s.steps.last_mut() {
                if !last.detail.is_empty() {
                    last.detail.push_str("; ");
                }
                last.detail.push_str(&d);
            }
        });
    }

    /// Records a warning.
    pub fn warn(&self, w: impl Into<String>) {
        let w = w.into();
        tracing::warn!(task = %self.id(), warning = %w, "Task warning.");
        self.tx.send_modify(|s| s.warnings.push(w));
    }

    /// Sets the release the task made.
    pub fn set_release(&self, n: i64) {
        self.tx.send_modify(|s| s.release = Some(n));
    }

    /// Ends the task well.
    pub async fn done(self) {
        self.finish(TaskState::Done, None).await;
    }

    /// Ends the task with an error.
    pub async fn fail(self, error: String) {
        tracing::warn!(task = %self.id(), %error, "Task failed.");
        self.finish(TaskState::Failed, Some(error)).await;
    }

    async fn finish(self, state: TaskState, error: Option<String>) {
        self.tx.send_modify(|s| {
            close_step(s);
            s.state = state;
            s.error = error;
            s.finished_ms = Some(now_ms());
        });
        let s = self.tx.borrow().clone();
        if let Err(e) = self.tasks.history.save_task(&s).await {
            tracing::warn!(task = %s.id, error = %e, "Cannot record the task in the history.");
            self.persist().await;
        } else {
            let path = self.tasks.coord.layout().task(&s.id);
            let _ = self.tasks.coord.delete(&path, None).await;
        }
        self.tasks.retire(&s.id);
    }
}

fn close_step(s: &mut TaskStatus) {
    if let Some(last) = s.steps.last_mut()
        && last.took_ms.is_none()
    {
        last.took_ms = Some(now_ms().saturating_sub(last.started_ms));
    }
}
