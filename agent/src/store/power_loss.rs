//! Power-loss simulation for tests: a redb storage backend that journals the old bytes of every
//! write made since the last fsync, so that the next open rolls the file back to what the disk
//! would hold had the power failed at the moment the process died.
//!
//! A `kill -9` alone is gentler than a power cut: the kernel still writes out everything the
//! process wrote, fsynced or not. With `RAFT3D_SIMULATE_POWER_LOSS=1` the Raft log is opened
//! through [`PowerLossBackend`]; after a kill, every byte not covered by a completed fsync is
//! undone before redb reads the file. An acknowledged write that was not fsynced is then lost,
//! and the tests that kill nodes this way see it.
//!
//! Journal (`<file>.unsynced`): records of `kind u8 | offset u64 | len u64 | bytes`, little
//! endian. Kind 0 holds the old contents at `offset`; kind 1 (first after each sync) holds the
//! file length at that sync in `offset`. A record is written before the data write it undoes,
//! so a torn last record means its data write never happened.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::backends::FileBackend;
use redb::StorageBackend;

/// Environment variable that turns the simulation on (any value but empty or `0`).
pub const ENV: &str = "RAFT3D_SIMULATE_POWER_LOSS";

pub fn enabled() -> bool {
    std::env::var(ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

const KIND_OLD_BYTES: u8 = 0;
const KIND_SYNCED_LEN: u8 = 1;
const HEADER: usize = 17;

/// What the open after a simulated power cut undid.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RolledBack {
    pub writes: u64,
    pub bytes: u64,
    /// The file length at the last completed fsync.
    pub synced_len: u64,
}

#[derive(Debug)]
pub struct PowerLossBackend {
    inner: FileBackend,
    journal: Mutex<File>,
}

fn journal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".unsynced");
    PathBuf::from(name)
}

fn record(kind: u8, offset: u64, bytes: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEADER + bytes.len());
    r.push(kind);
    r.extend_from_slice(&offset.to_le_bytes());
    r.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    r.extend_from_slice(bytes);
    r
}

/// Undoes what the journal beside `db` records, leaving the file as of its last fsync.
pub fn roll_back(db: &Path) -> io::Result<RolledBack> {
    let mut raw = Vec::new();
    match File::open(journal_path(db)) {
        Ok(mut f) => {
            f.read_to_end(&mut raw)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RolledBack::default()),
        Err(e) => return Err(e),
    }
    let mut synced_len = None;
    let mut undo = Vec::new();
    let mut at = 0;
    while raw.len() - at >= HEADER {
        let kind = raw[at];
        let offset = u64::from_le_bytes(raw[at + 1..at + 9].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(raw[at + 9..at + 17].try_into().expect("8 bytes")) as usize;
        let Some(bytes) = raw.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        match kind {
            KIND_SYNCED_LEN => synced_len = Some(offset),
            KIND_OLD_BYTES => undo.push((offset, bytes)),
            k => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("power-loss journal has an unknown record kind {k}"),
                ))
            }
        }
        at += HEADER + len;
    }
    let Some(synced_len) = synced_len else {
        return Ok(RolledBack::default());
    };
    let file = OpenOptions::new().write(true).open(db)?;
    let mut out = RolledBack {
        synced_len,
        ..RolledBack::default()
    };
    for (offset, bytes) in undo.iter().rev() {
        file.write_all_at(bytes, *offset)?;
        out.writes += 1;
        out.bytes += bytes.len() as u64;
    }
    if file.metadata()?.len() != synced_len {
        out.writes += 1;
    }
    file.set_len(synced_len)?;
    file.sync_all()?;
    File::create(journal_path(db))?.sync_all()?;
    Ok(out)
}

