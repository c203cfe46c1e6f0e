//! Multi-op transactions: every operation applies, or none does.

use serde::Serialize;
use zookeeper_client as zkc;

use super::client::{Coord, acl, ephemeral};
use super::error::CoordError;

enum Op {
    Check {
        path: String,
        version: i32,
    },
    Create {
        path: String,
        data: Vec<u8>,
        ephemeral: bool,
    },
    Set {
        path: String,
        data: Vec<u8>,
        version: Option<i32>,
    },
    Delete {
        path: String,
        version: Option<i32>,
    },
}

impl Op {
    fn path(&self) -> &str {
        match self {
            Op::Check { path, .. }
            | Op::Create { path, .. }
            | Op::Set { path, .. }
            | Op::Delete { path, .. } => path,
        }
    }
}

/// A transaction under construction; see [`Coord::txn`]. Parents of created nodes must already exist.
pub struct Txn {
    coord: Coord,
    ops: Vec<Op>,
    error: Option<CoordError>,
}

/// What one operation of a committed transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResult {
    /// A version check passed.
    Checked,
    /// A node was created.
    Created,
    /// A node's data was set; its new version.
    Set { version: i32 },
    /// A node was deleted.
    Deleted,
}

impl Txn {
    pub(crate) fn new(coord: Coord) -> Txn {
        Txn {
            coord,
            ops: Vec::new(),
            error: None,
        }
    }

    fn encode<T: Serialize>(&mut self, value: &T) -> Vec<u8> {
        serde_json::to_vec(value).unwrap_or_else(|e| {
            self.error.get_or_insert(CoordError::Encode(e));
            Vec::new()
        })
    }

    /// Requires `path` to be at `version`.
    pub fn check(mut self, path: &str, version: i32) -> Self {
        self.ops.push(Op::Check {
            path: path.to_owned(),
            version,
        });
        self
    }

    /// Creates a persistent node holding `value` as JSON.
    pub fn create<T: Serialize>(mut self, path: &str, value: &T) -> Self {
        let data = self.encode(value);
        self.ops.push(Op::Create {
            path: path.to_owned(),
            data,
            ephemeral: false,
        });
        self
    }

    /// Creates a persistent node with raw data.
    pub fn create_raw(mut self, path: &str, data: &[u8]) -> Self {
        self.ops.push(Op::Create {
            path: path.to_owned(),
            data: data.to_vec(),
            ephemeral: false,
        });
        self
    }

    /// Creates an ephemeral node with raw data (owned by the current session).
    pub fn create_ephemeral_raw(mut self, path: &str, data: &[u8]) -> Self {
        self.ops.push(Op::Create {
            path: path.to_owned(),
            data: data.to_vec(),
            ephemeral: true,
        });
        self
    }

    /// Sets a node to `value` as JSON, if at `version` (any with `None`).
    pub fn set<T: Serialize>(mut self, path: &str, value: &T, version: Option<i32>) -> Self {
        let data = self.encode(value);
        self.ops.push(Op::Set {
            path: path.to_owned(),
            data,
            version,
        });
        self
    }

    /// Sets a node's raw data, if at `version` (any with `None`).
    pub fn set_raw(mut self, path: &str, data: &[u8], version: Option<i32>) -> Self {
        self.ops.push(Op::Set {
            path: path.to_owned(),
            data: data.to_vec(),
            version,
        });
        self
    }

    /// Deletes a node, if at `version` (any with `None`).
    pub fn delete(mut self, path: &str, version: Option<i32>) -> Self {
        self.ops.push(Op::Delete {
            path: path.to_owned(),
            version,
        });
        self
    }

    /// The number of operations so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when no operation was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies all operations atomically. On failure nothing was applied, and the error names the
    /// operation that failed (a stale version is a `Conflict`).
    pub async fn commit(self) -> Result<Vec<TxnResult>, CoordError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.ops.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.coord.client()?;
        let mut w = client.new_multi_writer();
        for op in &self.ops {
            let r = match op {
                Op::Check { path, version } => w.add_check_version(path, *version),
                Op::Create {
                    path,
                    data,
                    ephemeral: e,
                } => w.add_create(path, data, &if *e { ephemeral() } else { acl() }),
                Op::Set {
                    path,
                    data,
                    version,
                } => w.add_set_data(path, data, *version),
                Op::Delete { path, version } => w.add_delete(path, *version),
            };
            r.map_err(|e| CoordError::from_zk(op.path(), e))?;
        }
        match w.commit().await {
            Ok(results) => Ok(results
                .into_iter()
                .map(|r| match r {
                    zkc::MultiWriteResult::Check => TxnResult::Checked,
                    zkc::MultiWriteResult::Create { .. } => TxnResult::Created,
                    zkc::MultiWriteResult::SetData { stat } => TxnResult::Set {
                        version: stat.version,
                    },
                    zkc::MultiWriteResult::Delete => TxnResult::Deleted,
                    #[allow(unreachable_patterns)]
                    _ => TxnResult::Checked,
                })
                .collect()),
            Err(zkc::MultiWriteError::OperationFailed { index, source }) => {
                let path = self.ops.get(index).map(Op::path).unwrap_or("");
                Err(CoordError::Txn {
                    index,
                    source: Box::new(CoordError::from_zk(path, source)),
                })
            }
            Err(zkc::MultiWriteError::RequestFailed { source }) => {
                Err(CoordError::from_zk("", source))
            }
        }
    }
}
