//! The Raft cluster: openraft types, the peer network, the node that wires them, forwarding
//! and membership.

pub mod types;