impl PowerLossBackend {
    /// Rolls back what the last run left unsynced, then opens `db` with a fresh journal.
    pub fn open(db: &Path) -> io::Result<(PowerLossBackend, RolledBack)> {
        let rolled = roll_back(db)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(db)?;
        let len = file.metadata()?.len();
        let inner = FileBackend::new(file).map_err(io::Error::other)?;
        let mut journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(journal_path(db))?;
        journal.set_len(0)?;
        journal.write_all(&record(KIND_SYNCED_LEN, len, &[]))?;
        Ok((
            PowerLossBackend {
                inner,
                journal: Mutex::new(journal),
            },
            rolled,
        ))
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, File> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves the current bytes of `[offset, end)` (clipped to the file) before they change.
    fn save_old(&self, journal: &mut File, offset: u64, end: u64) -> io::Result<()> {
        let len = self.inner.len()?;
        let end = end.min(len);
        if offset < end {
            let old = self.inner.read(offset, (end - offset) as usize)?;
            journal.write_all(&record(KIND_OLD_BYTES, offset, &old))?;
        }
        Ok(())
    }
}

impl StorageBackend for PowerLossBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut journal = self.journal();
        self.save_old(&mut journal, len, u64::MAX)?;
        self.inner.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        let mut journal = self.journal();
        self.inner.sync_data(eventual)?;
        let len = self.inner.len()?;
        journal.set_len(0)?;
        journal.write_all(&record(KIND_SYNCED_LEN, len, &[]))
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut journal = self.journal();
        self.save_old(&mut journal, offset, offset + data.len() as u64)?;
        self.inner.write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_are_undone_and_synced_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("f");
        {
            let (b, rolled) = PowerLossBackend::open(&db).unwrap();
            assert_eq!(rolled, RolledBack::default());
            b.set_len(8).unwrap();
            b.write(0, b"synced!!").unwrap();
            b.sync_data(false).unwrap();
            b.write(2, b"LOST").unwrap();
            b.set_len(20).unwrap();
            b.write(12, b"GONE").unwrap();
            assert_eq!(b.read(0, 8).unwrap(), b"syLOST!!");
            // Dropped without a sync: the process died.
        }
        let rolled = roll_back(&db).unwrap();
        assert_eq!(rolled.synced_len, 8);
        assert!(rolled.writes >= 2, "{rolled:?}");
        assert_eq!(std::fs::read(&db).unwrap(), b"synced!!");
        // Nothing left to undo the second time.
        assert_eq!(roll_back(&db).unwrap().writes, 0);
    }

    #[test]
    fn a_shrink_after_the_last_sync_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("f");
        {
            let (b, _) = PowerLossBackend::open(&db).unwrap();
            b.set_len(6).unwrap();
            b.write(0, b"abcdef").unwrap();
            b.sync_data(false).unwrap();
            b.set_len(2).unwrap();
            b.write(0, b"XY").unwrap();
        }
        roll_back(&db).unwrap();
        assert_eq!(std::fs::read(&db).unwrap(), b"abcdef");
    }

    #[test]
    fn a_redb_database_survives_a_cut_with_its_last_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.redb");
        const T: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        {
            let (b, _) = PowerLossBackend::open(&db).unwrap();
            let d = redb::Builder::new().create_with_backend(b).unwrap();
            let w = d.begin_write().unwrap();
            w.open_table(T).unwrap().insert(1, 10).unwrap();
            w.commit().unwrap();
            let mut w = d.begin_write().unwrap();
            w.set_durability(redb::Durability::None);
            w.open_table(T).unwrap().insert(2, 20).unwrap();
            w.commit().unwrap();
            // The process "dies": copy the files as they are now, before redb's drop could
            // flush anything, and open the copy.
            let copy = dir.path().join("y.redb");
            std::fs::copy(&db, &copy).unwrap();
            std::fs::copy(journal_path(&db), journal_path(&copy)).unwrap();
            drop(d);
            std::fs::rename(&copy, &db).unwrap();
            std::fs::rename(journal_path(&copy), journal_path(&db)).unwrap();
        }
        let (b, rolled) = PowerLossBackend::open(&db).unwrap();
        assert!(rolled.writes > 0, "{rolled:?}");
        let d = redb::Builder::new().create_with_backend(b).unwrap();
        let r = d.begin_read().unwrap();
        let t = r.open_table(T).unwrap();
        assert_eq!(t.get(1).unwrap().map(|v| v.value()), Some(10));
        assert_eq!(t.get(2).unwrap().map(|v| v.value()), None);
    }
}
