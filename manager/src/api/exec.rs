//! `POST /v1/containers/{id}/exec`: runs a command in a container through its supervisor (Docker exec,
//! argv as a vector, bounded run time) and streams the supervisor's ndjson events back. Every run is a task
//! of kind `exec` in the history: its step names the command line and the container, its detail the exit
//! code, so `GET /v1/tasks?app=` shows who ran what (with the user once authentication lands).

use atlantis_common::ContainerId;
use atlantis_common::api::exec::{ExecEvent, ExecRequest};
use atlantis_common::api::manager::{ErrorBody, TaskKind};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;

use super::{JsonBody, name};
use crate::ctx::Ctx;
use crate::error::ApiError;
use crate::state;
use crate::tasks::Tasks;

/// Longest event line scanned for the outcome (output lines pass through whatever their size).
const MAX_SCAN: usize = 64 * 1024;

/// `POST /v1/containers/{id}/exec`
#[utoipa::path(post, path = "/v1/containers/{id}/exec", tag = "containers", params(("id" = String, Path)), request_body = ExecRequest, responses((status = 200, description = "One ExecEvent JSON document per line: output, then exit (with the exit code) or error; header x-atlantis-task names the task recording it", content_type = "application/x-ndjson", body = ExecEvent), (status = "default", description = "Error: {code, message}", body = ErrorBody)))]
pub async fn exec(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ExecRequest>,
) -> Result<Response, ApiError> {
    let id: ContainerId = name(&id)?;
    req.validate()?;
    let rec = state::find_instance(&ctx.coord, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no container {id}")))?;
    let sup = state::supervisor(&ctx.coord, &rec.host)
        .await?
        .ok_or_else(|| {
            ApiError::Unavailable(format!("supervisor {} is not registered", rec.host))
        })?;
    let client = ctx
        .client(&sup)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let upstream = client.exec(&id, &req).await.map_err(|e| match e.code() {
        Some("not_found") => ApiError::NotFound(format!("container {id} is not running")),
        Some("invalid_request") => ApiError::InvalidRequest(e.to_string()),
        _ => ApiError::Unavailable(e.to_string()),
    })?;

    let task_id = Tasks::new_id();
    let task = ctx
        .tasks
        .start(
            task_id.clone(),
            TaskKind::Exec,
            rec.app.as_str(),
            Some(rec.env.as_str()),
            &[],
        )
        .await;
    task.step(&format!("exec {} in {id}", req.command_line()))
        .await;

    // Bytes go to the caller as they come; lines are scanned for the outcome, recorded at the end.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut upstream = upstream;
        let mut line: Vec<u8> = Vec::new();
        let mut outcome: Option<ExecEvent> = None;
        let mut caller_gone = false;
        let mut broken = None;
        loop {
            let next = tokio::select! {
                n = upstream.next() => n,
                // The caller hung up while the command was silent: dropping the upstream stream tells
                // the supervisor, which kills the command.
                () = tx.closed() => {
                    caller_gone = true;
                    break;
                }
            };
            let Some(chunk) = next else { break };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            };
            for b in chunk.iter() {
                if *b == b'\n' {
                    if let Ok(ev) = serde_json::from_slice::<ExecEvent>(&line)
                        && matches!(ev, ExecEvent::Exit { .. } | ExecEvent::Error { .. })
                    {
                        outcome = Some(ev);
                    }
                    line.clear();
                } else if line.len() < MAX_SCAN {
                    line.push(*b);
                }
            }
            if tx.send(Ok(chunk)).await.is_err() {
                caller_gone = true;
                break;
            }
        }
        drop(upstream);
        match (outcome, broken, caller_gone) {
            (
                Some(ExecEvent::Exit {
                    exit_code,
                    timed_out,
                }),
                _,
                _,
            ) => {
                task.detail(if timed_out {
                    format!("killed at its time limit, exit code {exit_code}")
                } else {
                    format!("exit code {exit_code}")
                });
                task.done().await;
            }
            (Some(ExecEvent::Error { code, message }), _, _) => {
                task.fail(format!("{message} ({code})")).await;
            }
            (_, _, true) => {
                task.fail("the caller hung up; the command was killed".into())
                    .await;
            }
            (_, Some(b), _) => {
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "supervisor stream broke: {b}"
                    ))))
                    .await;
                task.fail(format!("the supervisor's stream broke: {b}"))
                    .await;
            }
            _ => {
                task.fail("the supervisor ended the stream without an exit code".into())
                    .await;
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (header::HeaderName::from_static("x-atlantis-task"), task_id),
        ],
        body,
    )
        .into_response())
}
