//! Following a task: the manager's ndjson stream (`GET /v1/tasks/{id}/stream`) drawn as live progress on a
//! terminal (a spinner per running step with its elapsed time, a line per finished step, the warnings) or
//! as plain lines otherwise.

use std::time::Duration;

use atlantis_common::api::manager::{TaskState, TaskStatus};
use futures::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::{Client, seg};
use crate::error::CliError;
use crate::output::{clean, duration};

/// Longest status line accepted from the stream.
const MAX_LINE: usize = 4 * 1024 * 1024;
/// Reconnections of a broken stream before giving up.
const RECONNECTS: u32 = 5;

/// How progress is shown.
#[derive(Clone)]
pub enum Display {
    /// Spinners on a terminal.
    Live(MultiProgress),
    /// A line per event on stderr.
    Plain,
    /// Nothing (`--json` without a terminal).
    Quiet,
}

impl Display {
    /// Chooses from the terminal and `--json`.
    pub fn new(tty_err: bool, json: bool) -> Display {
        if tty_err {
            Display::Live(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else if json {
            Display::Quiet
        } else {
            Display::Plain
        }
    }

    /// Prints a line above the spinners (or plainly).
    pub fn line(&self, s: &str) {
        match self {
            Display::Live(m) => {
                if m.println(s).is_err() {
                    eprintln!("{s}");
                }
            }
            Display::Plain => eprintln!("{s}"),
            Display::Quiet => {}
        }
    }
}

struct View {
    prefix: String,
    display: Display,
    /// Steps drawn: (finished, spinner).
    steps: Vec<(bool, Option<ProgressBar>)>,
    warnings: usize,
}

impl View {
    fn spinner(&self, name: &str) -> Option<ProgressBar> {
        let Display::Live(m) = &self.display else {
            return None;
        };
        // Styled and named before it is added, so no empty line is ever drawn.
        let pb = ProgressBar::new_spinner()
            .with_style(
                ProgressStyle::with_template("{spinner:.cyan} {prefix}{msg} {elapsed:.dim}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            )
            .with_prefix(self.prefix.clone())
            .with_message(name.to_owned());
        let pb = m.add(pb);
        pb.enable_steady_tick(Duration::from_millis(100));
        Some(pb)
    }

    fn finished_line(&self, failed: bool, name: &str, took: u64, detail: &str) -> String {
        let mark = if failed {
            console::style("✗").red().bold().to_string()
        } else {
            console::style("✓").green().to_string()
        };
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" {}", console::style(format!("({})", clean(detail))).dim())
        };
        format!(
            "{mark} {}{} {}{detail}",
            self.prefix,
            clean(name),
            console::style(duration(took)).dim()
        )
    }

    fn update(&mut self, s: &TaskStatus) {
        let last = s.steps.len().saturating_sub(1);
        for (i, step) in s.steps.iter().enumerate() {
            if i >= self.steps.len() {
                let pb = self.spinner(&clean(&step.name));
                if matches!(self.display, Display::Plain) {
                    eprintln!("… {}{}", self.prefix, clean(&step.name));
                }
                self.steps.push((false, pb));
            }
            let Some(took) = step.took_ms else { continue };
            if self.steps[i].0 {
                continue;
            }
            let failed = s.state == TaskState::Failed && i == last;
            let line = self.finished_line(failed, &step.name, took, &step.detail);
            if let Some(pb) = self.steps[i].1.take() {
                pb.finish_and_clear();
            }
            self.display.line(&line);
            self.steps[i].0 = true;
        }
        for w in s.warnings.iter().skip(self.warnings) {
            let line = format!(
                "{} {}{}",
                console::style("warning:").yellow().bold(),
                self.prefix,
                clean(w)
            );
            // Warnings are worth seeing even in --json mode.
            match &self.display {
                Display::Quiet => eprintln!("{line}"),
                d => d.line(&line),
            }
        }
        self.warnings = s.warnings.len();
    }

    fn clear(&mut self) {
        for (_, pb) in &mut self.steps {
            if let Some(pb) = pb.take() {
                pb.finish_and_clear();
            }
        }
    }
}

/// Follows task `id` to its end, drawing its progress; returns the final status.
pub async fn follow(
    client: &Client,
    id: &str,
    prefix: &str,
    display: &Display,
) -> Result<TaskStatus, CliError> {
    let mut view = View {
        prefix: prefix.to_owned(),
        display: display.clone(),
        steps: Vec::new(),
        warnings: 0,
    };
    let path = format!("/v1/tasks/{}/stream", seg(id));
    let mut broken = None;
    for _ in 0..=RECONNECTS {
        match read_stream(client, &path, &mut view).await {
            Ok(Some(fin)) => {
                view.update(&fin);
                view.clear();
                return Ok(fin);
            }
            Ok(None) => broken = None,
            Err(e @ (CliError::Api { .. } | CliError::Unauthenticated)) => {
                view.clear();
                return Err(e);
            }
            Err(e) => broken = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    view.clear();
    // The stream kept breaking: one plain read of the status says where the task is.
    let s: TaskStatus = client.get(&format!("/v1/tasks/{}", seg(id))).await?;
    if s.state != TaskState::Running {
        return Ok(s);
    }
    Err(broken.unwrap_or_else(|| {
        CliError::Other(format!(
            "lost the progress of task {id}; it goes on: see `atlantis task {id} --wait`"
        ))
    }))
}

/// Reads one connection of the stream; `Some(final status)` once the task ended.
async fn read_stream(
    client: &Client,
    path: &str,
    view: &mut View,
) -> Result<Option<TaskStatus>, CliError> {
    let resp = client.stream(reqwest::Method::GET, path, None).await?;
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| client.stream_error(&e))?;
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if let Some(fin) = handle_line(&line, view)? {
                return Ok(Some(fin));
            }
        }
        if buf.len() > MAX_LINE {
            return Err(CliError::Other(format!(
                "a task status line from {} is longer than {MAX_LINE} bytes",
                client.base()
            )));
        }
    }
    if !buf.is_empty() {
        return handle_line(&buf, view);
    }
    Ok(None)
}

fn handle_line(line: &[u8], view: &mut View) -> Result<Option<TaskStatus>, CliError> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let s: TaskStatus = serde_json::from_slice(line)
        .map_err(|e| CliError::Other(format!("undecodable task status: {e}")))?;
    if s.state == TaskState::Running {
        view.update(&s);
        Ok(None)
    } else {
        Ok(Some(s))
    }
}

/// The error of a failed task: what failed, at which step, the manager's reason, and the task ID.
pub fn failure(s: &TaskStatus, region: Option<&str>) -> CliError {
    let kind = serde_json::to_value(s.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "task".into());
    let target = match &s.env {
        Some(e) => format!("{}.{e}", s.app),
        None => s.app.clone(),
    };
    let step = s
        .steps
        .last()
        .map_or_else(String::new, |st| format!(" at step `{}`", clean(&st.name)));
    let region = region.map_or_else(String::new, |r| format!(" in {r}"));
    CliError::TaskFailed(format!(
        "{kind} of {target}{region} failed{step}: {} (task {})",
        clean(s.error.as_deref().unwrap_or("no reason given")),
        s.id
    ))
}
