//! Durable storage: the redb Raft log, the state-machine adapter and the snapshot file format.

mod log_store;
pub mod power_loss;
mod restore;
pub mod snapshot_file;
mod state_machine;

pub use log_store::{LogStore, WriteStats, LOG_FORMAT_VERSION};
pub use restore::{restore_backup, RestoreError, Restored};
pub use state_machine::{ApplyStats, Replica, StateMachine};

#[cfg(test)]
mod suite_tests;
