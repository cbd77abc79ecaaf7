//! The farm's data model and rules: pure code with no I/O, no clock and no randomness.
//!
//! Everything here is deterministic so that every replica applying the same log reaches the
//! same state. Timestamps and generated ids arrive already stamped inside the [`Proposal`].

mod command;
mod error;
mod farm;
mod model;
mod weight;

pub use command::{Applied, ApplyResult, Command, Origin, Proposal};
pub use error::DomainError;
pub use farm::FarmState;
pub use model::{
    parse_id, Connection, Filament, FilamentType, JobStatus, NewFilament, NewJob, NewPrinter,
    PrintJob, Printer, RawId,
};
pub use weight::Grams;
