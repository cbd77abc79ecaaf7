//! Raft3D: a print-farm controller with no single point of failure.
//!
//! # Layout
//!
//! - [`domain`]: the data model and every rule, pure and deterministic.
pub mod api;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod domain;
pub mod feed;
pub mod metrics;
pub mod printers;
pub mod server;
pub mod store;
