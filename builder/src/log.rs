//! The build log: a sink for lines of progress, shared by the build and the template steps it runs.

use std::sync::Arc;

/// A line of build progress.
pub type Log = Arc<dyn Fn(String) + Send + Sync>;
