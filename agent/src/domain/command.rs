//! What is proposed to the Raft log and what applying it returns.
//!
//! A [`Proposal`] is fully stamped (time, generated ids) before it is proposed, so applying it
//! on any replica gives the same result.

use serde::{Deserialize, Serialize};

use super::error::DomainError;
use super::model::{Filament, JobStatus, PrintJob, Printer};

/// One log entry's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// RFC 3339 time stamped by the proposing node.
    pub at: String,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreatePrinter(Printer),
    CreateFilament(Filament),
    CreateJob(PrintJob),
    SetJobStatus {
        job_id: String,
        status: JobStatus,
        origin: Origin,
        #[serde(default)]
        reason: Option<String>,
    },
    /// The supervision of network printer `printer_id` moves from agent `from` (unresponsive)
    /// to agent `to`. A compare-and-set on the printer's `node_id`: a move decided on stale
    /// knowledge (by an old leader, or twice) is refused.
    MovePrinter {
        printer_id: String,
        from: String,
        to: String,
    },
    /// A node was removed from the cluster; its old data must not rejoin.
    MarkNodeRemoved(String),
    /// A node with wiped data may join again under its old id.
    ClearNodeRemoved(String),
}

/// Who asks for a status change: a client through the API, or the agent driving the printer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Origin {
    Client,
    /// `attempt` is the log index of the `Running` entry the agent is dispatching: the fence.
    Agent {
        node_id: String,
        attempt: u64,
    },
}

/// The object a command created or changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    Printer(Printer),
    Filament(Filament),
    Job(PrintJob),
    Nothing,
}

/// Result of applying one entry, returned to the proposer.
pub type ApplyResult = Result<Applied, DomainError>;

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.command {
            Command::CreatePrinter(p) => write!(f, "create printer {}", p.id),
            Command::CreateFilament(x) => write!(f, "create filament {}", x.id),
            Command::CreateJob(j) => write!(f, "create job {}", j.id),
            Command::SetJobStatus { job_id, status, .. } => write!(f, "job {job_id} -> {status}"),
            Command::MovePrinter {
                printer_id,
                from,
                to,
            } => write!(f, "printer {printer_id} moves from {from} to {to}"),
            Command::MarkNodeRemoved(id) => write!(f, "node {id} removed"),
            Command::ClearNodeRemoved(id) => write!(f, "node {id} may rejoin"),
        }
    }
}
