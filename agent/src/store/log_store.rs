//! The Raft log on redb: entries, vote, committed index and purge marker, with group commit.
//!
//! One writer thread owns every write transaction. Appends are queued with openraft's flush
//! callback and acknowledged only after the transaction holding them is durably committed;
//! appends that arrive while an fsync is in flight are drained into the next transaction, so
//! concurrent clients share fsyncs. Vote and truncation wait for their own commit. A purge
//! returns at once and is carried out in chunks of `PURGE_CHUNK` entries riding along with the
//! next transactions, so deleting a large prefix never stalls appends (and heartbeats).
//! Entries queued but not yet durable stay in an in-memory overlay so readers always see the
//! log openraft believes it wrote.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableTable, TableDefinition};

use crate::cluster::types::{Entry, LogId, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_FORMAT: &str = "format_version";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "purged";
/// Version of the on-disk log layout; bumped on any incompatible change.
pub const LOG_FORMAT_VERSION: u64 = 1;
/// Most operations folded into one transaction.
const MAX_BATCH: usize = 4096;
/// Most log entries one transaction deletes for a purge.
const PURGE_CHUNK: u64 = 2_000;

type Done = tokio::sync::oneshot::Sender<io::Result<()>>;

enum WriteOp {
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        ids: Vec<LogId>,
        callback: IOFlushed<TypeConfig>,
    },
    Meta {
        key: &'static str,
        value: Vec<u8>,
        done: Option<Done>,
    },
    TruncateAfter {
        after: Option<u64>,
        done: Done,
    },
    Purge {
        upto: LogId,
        value: Vec<u8>,
    },
}

/// A purge not yet carried out to its end.
struct PendingPurge {
    upto: LogId,
    /// The encoded `upto`, the marker once the last chunk is gone.
    value: Vec<u8>,
}

#[derive(Default)]
struct Memory {
    /// Entries handed to the writer but not yet durable.
    pending: BTreeMap<u64, Entry>,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
}

/// Counters for the benchmark and metrics: durable commits and bytes written.
#[derive(Debug, Default)]
pub struct WriteStats {
    pub fsyncs: AtomicU64,
    pub bytes: AtomicU64,
    pub entries: AtomicU64,
}

struct Shared {
    db: Arc<Database>,
    tx: Mutex<mpsc::Sender<WriteOp>>,
    memory: Mutex<Memory>,
    stats: Arc<WriteStats>,
}

/// Handle to the log; clones share one database and one writer.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(other)
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("corrupt {what}: {e}")))
}

/// redb's page cache, capped: its default (1 GiB) would let the cache grow past a Pi's memory.
/// The log is purged after every snapshot, so a few MiB hold its working set.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

fn open_db(dir: &Path) -> io::Result<Database> {
    let path = dir.join("raft-log.redb");
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    if super::power_loss::enabled() {
        let (backend, rolled) = super::power_loss::PowerLossBackend::open(&path)?;
        tracing::warn!(
            undone_writes = rolled.writes,
            undone_bytes = rolled.bytes,
            synced_len = rolled.synced_len,
            "power-loss simulation is on ({}): unsynced writes of the last run were undone; \
             this is for tests only",
            super::power_loss::ENV
        );
        return builder.create_with_backend(backend).map_err(other);
    }
    builder.create(path).map_err(other)
}

