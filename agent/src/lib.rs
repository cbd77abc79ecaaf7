//! Raft3D: a print-farm controller with no single point of failure.
//!
//! # Layout
//!
//! - [`domain`]: the data model and every rule, pure and deterministic.
pub mod domain;
pub mod cluster;
pub mod store;
pub mod api;
pub mod config;
pub mod demo;
pub mod server;
