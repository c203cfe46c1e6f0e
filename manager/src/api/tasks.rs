//! Tasks: status, and a stream of JSON lines (one status document per change, the last one final).

use atlantis_common::api::manager::ErrorBody;
use std::convert::Infallible;

use atlantis_common::api::manager::{TaskState, TaskStatus};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::ctx::Ctx;
use crate::error::ApiError;

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::InvalidRequest(format!("invalid task id {id:?}")));
    }
    Ok(())
}

/// `GET /v1/tasks/{id}`
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path)), responses((status = 200, description = "The task", body = TaskStatus), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn get_one(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Result<Json<TaskStatus>, ApiError> {
    check_id(&id)?;
    ctx.tasks
        .get(&id)
        .await
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no task {id}")))
}

/// Query of `GET /v1/tasks`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Only this app's tasks.
    pub app: Option<String>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<i64>,
}

/// `GET /v1/tasks?app=&limit=`: finished tasks from the history, newest first.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(("app" = Option<String>, Query), ("limit" = Option<i64>, Query)), responses((status = 200, description = "Finished tasks, newest first", body = [TaskStatus]), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn list(
    State(ctx): State<Ctx>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<TaskStatus>>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(ctx.history.tasks(q.app.as_deref(), limit).await?))
}

/// `GET /v1/tasks/{id}/stream`: `application/x-ndjson`, a status line at once and one per change, ending
/// with the final status.
#[utoipa::path(get, path = "/v1/tasks/{id}/stream", tag = "tasks", params(("id" = String, Path)), responses((status = 200, description = "One TaskStatus JSON document per line until the task ends", content_type = "application/x-ndjson", body = TaskStatus), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn stream(State(ctx): State<Ctx>, Path(id): Path<String>) -> Result<Response, ApiError> {
    check_id(&id)?;
    let line = |s: &TaskStatus| {
        let mut v = serde_json::to_vec(s).unwrap_or_default();
        v.push(b'\n');
        v
    };
    let Some(mut rx) = ctx.tasks.subscribe(&id) else {
        let s = ctx
            .tasks
            .get(&id)
            .await
            .ok_or_else(|| ApiError::NotFound(format!("no task {id}")))?;
        if s.state != TaskState::Running {
            return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], line(&s)).into_response());
        }
        // Run by another manager: follow its ZooKeeper node (then the history) by polling.
        let s = async_stream(move |tx| async move {
            let mut last = None;
            loop {
                let Some(cur) = ctx.tasks.get(&id).await else {
                    return;
                };
                let fin = cur.state != TaskState::Running;
                if last.as_ref() != Some(&cur) {
                    if tx.send(line(&cur)).await.is_err() {
                        return;
                    }
                    last = Some(cur);
                }
                if fin {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        });
        return Ok((
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(s),
        )
            .into_response());
    };
    let s = async_stream(move |tx| async move {
        loop {
            let cur = rx.borrow_and_update().clone();
            let fin = cur.state != TaskState::Running;
            if tx.send(line(&cur)).await.is_err() || fin {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(s),
    )
        .into_response())
}

fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Result<Vec<u8>, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}
