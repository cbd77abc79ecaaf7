//! The state-machine adapter: applies committed entries to the in-memory [`FarmState`], builds
//! and installs snapshots, and restores the newest valid snapshot at start-up.
//!
//! Applied state is not written per entry (SD cards wear out): on restart the node loads its
//! newest snapshot and openraft re-applies the committed log after it.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};

use super::snapshot_file;
use crate::cluster::types::{
    LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::domain::{Applied, FarmState};

/// The farm plus the position in the log it reflects; one lock keeps them consistent.
#[derive(Default)]
pub struct Replica {
    pub farm: FarmState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Counters read by `/metrics`.
#[derive(Debug, Default)]
pub struct ApplyStats {
    pub entries: AtomicU64,
    pub apply_nanos: AtomicU64,
    pub snapshots_built: AtomicU64,
    pub last_snapshot_bytes: AtomicU64,
}

struct Shared {
    replica: RwLock<Replica>,
    dir: PathBuf,
    keep: usize,
    stats: ApplyStats,
    /// (applied index, SHA-256 of the farm) of the last hash computed.
    hash_cache: std::sync::Mutex<Option<(u64, String)>>,
    /// Bumped after every applied batch, so waiters (dispatch, readiness) can react.
    applied_tx: tokio::sync::watch::Sender<u64>,
}

#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl StateMachine {
    /// Opens the state machine under `dir` (its `snapshots/` folder), restoring the newest
    /// snapshot that verifies; damaged ones are reported and skipped.
    pub fn open(dir: PathBuf, keep: usize) -> io::Result<StateMachine> {
        let dir = dir.join("snapshots");
        std::fs::create_dir_all(&dir)?;
        let mut replica = Replica::default();
        let stats = ApplyStats::default();
        for path in snapshot_file::list(&dir)?.into_iter().rev() {
            let bytes = std::fs::read(&path)?;
            match snapshot_file::decode(&bytes) {
                Ok((meta, farm)) => {
                    stats
                        .last_snapshot_bytes
                        .store(bytes.len() as u64, Ordering::Relaxed);
                    tracing::info!(snapshot = %path.display(), "restored snapshot");
                    replica = Replica {
                        farm,
                        last_applied: meta.last_log_id.clone(),
                        membership: meta.last_membership.clone(),
                    };
                    break;
                }
                Err(e) => {
                    tracing::warn!(snapshot = %path.display(), error = %e, "skipping damaged snapshot")
                }
            }
        }
        let (applied_tx, _) = tokio::sync::watch::channel(0);
        Ok(StateMachine {
            shared: Arc::new(Shared {
                replica: RwLock::new(replica),
                dir,
                keep,
                stats,
                hash_cache: std::sync::Mutex::new(None),
                applied_tx,
            }),
        })
    }

    /// Read access to the local replica.
    pub fn read(&self) -> RwLockReadGuard<'_, Replica> {
        self.shared
            .replica
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Applied index and a SHA-256 of the farm state at that index: equal on every node that
    /// has applied the same log.
    pub fn state_hash(&self) -> io::Result<(u64, String)> {
        let r = self.read();
        let index = r.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
        let mut cache = self
            .shared
            .hash_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((i, h)) = cache.as_ref() {
            if *i == index {
                return Ok((index, h.clone()));
            }
        }
        let bytes = serde_json::to_vec(&r.farm).map_err(io::Error::other)?;
        let hash = snapshot_file::sha256_hex(&bytes);
        *cache = Some((index, hash.clone()));
        Ok((index, hash))
    }

    pub fn stats(&self) -> &ApplyStats {
        &self.shared.stats
    }

    pub fn subscribe_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    pub fn snapshot_dir(&self) -> &std::path::Path {
        &self.shared.dir
    }

    /// Encodes the current replica as a snapshot file's bytes. The farm is cloned under the
    /// lock and encoded after it is released: applying entries waits for the clone only, not
    /// for the encoding and checksum (several times longer for a large farm).
    pub fn encode_current(&self) -> io::Result<(SnapshotMeta, Vec<u8>)> {
        let replica = self.read();
        let meta = SnapshotMeta {
            last_log_id: replica.last_applied.clone(),
            last_membership: replica.membership.clone(),
        };
        let farm = replica.farm.clone();
        drop(replica);
        let bytes = snapshot_file::encode(&meta, &farm)?;
        Ok((meta, bytes))
    }

    /// `encode_current` with printer access codes and passwords replaced, for a backup taken
    /// by a caller that has not shown the cluster secret.
    pub fn encode_current_redacted(&self) -> io::Result<(SnapshotMeta, Vec<u8>)> {
        let replica = self.read();
        let meta = SnapshotMeta {
            last_log_id: replica.last_applied.clone(),
            last_membership: replica.membership.clone(),
        };
        let mut farm = replica.farm.clone();
        drop(replica);
        farm.redact_secrets();
        let bytes = snapshot_file::encode(&meta, &farm)?;
        Ok((meta, bytes))
    }

    fn replace(&self, meta: &SnapshotMeta, farm: FarmState) {
        let mut r = self
            .shared
            .replica
            .write()
            .unwrap_or_else(|p| p.into_inner());
        r.farm = farm;
        r.last_applied = meta.last_log_id.clone();
        r.membership = meta.last_membership.clone();
        let index = meta.last_log_id.as_ref().map(|l| l.index()).unwrap_or(0);
        self.shared.applied_tx.send_replace(index);
    }

    async fn store_snapshot(&self, meta: &SnapshotMeta, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let path = self.shared.dir.join(snapshot_file::file_name(meta));
        let dir = self.shared.dir.clone();
        let keep = self.shared.keep;
        tokio::task::spawn_blocking(move || {
            snapshot_file::write_atomic(&path, &bytes)?;
            snapshot_file::prune(&dir, keep)?;
            Ok::<_, io::Error>(bytes)
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // Cloning and encoding a large farm takes CPU for a while: off the async threads, so
        // heartbeats and requests keep flowing meanwhile.
        let this = self.clone();
        let (meta, bytes) = tokio::task::spawn_blocking(move || this.encode_current())
            .await
            .map_err(io::Error::other)??;
        let len = bytes.len() as u64;
        let bytes = self.store_snapshot(&meta, bytes).await?;
        self.shared
            .stats
            .snapshots_built
            .fetch_add(1, Ordering::Relaxed);
        self.shared
            .stats
            .last_snapshot_bytes
            .store(len, Ordering::Relaxed);
        tracing::info!(index = ?meta.last_log_id.as_ref().map(|l| l.index()), bytes = len, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: std::io::Cursor::new(bytes),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let r = self.read();
        Ok((r.last_applied.clone(), r.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut last = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let started = Instant::now();
            let index = entry.log_id.index();
            let result = {
                let mut r = self
                    .shared
                    .replica
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                r.last_applied = Some(entry.log_id.clone());
                match entry.payload {
                    EntryPayload::Blank => Ok(Applied::Nothing),
                    EntryPayload::Normal(ref proposal) => r.farm.apply(proposal, index),
                    EntryPayload::Membership(ref m) => {
                        r.membership = StoredMembership::new(Some(entry.log_id.clone()), m.clone());
                        Ok(Applied::Nothing)
                    }
                }
            };
            let stats = &self.shared.stats;
            stats.entries.fetch_add(1, Ordering::Relaxed);
            stats
                .apply_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if let Some(responder) = responder {
                responder.send(result);
            }
            last = Some(index);
        }
        if let Some(index) = last {
            self.shared.applied_tx.send_replace(index);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        let (_, farm) = snapshot_file::decode(&bytes)?;
        // Re-encode under the leader's meta so the stored file names the state it holds.
        let stored = snapshot_file::encode(meta, &farm)?;
        let len = stored.len() as u64;
        self.store_snapshot(meta, stored).await?;
        self.shared
            .stats
            .last_snapshot_bytes
            .store(len, Ordering::Relaxed);
        self.replace(meta, farm);
        tracing::info!(index = ?meta.last_log_id.as_ref().map(|l| l.index()), "installed snapshot from leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let Some(path) = snapshot_file::list(&self.shared.dir)?.pop() else {
            return Ok(None);
        };
        let bytes = tokio::fs::read(&path).await?;
        let (meta, _) = snapshot_file::decode(&bytes)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: std::io::Cursor::new(bytes),
        }))
    }
}
