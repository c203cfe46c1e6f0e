//! Tasks: long operations run in the background. Their progress is kept in memory (for streaming) and in
//! ZooKeeper `tasks/<id>` as it happens, with a journal of what the task has created and where it stands,
//! written before and after each step acts; when a task ends it goes into the SQL history and the
//! ZooKeeper node is removed.
//!
//! The node is the task's claim: every write is a compare-and-set on the version its owner wrote last. A
//! manager that takes a task over (see `recovery`) bumps the version, so the old owner's next write fails
//! and it stops acting ([`Task::is_lost`]); a task is never run by two managers at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use atlantis_common::api::manager::{
    InstanceRecord, ReleaseTarget, TaskKind, TaskState, TaskStatus, TaskStep,
};
use atlantis_common::zk::{Coord, CoordError, RouterKind};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
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

/// Where a release-like task (deploy, rollback, scale, re-placement, replacement after a revoke) stands:
/// the phases of `crate::release::phases`, in order. Each is written to the journal before the engine acts
/// in it, so a manager taking the task over knows how far it got. Journals written before `planned`,
/// `healthy`, `switching`, `acknowledging` and `recording` existed (`started` for `healthy`) read as
/// before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// What the task will create and remove is recorded; nothing started yet.
    Planned,
    /// Instance nodes and containers of `created` are being made (some may exist).
    Starting,
    /// Every container of `created` runs and is healthy; traffic not switched.
    #[serde(alias = "started")]
    Healthy,
    /// The switch transaction is being committed (it may or may not have: recovery reads ZooKeeper).
    Switching,
    /// The switch transaction committed: the new backends serve.
    Switched,
    /// Waiting for the routers to serve the new pool (bounded; the ones that lag are named).
    Acknowledging,
    /// `remove` is being drained and removed.
    Draining,
    /// The release is being written to the history.
    Recording,
}

impl Phase {
    /// True once traffic may have moved to the new backends (from here on, the task goes forward).
    pub fn past_switch(self) -> bool {
        self >= Phase::Switched
    }
}

/// Why a task must stop acting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// Another manager claimed the task.
    #[error("this task was taken over by another manager; stopping here")]
    TakenOver,
    /// The journal could not be written (acting unrecorded would be unsafe).
    #[error("cannot record the task's progress in ZooKeeper; stopping")]
    Unrecorded,
}

/// What a teardown works on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeardownPlan {
    /// The envs torn down.
    pub envs: Vec<String>,
    /// Only this container.
    pub container: Option<String>,
}

/// What a task has done, for whoever takes it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Where it stands.
    pub phase: Phase,
    /// The router fleet of the app.env.
    pub route_kind: RouterKind,
    /// Containers this task creates (recorded before any is created).
    #[serde(default)]
    pub created: Vec<InstanceRecord>,
    /// Containers it removes once the new ones serve (the old release, scaled-down or dead ones).
    #[serde(default)]
    pub remove: Vec<InstanceRecord>,
    /// The release target the switch writes (deploy, rollback).
    #[serde(default)]
    pub target: Option<ReleaseTarget>,
    /// The release node's version before the switch (scale: the switch changes it).
    #[serde(default)]
    pub release_version: Option<i32>,
    /// A teardown's scope.
    #[serde(default)]
    pub teardown: Option<TeardownPlan>,
}

/// The journal part of `tasks/<id>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The manager running it.
    #[serde(default)]
    pub owner: String,
    /// The lock it holds (its key's segments); the holder node names the task as its purpose.
    #[serde(default)]
    pub lock: Vec<String>,
    /// How often it was taken over.
    #[serde(default)]
    pub takeovers: u32,
    /// What it did so far (None: nothing yet).
    #[serde(default)]
    pub plan: Option<Plan>,
}

/// The ZooKeeper node `tasks/<id>`: the public status plus the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNode {
    /// What `GET /v1/tasks/<id>` shows.
    #[serde(flatten)]
    pub status: TaskStatus,
    /// What recovery needs.
    #[serde(default)]
    pub journal: Journal,
}

