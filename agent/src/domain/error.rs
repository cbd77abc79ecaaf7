//! Why the state machine refused a command. Each variant names the decision a caller makes;
//! the API maps them to HTTP statuses in one place.

use serde::{Deserialize, Serialize};

use super::model::JobStatus;
use super::weight::Grams;

#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum DomainError {
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },

    #[error("{kind} '{id}' does not exist")]
    NotFound { kind: String, id: String },

    #[error("{kind} '{id}' already exists; choose another id or leave id out to get one assigned")]
    DuplicateId { kind: String, id: String },

    #[error(
        "not enough filament on spool '{filament_id}': {available} available after reservations, \
         {requested} requested; use another spool or a lighter job"
    )]
    InsufficientFilament {
        filament_id: String,
        available: Grams,
        requested: Grams,
    },

    #[error("job '{job_id}' cannot go from {from} to {to}; allowed: {allowed}")]
    InvalidTransition {
        job_id: String,
        from: JobStatus,
        to: JobStatus,
        allowed: String,
    },

    #[error(
        "printer '{printer_id}' is already running job '{running_job}'; finish or cancel it first"
    )]
    PrinterBusy {
        printer_id: String,
        running_job: String,
    },

    #[error("only the agent driving the printer may mark a job Failed; use Canceled instead")]
    FailedReservedForAgent,

    #[error(
        "printer '{printer_id}' is supervised by {current:?}, not by '{reported}'; only its current agent reports on or moves it"
    )]
    NotSupervisor {
        printer_id: String,
        current: Option<String>,
        reported: String,
    },

    #[error("printer '{printer_id}' is not a network printer; only bambu and moonraker printers move to another agent")]
    PrinterNotMovable { printer_id: String },

    #[error(
        "job '{job_id}' is no longer running attempt {reported} (its current attempt: {current:?}); the report is obsolete"
    )]
    StaleAttempt {
        job_id: String,
        current: Option<u64>,
        reported: u64,
    },
}

impl DomainError {
    /// Stable machine-readable code for the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::InvalidField { .. } => "invalid_field",
            DomainError::NotFound { .. } => "not_found",
            DomainError::DuplicateId { .. } => "duplicate_id",
            DomainError::InsufficientFilament { .. } => "insufficient_filament",
            DomainError::InvalidTransition { .. } => "invalid_transition",
            DomainError::PrinterBusy { .. } => "printer_busy",
            DomainError::FailedReservedForAgent => "failed_reserved_for_agent",
            DomainError::StaleAttempt { .. } => "stale_attempt",
            DomainError::NotSupervisor { .. } => "not_supervisor",
            DomainError::PrinterNotMovable { .. } => "printer_not_movable",
        }
    }
}
