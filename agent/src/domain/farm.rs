//! The replicated farm state and the rules of brief §2, checked when an entry is applied.
//!
//! `apply` is deterministic: it reads only the proposal, the entry's log index and the state.
//! Derived indexes (reservations per spool, running job per printer) are rebuilt on load and
//! never serialized, so a snapshot cannot carry them out of step.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::command::{Applied, ApplyResult, Command, Origin, Proposal};
use super::error::DomainError;
use super::model::{Connection, Filament, JobStatus, PrintJob, Printer};
use super::weight::Grams;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FarmState {
    printers: BTreeMap<String, Printer>,
    filaments: BTreeMap<String, Filament>,
    jobs: BTreeMap<String, PrintJob>,
    /// Node ids removed from the cluster whose old data must not come back.
    #[serde(default)]
    removed_nodes: BTreeSet<String>,
    /// Sum of print weights of Queued and Running jobs, per filament id.
    #[serde(skip)]
    reserved: HashMap<String, Grams>,
    /// The Running job of each busy printer.
    #[serde(skip)]
    running: HashMap<String, String>,
}

/// Which transitions a client may ask for, and which only the driving agent may.
fn transition_allowed(from: JobStatus, to: JobStatus, origin: &Origin) -> bool {
    use JobStatus::*;
    match (from, to) {
        (Queued, Running) | (Running, Done) | (Queued, Canceled) | (Running, Canceled) => true,
        (Running, Failed) => matches!(origin, Origin::Agent { .. }),
        _ => false,
    }
}

fn allowed_from(from: JobStatus) -> &'static str {
    match from {
        JobStatus::Queued => "Running, Canceled",
        JobStatus::Running => "Done, Canceled (Failed by the printer's agent)",
        JobStatus::Done | JobStatus::Canceled | JobStatus::Failed => "nothing: the job is finished",
    }
}

impl FarmState {
    /// Rebuilds the derived indexes; call after deserializing.
    pub fn rebuild_indexes(&mut self) {
        self.reserved.clear();
        self.running.clear();
        for job in self.jobs.values() {
            if job.status.reserves_filament() {
                let r = self.reserved.entry(job.filament_id.clone()).or_default();
                *r = r.checked_add(job.print_weight_in_grams).unwrap_or(*r);
            }
            if job.status == JobStatus::Running {
                self.running.insert(job.printer_id.clone(), job.id.clone());
            }
        }
    }

    pub fn printers(&self) -> impl Iterator<Item = &Printer> {
        self.printers.values()
    }
    /// Replaces every printer secret (access codes, passwords) with a placeholder.
    pub fn redact_secrets(&mut self) {
        for p in self.printers.values_mut() {
            *p = p.redacted();
        }
    }

    pub fn printer(&self, id: &str) -> Option<&Printer> {
        self.printers.get(id)
    }
    pub fn filaments(&self) -> impl Iterator<Item = &Filament> {
        self.filaments.values()
    }
    pub fn filament(&self, id: &str) -> Option<&Filament> {
        self.filaments.get(id)
    }
    pub fn jobs(&self) -> impl Iterator<Item = &PrintJob> {
        self.jobs.values()
    }
    pub fn job(&self, id: &str) -> Option<&PrintJob> {
        self.jobs.get(id)
    }

    /// Filament still free for new jobs: remaining minus Queued and Running reservations.
    pub fn available(&self, filament_id: &str) -> Option<Grams> {
        let f = self.filaments.get(filament_id)?;
        let reserved = self.reserved.get(filament_id).copied().unwrap_or_default();
        Some(f.remaining_weight_in_grams.saturating_sub(reserved))
    }

    pub fn is_removed_node(&self, id: &str) -> bool {
        self.removed_nodes.contains(id)
    }

    pub fn reserved(&self, filament_id: &str) -> Grams {
        self.reserved.get(filament_id).copied().unwrap_or_default()
    }

    /// Applies one committed proposal. `log_index` is the index of its log entry.
    pub fn apply(&mut self, proposal: &Proposal, log_index: u64) -> ApplyResult {
        let at = proposal.at.as_str();
        match &proposal.command {
            Command::CreatePrinter(p) => {
                if self.printers.contains_key(&p.id) {
                    return Err(DomainError::DuplicateId {
                        kind: "printer".into(),
                        id: p.id.clone(),
                    });
                }
                self.printers.insert(p.id.clone(), p.clone());
                Ok(Applied::Printer(p.clone()))
            }
            Command::CreateFilament(f) => {
                if self.filaments.contains_key(&f.id) {
                    return Err(DomainError::DuplicateId {
                        kind: "filament".into(),
                        id: f.id.clone(),
                    });
                }
                self.filaments.insert(f.id.clone(), f.clone());
                Ok(Applied::Filament(f.clone()))
            }
            Command::CreateJob(job) => self.create_job(job),
            Command::SetJobStatus {
                job_id,
                status,
                origin,
                reason,
            } => self.set_status(job_id, *status, origin, reason.as_deref(), at, log_index),
            Command::MovePrinter {
                printer_id,
                from,
                to,
            } => self.move_printer(printer_id, from, to, log_index),
            Command::MarkNodeRemoved(id) => {
                self.removed_nodes.insert(id.clone());
                Ok(Applied::Nothing)
            }
            Command::ClearNodeRemoved(id) => {
                self.removed_nodes.remove(id);
                Ok(Applied::Nothing)
            }
        }
    }

