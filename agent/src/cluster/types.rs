//! The openraft type configuration: what a node id, a member and a log entry are in Raft3D.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{ApplyResult, Proposal};

/// A node's name as given by `-id` (e.g. `node1`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Node number `n` is named `node<n>`; used by openraft's storage test suite.
impl From<u64> for NodeId {
    fn from(n: u64) -> Self {
        NodeId(format!("node{n}"))
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_string())
    }
}

/// How to reach a member: its peer (Raft) address and its HTTP API address.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Member {
    pub raft_addr: String,
    #[serde(default)]
    pub http_addr: String,
}

pub type SnapshotData = std::io::Cursor<Vec<u8>>;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = ApplyResult,
        NodeId = NodeId,
        Node = Member,
);

pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
