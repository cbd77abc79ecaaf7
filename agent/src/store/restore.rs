//! Seeding a new single-node cluster from a backup file (`raft3d restore`), for migration to
//! new hardware or recovery. Everything is verified before anything is written.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

use openraft::Membership;

use super::log_store::LogStore;
use super::snapshot_file::{self, SnapshotError};
use crate::cluster::types::{Member, NodeId, SnapshotMeta, StoredMembership, Vote};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the backup is unusable: {0}; nothing was written")]
    Backup(#[from] SnapshotError),
    #[error("the backup holds no applied state; nothing was written")]
    Empty,
    #[error("{0} already holds data; restore into an empty data directory (or remove it first)")]
    NotEmpty(String),
    #[error("writing the restored node failed: {0}")]
    Io(#[from] io::Error),
}

/// What was restored.
pub struct Restored {
    pub index: u64,
    pub printers: usize,
    pub filaments: usize,
    pub jobs: usize,
}

/// Writes `bytes` (a backup from `GET /cluster/snapshot`) as the state of a new single-node
/// cluster whose only voter is `id` at `member`, under `node_dir`.
pub fn restore_backup(
    node_dir: &Path,
    bytes: &[u8],
    id: &NodeId,
    member: Member,
) -> Result<Restored, RestoreError> {
    let (meta, farm) = snapshot_file::decode(bytes)?;
    let last = meta.last_log_id.clone().ok_or(RestoreError::Empty)?;
    if node_dir
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        return Err(RestoreError::NotEmpty(node_dir.display().to_string()));
    }
    let membership = Membership::new(
        vec![BTreeSet::from([id.clone()])],
        BTreeMap::from([(id.clone(), member)]),
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    let new_meta = SnapshotMeta {
        last_log_id: Some(last.clone()),
        last_membership: StoredMembership::new(Some(last.clone()), membership),
    };
    let restored = Restored {
        index: last.index(),
        printers: farm.printers().count(),
        filaments: farm.filaments().count(),
        jobs: farm.jobs().count(),
    };
    let file = snapshot_file::encode(&new_meta, &farm)?;
    std::fs::create_dir_all(node_dir)?;
    snapshot_file::write_atomic(
        &node_dir
            .join("snapshots")
            .join(snapshot_file::file_name(&new_meta)),
        &file,
    )?;
    // The log starts purged at the backup's position, and the vote carries its term, so the
    // node's first election moves to a later term than any entry it holds.
    let vote = Vote::new(last.committed_leader_id().term, id.clone());
    LogStore::seed(node_dir, &last, &vote)?;
    Ok(restored)
}