/// The registry of tasks of this manager.
#[derive(Clone)]
pub struct Tasks {
    coord: Coord,
    history: History,
    owner: Arc<String>,
    live: Arc<Mutex<HashMap<String, watch::Receiver<TaskStatus>>>>,
    finished: Arc<Mutex<VecDeque<String>>>,
}

impl Tasks {
    /// A registry writing to `coord` and `history`, owned by manager `owner`.
    pub fn new(coord: Coord, history: History, owner: &str) -> Tasks {
        Tasks {
            coord,
            history,
            owner: Arc::new(owner.to_owned()),
            live: Arc::default(),
            finished: Arc::default(),
        }
    }

    /// A fresh task ID.
    pub fn new_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Starts tracking a task that holds the lock `lock` (its ZooKeeper node is created now).
    pub async fn start(
        &self,
        id: String,
        kind: TaskKind,
        app: &str,
        env: Option<&str>,
        lock: &[&str],
    ) -> Task {
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
        let journal = Journal {
            owner: self.owner.to_string(),
            lock: lock.iter().map(|s| (*s).to_owned()).collect(),
            takeovers: 0,
            plan: None,
        };
        let t = self.track(status, journal, None);
        t.persist().await;
        t
    }

    /// Takes over a task found in ZooKeeper at `version`: claims its node by compare-and-set. `None` when
    /// someone else changed it first (its owner is alive after all, or another manager claimed it).
    pub async fn adopt(&self, mut node: TaskNode, version: i32) -> Option<Task> {
        let previous = std::mem::take(&mut node.journal.owner);
        node.journal.owner = self.owner.to_string();
        node.journal.takeovers += 1;
        let path = self.coord.layout().task(&node.status.id);
        match self.coord.set(&path, &node, Some(version)).await {
            Ok(v) => {
                let t = self.track(node.status, node.journal, Some(v));
                t.warn(format!(
                    "taken over by manager {} (its previous owner {previous} is gone)",
                    self.owner
                ));
                Some(t)
            }
            Err(e) => {
                tracing::info!(task = %node.status.id, error = %e, "Task not taken over: claimed by someone else.");
                None
            }
        }
    }