impl LogStore {
    /// Opens (or creates) `<dir>/raft-log.redb` and starts the writer thread.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let db = open_db(dir)?;
        let mut memory = Memory::default();
        {
            let w = db.begin_write().map_err(other)?;
            {
                let mut meta = w.open_table(META).map_err(other)?;
                let version = match meta.get(KEY_FORMAT).map_err(other)? {
                    Some(v) => decode::<u64>("format version", v.value())?,
                    None => LOG_FORMAT_VERSION,
                };
                if version != LOG_FORMAT_VERSION {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "raft log format version {version} is not supported by this build \
                             (expects {LOG_FORMAT_VERSION}); use a matching raft3d release"
                        ),
                    ));
                }
                meta.insert(KEY_FORMAT, encode(&version)?.as_slice())
                    .map_err(other)?;
                if let Some(v) = meta.get(KEY_VOTE).map_err(other)? {
                    memory.vote = Some(decode("vote", v.value())?);
                }
                if let Some(v) = meta.get(KEY_PURGED).map_err(other)? {
                    memory.last_purged = Some(decode("purge marker", v.value())?);
                }
                let log = w.open_table(LOG).map_err(other)?;
                let last = log.last().map_err(other)?;
                if let Some((_, v)) = last {
                    let e: Entry = decode("log entry", v.value())?;
                    memory.last_log_id = Some(e.log_id());
                }
            }
            w.commit().map_err(other)?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(WriteStats::default());
        let shared = Arc::new(Shared {
            db: db.clone(),
            tx: Mutex::new(tx),
            memory: Mutex::new(memory),
            stats: stats.clone(),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(db, rx, weak, stats))?;
        Ok(LogStore { shared })
    }

    /// Prepares an empty log that starts after `purged` with `vote` (used by restore).
    pub fn seed(dir: &Path, purged: &LogId, vote: &Vote) -> io::Result<()> {
        let db = open_db(dir)?;
        let w = db.begin_write().map_err(other)?;
        {
            let mut meta = w.open_table(META).map_err(other)?;
            meta.insert(KEY_FORMAT, encode(&LOG_FORMAT_VERSION)?.as_slice())
                .map_err(other)?;
            meta.insert(KEY_PURGED, encode(purged)?.as_slice())
                .map_err(other)?;
            meta.insert(KEY_VOTE, encode(vote)?.as_slice())
                .map_err(other)?;
            meta.insert(KEY_COMMITTED, encode(&Some(purged))?.as_slice())
                .map_err(other)?;
            w.open_table(LOG).map_err(other)?;
        }
        w.commit().map_err(other)
    }

    pub fn stats(&self) -> Arc<WriteStats> {
        self.shared.stats.clone()
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // A poisoned lock means a writer panicked mid-update; the process aborts on panic
        // (release profile), so recovering the guard only matters in tests.
        self.shared.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, op: WriteOp) -> io::Result<()> {
        let tx = self.shared.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(op)
            .map_err(|_| io::Error::other("raft log writer has stopped"))
    }

    async fn send_and_wait(&self, make: impl FnOnce(Done) -> WriteOp) -> io::Result<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(make(done))?;
        wait.await
            .map_err(|_| io::Error::other("raft log writer has stopped"))?
    }
}

