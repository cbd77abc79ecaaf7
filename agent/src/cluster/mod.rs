//! The Raft cluster: openraft types, the peer network (outbound and inbound), and the node
//! that forwards writes, serves linearizable reads and changes membership.

pub mod health;
pub mod network;
pub mod node;
pub mod peer_api;
pub mod types;

pub use node::{ClusterError, JoinRequest, Node};
