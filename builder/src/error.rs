//! The builder's errors: each says what was wrong with the input, or which step failed and why.

use atlantis_common::api::app_config::AppConfigError;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The app has no `atlantis.toml`.
    #[error("no atlantis.toml in the app root {0}")]
    MissingConfig(String),
    /// `atlantis.toml` is invalid.
    #[error(transparent)]
    Config(#[from] AppConfigError),
    /// The input breaks a rule (escaping symlink, special file, oversize...).
    #[error("invalid input: {0}")]
    Input(String),
    /// The push reference or another request field is invalid.
    #[error("invalid request: {0}")]
    Request(String),
    /// Reading the app from git failed.
    #[error("git: {0}")]
    Git(String),
    /// The registry refused or failed a request.
    #[error("push: {0}")]
    Push(String),
    /// A local I/O failure (cache, temp dirs).
    #[error("{what}: {source}")]
    Io {
        /// What the builder was doing.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl BuildError {
    /// A stable machine-readable code for API answers.
    pub fn code(&self) -> &'static str {
        match self {
            BuildError::MissingConfig(_) => "missing_config",
            BuildError::Config(_) => "invalid_config",
            BuildError::Input(_) => "invalid_input",
            BuildError::Request(_) => "invalid_request",
            BuildError::Git(_) => "git_failed",
            BuildError::Push(_) => "push_failed",
            BuildError::Io { .. } => "io_error",
        }
    }

    /// True when the caller's input is at fault (not the builder or the registry).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            BuildError::MissingConfig(_)
                | BuildError::Config(_)
                | BuildError::Input(_)
                | BuildError::Request(_)
        )
    }
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}
