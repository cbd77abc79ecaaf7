//! The snapshot file format shared by local snapshots, peer transfer and backups.
//!
//! Layout: a magic line, a JSON header line (format version, body length, SHA-256 of the
//! body), then the JSON body (snapshot meta + farm state). Any truncation or bit flip is caught
//! by the length and checksum before anything is read into the state machine.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cluster::types::SnapshotMeta;
use crate::domain::FarmState;

const MAGIC: &[u8] = b"RAFT3D-SNAPSHOT\n";
/// Version of the snapshot body layout.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Header {
    format_version: u32,
    body_len: u64,
    sha256: String,
}

#[derive(Serialize, Deserialize)]
struct Body {
    meta: SnapshotMeta,
    farm: FarmState,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a Raft3D snapshot (the file does not start with the snapshot marker)")]
    NotASnapshot,
    #[error("snapshot header is damaged: {0}")]
    BadHeader(String),
    #[error("snapshot format version {0} is not supported (this build reads version {SNAPSHOT_FORMAT_VERSION})")]
    Version(u32),
    #[error("snapshot is truncated: header says {expected} bytes of data, file has {actual}")]
    Truncated { expected: u64, actual: u64 },
    #[error("snapshot checksum mismatch: the file is corrupted")]
    Checksum,
    #[error("snapshot body is unreadable: {0}")]
    Body(String),
}

impl From<SnapshotError> for io::Error {
    fn from(e: SnapshotError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serializes a snapshot of `farm` as of `meta`.
pub fn encode(meta: &SnapshotMeta, farm: &FarmState) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(&Body {
        meta: meta.clone(),
        farm: farm.clone(),
    })
    .map_err(io::Error::other)?;
    let header = serde_json::to_vec(&Header {
        format_version: SNAPSHOT_FORMAT_VERSION,
        body_len: body.len() as u64,
        sha256: sha256_hex(&body),
    })
    .map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(MAGIC.len() + header.len() + 1 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header);
    out.push(b'\n');
    out.extend_from_slice(&body);
    Ok(out)
}

/// Verifies and parses a snapshot; the farm's derived indexes are rebuilt.
pub fn decode(bytes: &[u8]) -> Result<(SnapshotMeta, FarmState), SnapshotError> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or(SnapshotError::NotASnapshot)?;
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| SnapshotError::BadHeader("no end of header line".into()))?;
    let header: Header =
        serde_json::from_slice(&rest[..nl]).map_err(|e| SnapshotError::BadHeader(e.to_string()))?;
    if header.format_version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotError::Version(header.format_version));
    }
    let body = &rest[nl + 1..];
    if body.len() as u64 != header.body_len {
        return Err(SnapshotError::Truncated {
            expected: header.body_len,
            actual: body.len() as u64,
        });
    }
    if sha256_hex(body) != header.sha256 {
        return Err(SnapshotError::Checksum);
    }
    let mut parsed: Body =
        serde_json::from_slice(body).map_err(|e| SnapshotError::Body(e.to_string()))?;
    parsed.farm.rebuild_indexes();
    Ok((parsed.meta, parsed.farm))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("snapshot path has no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Snapshot files in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "snap") {
                    files.push(p);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    files.sort();
    Ok(files)
}

/// File name that sorts by log index.
pub fn file_name(meta: &SnapshotMeta) -> String {
    let index = meta.last_log_id.as_ref().map(|l| l.index()).unwrap_or(0);
    let term = meta
        .last_log_id
        .as_ref()
        .map(|l| l.committed_leader_id().term)
        .unwrap_or(0);
    format!("snapshot-{index:020}-{term}.snap")
}

/// Deletes all but the newest `keep` snapshot files.
pub fn prune(dir: &Path, keep: usize) -> io::Result<()> {
    let files = list(dir)?;
    let excess = files.len().saturating_sub(keep.max(1));
    for f in &files[..excess] {
        std::fs::remove_file(f)?;
    }
    Ok(())
}
