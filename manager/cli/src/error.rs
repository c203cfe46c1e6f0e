//! What can go wrong, as one line a person can act on, and the exit code of each kind.
//!
//! | exit | when |
//! |---|---|
//! | 0 | success |
//! | 1 | the manager refused or failed the request, or a task failed |
//! | 2 | bad usage (unknown command or flag, invalid name): nothing was sent |
//! | 3 | no manager could be reached |
//! | 4 | not logged in, session expired, or not allowed |
//! | 5 | the local configuration is missing or unusable |
//!
//! `atlantis exec` exits with the command's own exit code instead.

/// A failure of a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The manager could not be reached at all.
    #[error("cannot reach the manager at {url}: {reason}")]
    Unreachable {
        /// The manager's URL.
        url: String,
        /// Why (connection refused, timeout, TLS).
        reason: String,
    },
    /// The manager answered with an error body.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The manager's stable code.
        code: String,
        /// Its message.
        message: String,
    },
    /// 401 from the manager.
    #[error("not logged in or session expired: run atlantis login")]
    Unauthenticated,
    /// 403 from the manager.
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// A task ended in failure.
    #[error("{0}")]
    TaskFailed(String),
    /// Local configuration missing or broken.
    #[error("{0}")]
    Config(String),
    /// Bad input noticed after parsing (a bad `K=V`, a file that cannot be read).
    #[error("{0}")]
    Usage(String),
    /// Anything else (an undecodable answer, a broken stream).
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Api { .. } | CliError::TaskFailed(_) | CliError::Other(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::Unauthenticated | CliError::Forbidden(_) => 4,
            CliError::Config(_) => 5,
        }
    }

    /// The manager's error code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CliError::Api { code, .. } => Some(code),
            CliError::Unauthenticated => Some("unauthorized"),
            CliError::Forbidden(_) => Some("forbidden"),
            _ => None,
        }
    }

    /// The error as the JSON document printed with `--json`: `{"error": {"code", "message", "exit"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let code = self.code().map(str::to_owned).unwrap_or_else(|| {
            match self {
                CliError::Unreachable { .. } => "unreachable",
                CliError::TaskFailed(_) => "task_failed",
                CliError::Config(_) => "config",
                CliError::Usage(_) => "usage",
                _ => "error",
            }
            .to_owned()
        });
        let message = match self {
            CliError::Api { message, .. } => message.clone(),
            other => other.to_string(),
        };
        serde_json::json!({"error": {"code": code, "message": message, "exit": self.exit_code()}})
    }
}

/// A one-line, human description of a transport failure: the innermost cause, without reqwest's chain
/// of wrappers.
pub fn transport_reason(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let inner = inner.to_string();
    let inner = match inner.find(" (os error") {
        Some(i) => inner[..i].to_lowercase(),
        None => inner,
    };
    let base = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        format!("connection failed ({inner})")
    } else {
        inner.to_string()
    };
    base.replace('\n', " ")
}