    fn track(&self, status: TaskStatus, journal: Journal, version: Option<i32>) -> Task {
        let id = status.id.clone();
        let (tx, rx) = watch::channel(status);
        self.live.lock().insert(id, rx);
        Task {
            tasks: self.clone(),
            tx: Arc::new(tx),
            journal: Arc::new(Mutex::new(journal)),
            version: Arc::new(Mutex::new(version)),
            lost: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Every task node in ZooKeeper, with its version (unreadable ones are skipped with a log line).
    pub async fn in_flight(&self) -> Result<Vec<(TaskNode, i32)>, CoordError> {
        let l = self.coord.layout();
        let mut out = Vec::new();
        for id in self.coord.children(&l.tasks()).await? {
            match self.coord.get::<TaskNode>(&l.task(&id)).await {
                Ok(Some(v)) => out.push((v.value, v.version)),
                Ok(None) => {}
                Err(CoordError::Decode { path, source }) => {
                    tracing::warn!(%path, error = %source, "Unreadable task node.");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Moves a finished task that is still in ZooKeeper (its history write had failed) to the history.
    pub async fn archive(&self, node: &TaskNode, version: i32) -> Result<(), String> {
        self.history
            .save_task(&node.status)
            .await
            .map_err(|e| e.to_string())?;
        let path = self.coord.layout().task(&node.status.id);
        self.coord
            .delete(&path, Some(version))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A task's status: live here, in flight in ZooKeeper (on another manager), or from the history.
    pub async fn get(&self, id: &str) -> Option<TaskStatus> {
        // IDs come from request paths: only what `new_id` makes can name a task (and a ZooKeeper node).
        if !is_task_id(id) {
            return None;
        }
        if let Some(rx) = self.live.lock().get(id) {
            return Some(rx.borrow().clone());
        }
        if let Ok(Some(v)) = self
            .coord
            .get::<TaskNode>(&self.coord.layout().task(id))
            .await
        {
            return Some(v.value.status);
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

/// A running task: its steps, warnings, journal and outcome.
#[derive(Clone)]
pub struct Task {
    tasks: Tasks,
    tx: Arc<watch::Sender<TaskStatus>>,
    journal: Arc<Mutex<Journal>>,
    version: Arc<Mutex<Option<i32>>>,
    lost: Arc<AtomicBool>,
}

impl Task {
    /// The ID.
    pub fn id(&self) -> String {
        self.tx.borrow().id.clone()
    }

    /// The task node's path and the version this owner wrote last: writes that must not happen once
    /// another manager claimed the task check it in their transaction.
    pub fn owner_check(&self) -> Option<(String, i32)> {
        let v = (*self.version.lock())?;
        Some((self.tasks.coord.layout().task(&self.tx.borrow().id), v))
    }

    /// The journal as it stands.
    pub fn journal(&self) -> Journal {
        self.journal.lock().clone()
    }

    /// True once another manager has claimed this task: stop acting on it.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Fails when the task was claimed by another manager.
    pub fn check_owned(&self) -> Result<(), TaskError> {
        if self.is_lost() {
            Err(TaskError::TakenOver)
        } else {
            Ok(())
        }
    }

    /// Writes status and journal, compare-and-set on the version written last. Returns false when the node
    /// was claimed by someone else (the task is then lost) or ZooKeeper refused.
    async fn persist(&self) -> bool {
        if self.is_lost() {
            return false;
        }
        let node = TaskNode {
            status: self.tx.borrow().clone(),
            journal: self.journal.lock().clone(),
        };
        let path = self.tasks.coord.layout().task(&node.status.id);
        let expected = *self.version.lock();
        let r = match expected {
            None => self.tasks.coord.create(&path, &node).await,
            Some(v) => self.tasks.coord.set(&path, &node, Some(v)).await,
        };
        match r {
            Ok(v) => {
                *self.version.lock() = Some(v);
                true
            }
            Err(e @ (CoordError::Conflict { .. } | CoordError::NotFound { .. })) => {
                tracing::warn!(task = %node.status.id, error = %e, "Task node claimed by another manager; this one stops.");
                self.lost.store(true, Ordering::SeqCst);
                false
            }
            Err(e) => {
                tracing::warn!(task = %node.status.id, error = %e, "Cannot write task progress to ZooKeeper.");
                false
            }
        }
    }

    /// Records `f`'s change to the journal in ZooKeeper before going on. Fails when the task was claimed
    /// by another manager or the journal could not be written (acting unrecorded would be unsafe).
    pub async fn record(&self, f: impl FnOnce(&mut Journal)) -> Result<(), TaskError> {
        f(&mut self.journal.lock());
        if self.persist().await {
            Ok(())
        } else {
            self.check_owned()?;
            Err(TaskError::Unrecorded)
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
        if self.is_lost() {
            // Another manager owns the task now; its outcome is theirs to record.
            self.tasks.retire(&s.id);
            return;
        }
        if let Err(e) = self.tasks.history.save_task(&s).await {
            tracing::warn!(task = %s.id, error = %e, "Cannot record the task in the history.");
            // The final state stays in ZooKeeper; the leader archives it later.
            self.persist().await;
        } else {
            let path = self.tasks.coord.layout().task(&s.id);
            let expected = *self.version.lock();
            if let Err(e) = self.tasks.coord.delete(&path, expected).await {
                tracing::warn!(task = %s.id, error = %e, "Cannot remove the finished task's node.");
            }
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

/// A task ID as [`Tasks::new_id`] makes them: 32 lowercase hex digits.
pub fn is_task_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