    fn create_job(&mut self, job: &PrintJob) -> ApplyResult {
        if self.jobs.contains_key(&job.id) {
            return Err(DomainError::DuplicateId {
                kind: "print job".into(),
                id: job.id.clone(),
            });
        }
        if job.status != JobStatus::Queued {
            return Err(DomainError::InvalidField {
                field: "status".into(),
                message: "a new job is always Queued".into(),
            });
        }
        if job.print_weight_in_grams == Grams::ZERO {
            return Err(DomainError::InvalidField {
                field: "print_weight_in_grams".into(),
                message: "must be greater than 0".into(),
            });
        }
        if !self.printers.contains_key(&job.printer_id) {
            return Err(DomainError::NotFound {
                kind: "printer".into(),
                id: job.printer_id.clone(),
            });
        }
        let Some(available) = self.available(&job.filament_id) else {
            return Err(DomainError::NotFound {
                kind: "filament".into(),
                id: job.filament_id.clone(),
            });
        };
        if job.print_weight_in_grams > available {
            return Err(DomainError::InsufficientFilament {
                filament_id: job.filament_id.clone(),
                available,
                requested: job.print_weight_in_grams,
            });
        }
        let reserved = self.reserved.entry(job.filament_id.clone()).or_default();
        *reserved = reserved
            .checked_add(job.print_weight_in_grams)
            .unwrap_or(*reserved);
        self.jobs.insert(job.id.clone(), job.clone());
        Ok(Applied::Job(job.clone()))
    }

    fn move_printer(
        &mut self,
        printer_id: &str,
        from: &str,
        to: &str,
        log_index: u64,
    ) -> ApplyResult {
        let p = self
            .printers
            .get_mut(printer_id)
            .ok_or_else(|| DomainError::NotFound {
                kind: "printer".into(),
                id: printer_id.to_string(),
            })?;
        if !p.connection.as_ref().is_some_and(Connection::is_network) {
            return Err(DomainError::PrinterNotMovable {
                printer_id: printer_id.to_string(),
            });
        }
        if p.node_id.as_deref() != Some(from) {
            return Err(DomainError::NotSupervisor {
                printer_id: printer_id.to_string(),
                current: p.node_id.clone(),
                reported: from.to_string(),
            });
        }
        p.node_id = Some(to.to_string());
        p.supervisor_since = Some(log_index);
        Ok(Applied::Printer(p.clone()))
    }

    fn set_status(
        &mut self,
        job_id: &str,
        to: JobStatus,
        origin: &Origin,
        reason: Option<&str>,
        at: &str,
        log_index: u64,
    ) -> ApplyResult {
        let Some(job) = self.jobs.get(job_id) else {
            return Err(DomainError::NotFound {
                kind: "print job".into(),
                id: job_id.to_string(),
            });
        };
        let from = job.status;
        if to == JobStatus::Failed && matches!(origin, Origin::Client) {
            return Err(DomainError::FailedReservedForAgent);
        }
        if let Origin::Agent { attempt, node_id } = origin {
            let supervisor = self
                .printers
                .get(&job.printer_id)
                .and_then(|p| p.node_id.clone());
            if supervisor.as_ref().is_some_and(|s| s != node_id) {
                return Err(DomainError::NotSupervisor {
                    printer_id: job.printer_id.clone(),
                    current: supervisor,
                    reported: node_id.clone(),
                });
            }
            if job.attempt != Some(*attempt) || from != JobStatus::Running {
                return Err(DomainError::StaleAttempt {
                    job_id: job_id.to_string(),
                    current: job.attempt,
                    reported: *attempt,
                });
            }
        }
        if !transition_allowed(from, to, origin) {
            return Err(DomainError::InvalidTransition {
                job_id: job_id.to_string(),
                from,
                to,
                allowed: allowed_from(from).to_string(),
            });
        }
        if to == JobStatus::Running {
            if let Some(running) = self.running.get(&job.printer_id) {
                return Err(DomainError::PrinterBusy {
                    printer_id: job.printer_id.clone(),
                    running_job: running.clone(),
                });
            }
        }

        let weight = job.print_weight_in_grams;
        let filament_id = job.filament_id.clone();
        let printer_id = job.printer_id.clone();
        if from.reserves_filament() && !to.reserves_filament() {
            if let Some(r) = self.reserved.get_mut(&filament_id) {
                *r = r.saturating_sub(weight);
            }
        }
        if from == JobStatus::Running {
            self.running.remove(&printer_id);
        }
        if to == JobStatus::Running {
            self.running.insert(printer_id, job_id.to_string());
        }
        if to == JobStatus::Done {
            // The only place filament is deducted; Done is final, so this runs once per job.
            if let Some(f) = self.filaments.get_mut(&filament_id) {
                f.remaining_weight_in_grams = f.remaining_weight_in_grams.saturating_sub(weight);
                f.updated_at = at.to_string();
            }
        }
        let job = self
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| DomainError::NotFound {
                kind: "print job".into(),
                id: job_id.to_string(),
            })?;
        job.status = to;
        job.updated_at = at.to_string();
        if to == JobStatus::Running {
            job.attempt = Some(log_index);
        }
        if let Some(r) = reason {
            job.reason = Some(r.to_string());
        }
        Ok(Applied::Job(job.clone()))
    }
}

#[cfg(test)]
#[path = "farm_tests.rs"]
mod tests;