fn writer_loop(
    db: Arc<Database>,
    rx: mpsc::Receiver<WriteOp>,
    shared: std::sync::Weak<Shared>,
    stats: Arc<WriteStats>,
) {
    let mut purge: Option<PendingPurge> = None;
    loop {
        // With a purge under way, do not wait for work: its next chunk is work.
        let first = if purge.is_some() {
            match rx.try_recv() {
                Ok(op) => Some(op),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => return,
            }
        };
        let mut batch: Vec<WriteOp> = first.into_iter().collect();
        while !batch.is_empty() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        batch.retain_mut(|op| match op {
            WriteOp::Purge { upto, value } => {
                if purge.as_ref().is_none_or(|p| p.upto.index() < upto.index()) {
                    purge = Some(PendingPurge {
                        upto: upto.clone(),
                        value: std::mem::take(value),
                    });
                }
                false
            }
            _ => true,
        });
        let result = write_batch(&db, &batch, purge.as_ref(), &stats);
        match &result {
            Ok(finished) => {
                if *finished {
                    purge = None;
                }
                if let Some(shared) = shared.upgrade() {
                    let mut mem = shared.memory.lock().unwrap_or_else(|p| p.into_inner());
                    for op in &batch {
                        if let WriteOp::Append { ids, .. } = op {
                            for id in ids {
                                if mem.pending.get(&id.index()).map(|e| e.log_id())
                                    == Some(id.clone())
                                {
                                    mem.pending.remove(&id.index());
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "raft log write failed; this node will stop");
            }
        }
        for op in batch {
            let r = result
                .as_ref()
                .map(|_| ())
                .map_err(|e| io::Error::new(e.kind(), e.to_string()));
            match op {
                WriteOp::Append { callback, .. } => callback.io_completed(r),
                WriteOp::Meta { done, .. } => {
                    if let Some(d) = done {
                        let _ = d.send(r);
                    }
                }
                WriteOp::TruncateAfter { done, .. } => {
                    let _ = done.send(r);
                }
                WriteOp::Purge { .. } => {}
            }
        }
        if result.is_err() {
            // Keep answering so callers learn of the failure, but stop purging.
            purge = None;
        }
    }
}

/// Writes `batch` and, with `purge`, its next chunk in one transaction. `Ok(true)`: the purge
/// is complete (or there was none).
fn write_batch(
    db: &Database,
    batch: &[WriteOp],
    purge: Option<&PendingPurge>,
    stats: &WriteStats,
) -> io::Result<bool> {
    let mut txn = db.begin_write().map_err(other)?;
    // Batches of nothing but committed-index updates and purge chunks need not be fsynced: the
    // committed index is a hint for faster replay that Raft rebuilds if lost, and a purge lost
    // in a crash only leaves entries that are already in a snapshot.
    let durable = batch.iter().any(|op| {
        !matches!(
            op,
            WriteOp::Meta {
                key: KEY_COMMITTED,
                ..
            }
        )
    });
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    });
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut finished = true;
    {
        let mut log = txn.open_table(LOG).map_err(other)?;
        let mut meta = txn.open_table(META).map_err(other)?;
        for op in batch {
            match op {
                WriteOp::Append { rows, .. } => {
                    for (index, data) in rows {
                        log.insert(*index, data.as_slice()).map_err(other)?;
                        bytes += data.len() as u64 + 8;
                        entries += 1;
                    }
                }
                WriteOp::Meta { key, value, .. } => {
                    meta.insert(*key, value.as_slice()).map_err(other)?;
                    bytes += value.len() as u64;
                }
                WriteOp::TruncateAfter { after, .. } => {
                    let start = after.map(|a| a + 1).unwrap_or(0);
                    log.retain_in(start.., |_, _| false).map_err(other)?;
                }
                WriteOp::Purge { .. } => {}
            }
        }
        if let Some(p) = purge {
            let first = log.first().map_err(other)?.map(|(k, _)| k.value());
            let upto = p.upto.index();
            // The marker always names the last entry gone, and commits with its deletion:
            // no crash window leaves a hole.
            match first {
                Some(first) if first <= upto => {
                    let end = upto.min(first.saturating_add(PURGE_CHUNK - 1));
                    if end == upto {
                        meta.insert(KEY_PURGED, p.value.as_slice()).map_err(other)?;
                    } else {
                        let last: Entry = match log.get(end).map_err(other)? {
                            Some(v) => decode("log entry", v.value())?,
                            None => {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!("raft log has a hole at index {end}"),
                                ))
                            }
                        };
                        meta.insert(KEY_PURGED, encode(&last.log_id())?.as_slice())
                            .map_err(other)?;
                        finished = false;
                    }
                    log.retain_in(first..=end, |_, _| false).map_err(other)?;
                }
                _ => {
                    meta.insert(KEY_PURGED, p.value.as_slice()).map_err(other)?;
                }
            }
        }
    }
    txn.commit().map_err(other)?;
    if durable {
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
    }
    stats.bytes.fetch_add(bytes, Ordering::Relaxed);
    stats.entries.fetch_add(entries, Ordering::Relaxed);
    Ok(finished)
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(e.saturating_add(1)),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        let end = end.unwrap_or(u64::MAX);
        // Copy the overlay and open the read transaction under one lock: an entry leaves the
        // overlay only after its commit, so it is in one or the other.
        let (start, overlay, txn) = {
            let mem = self.memory();
            // Entries a purge still in progress has not deleted yet are gone all the same.
            let start = match &mem.last_purged {
                Some(p) => start.max(p.index() + 1),
                None => start,
            };
            if start >= end {
                return Ok(Vec::new());
            }
            let overlay: BTreeMap<u64, Entry> = mem
                .pending
                .range(start..end)
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            (start, overlay, self.shared.db.begin_read().map_err(other)?)
        };
        let mut out = overlay;
        let table = txn.open_table(LOG).map_err(other)?;
        for row in table.range(start..end).map_err(other)? {
            let (k, v) = row.map_err(other)?;
            let index = k.value();
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(index) {
                slot.insert(decode("log entry", v.value())?);
            }
        }
        Ok(out.into_values().collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.memory().vote.clone())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = self.memory();
        Ok(LogState {
            last_purged_log_id: mem.last_purged.clone(),
            last_log_id: mem.last_log_id.clone().or_else(|| mem.last_purged.clone()),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let value = encode(vote)?;
        self.send_and_wait(|done| WriteOp::Meta {
            key: KEY_VOTE,
            value,
            done: Some(done),
        })
        .await?;
        self.memory().vote = Some(vote.clone());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let value = encode(&committed)?;
        self.send(WriteOp::Meta {
            key: KEY_COMMITTED,
            value,
            done: None,
        })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let txn = self.shared.db.begin_read().map_err(other)?;
        let meta = txn.open_table(META).map_err(other)?;
        match meta.get(KEY_COMMITTED).map_err(other)? {
            Some(v) => decode("committed index", v.value()),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        let mut mem = self.memory();
        for entry in entries {
            let id = entry.log_id();
            rows.push((id.index(), encode(&entry)?));
            mem.pending.insert(id.index(), entry);
            mem.last_log_id = Some(id.clone());
            ids.push(id);
        }
        drop(mem);
        self.send(WriteOp::Append {
            rows,
            ids,
            callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let after = last_log_id.as_ref().map(|l| l.index());
        {
            let mut mem = self.memory();
            let from = after.map(|a| a + 1).unwrap_or(0);
            mem.pending.retain(|k, _| *k < from);
            let beyond = match (&mem.last_log_id, &last_log_id) {
                (Some(cur), Some(keep)) => cur.index() > keep.index(),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if beyond {
                mem.last_log_id = last_log_id;
            }
        }
        self.send_and_wait(|done| WriteOp::TruncateAfter { after, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let value = encode(&log_id)?;
        {
            let mut mem = self.memory();
            mem.pending.retain(|k, _| *k > log_id.index());
            mem.last_purged = Some(log_id.clone());
            if mem
                .last_log_id
                .as_ref()
                .map(|l| l.index() < log_id.index())
                .unwrap_or(true)
            {
                mem.last_log_id = Some(log_id.clone());
            }
        }
        // Carried out in the background, in chunks (see the module header).
        self.send(WriteOp::Purge {
            upto: log_id,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{blank_ent, log_id};

    async fn append(store: &mut LogStore, range: std::ops::Range<u64>) {
        use openraft::type_config::TypeConfigExt;
        let (tx, rx) = TypeConfig::oneshot();
        let entries: Vec<Entry> = range
            .map(|i| blank_ent::<TypeConfig>(1, NodeId::from(1), i))
            .collect();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    fn first_on_disk(store: &LogStore) -> Option<u64> {
        let txn = store.shared.db.begin_read().unwrap();
        let log = txn.open_table(LOG).unwrap();
        log.first().unwrap().map(|(k, _)| k.value())
    }

    use crate::cluster::types::NodeId;

    #[tokio::test]
    async fn a_large_purge_runs_in_chunks_beside_appends_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        append(&mut store, 0..10_000).await;
        let upto = log_id::<TypeConfig>(1, NodeId::from(1), 8_999);
        store.purge(upto.clone()).await.unwrap();
        // Purged at once for readers, whatever is still on disk.
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(upto.clone()));
        let left = store.try_get_log_entries(0..20_000).await.unwrap();
        assert_eq!(left.first().map(|e| e.log_id().index()), Some(9_000));
        assert_eq!(left.len(), 1_000);
        // Appends are not held up by the deletion.
        append(&mut store, 10_000..10_010).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while first_on_disk(&store) != Some(9_000) {
            assert!(std::time::Instant::now() < deadline, "purge never finished");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(store);
        // The writer thread lets go of the file when it sees the store gone.
        let mut store = loop {
            match LogStore::open(dir.path()) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "reopen: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        };
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(upto));
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(10_009));
        assert_eq!(
            store.try_get_log_entries(0..20_000).await.unwrap().len(),
            1_010
        );
    }
}
