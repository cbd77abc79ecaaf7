//! The bridge between the replicated state and this agent's printers: a committed `Running`
//! for a printer this node drives starts its print; a committed `Canceled` stops it; a
//! driver's outcome becomes a fenced proposal (`Done`, `Failed`, `Canceled`) retried until it
//! is committed or known obsolete. Drivers never call Raft; this module does.
//!
//! Fencing: a job's `attempt` is the log index of its `Running` entry. Every start and every
//! outcome carries it, and the state machine refuses an outcome for another attempt. A job
//! already `Running` when this agent (re)starts was not started by this run: it is failed,
//! never resumed on its own.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterError, Node};
use crate::domain::{Command, Connection, DomainError, JobStatus, Origin, Printer};
use crate::printers::{
    spawn_driver, ConnectionSpec, DriverCommand, DriverEvent, DriverHandle, PrintRequest, Secret,
    Telemetry,
};

/// Why a printer request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("printer '{0}' is not driven by this node")]
    NotHere(String),
    #[error("printer '{0}' has no running job to {1}")]
    NothingRunning(String, &'static str),
    #[error("the driver of printer '{0}' has stopped")]
    DriverGone(String),
}

struct Managed {
    spec: ConnectionSpec,
    handle: DriverHandle,
    /// Stops this driver alone (its printer moved to another agent).
    stop: CancellationToken,
    /// The (job, attempt) this run started and has not seen end.
    current: Option<(String, u64)>,
}

/// This node's printers and their drivers.
pub struct Dispatcher {
    node: Arc<Node>,
    gcode_dir: PathBuf,
    printers: Mutex<HashMap<String, Managed>>,
    events: mpsc::Sender<DriverEvent>,
    shutdown: CancellationToken,
}

fn spec_of(p: &Printer) -> Option<ConnectionSpec> {
    match p.connection.as_ref()? {
        Connection::Serial { port, baud } => Some(ConnectionSpec::Serial {
            port: port.clone(),
            baud: *baud,
        }),
        Connection::Virtual { speed } => Some(ConnectionSpec::Virtual { speed: *speed }),
        Connection::Moonraker {
            broker,
            instance,
            username,
            password,
        } => Some(ConnectionSpec::Moonraker {
            broker: broker.clone(),
            instance: instance.clone(),
            username: username.clone(),
            password: password.clone().map(Secret),
        }),
        Connection::Bambu {
            host,
            port,
            serial,
            access_code,
            ca_file,
            insecure_tls,
            ftps_port,
        } => Some(ConnectionSpec::Bambu {
            host: host.clone(),
            port: *port,
            serial: serial.clone(),
            access_code: access_code.clone().map(Secret),
            ca_file: ca_file.as_ref().map(PathBuf::from),
            insecure_tls: *insecure_tls,
            ftps_port: *ftps_port,
        }),
    }
}

impl Dispatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Managed>> {
        self.printers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A Bambu printer is sent the job's file over FTPS first when `filepath` names a file
    /// under `gcode_dir` here; otherwise the file must already be on the printer.
    fn local_copy(&self, spec: &ConnectionSpec, filepath: &str) -> Option<PathBuf> {
        let p = Path::new(filepath);
        if !matches!(spec, ConnectionSpec::Bambu { .. }) || p.is_absolute() {
            return None;
        }
        let local = self.gcode_dir.join(p);
        local.is_file().then_some(local)
    }

    /// Where the driver finds the job's file: network printers print a file stored on the
    /// printer, named as the job gives it; the others read it here, relative to `gcode_dir`.
    fn resolve(&self, spec: &ConnectionSpec, filepath: &str) -> PathBuf {
        let p = Path::new(filepath);
        if p.is_absolute() || spec.is_network() {
            p.to_path_buf()
        } else {
            self.gcode_dir.join(p)
        }
    }

    /// Live telemetry of a printer driven here.
    pub fn telemetry(&self, printer_id: &str) -> Result<Telemetry, DispatchError> {
        self.lock()
            .get(printer_id)
            .map(|m| m.handle.telemetry.borrow().clone())
            .ok_or_else(|| DispatchError::NotHere(printer_id.to_string()))
    }

    /// Pauses or resumes the feed of the job running on `printer_id`.
    pub async fn control(&self, printer_id: &str, pause: bool) -> Result<(), DispatchError> {
        let tx = {
            let map = self.lock();
            let m = map
                .get(printer_id)
                .ok_or_else(|| DispatchError::NotHere(printer_id.to_string()))?;
            if m.current.is_none() {
                let what = if pause { "pause" } else { "resume" };
                return Err(DispatchError::NothingRunning(printer_id.to_string(), what));
            }
            m.handle.commands.clone()
        };
        let cmd = if pause {
            DriverCommand::Pause
        } else {
            DriverCommand::Resume
        };
        tx.send(cmd)
            .await
            .map_err(|_| DispatchError::DriverGone(printer_id.to_string()))
    }

    /// Brings drivers and prints in line with the committed state.
    /// `handled` holds every attempt this run has started or failed: none is acted on twice.
    async fn reconcile(&self, started_before: u64, handled: &mut HashSet<u64>) {
        let me = self.node.id.0.clone();
        let mut to_send: Vec<(mpsc::Sender<DriverCommand>, DriverCommand)> = Vec::new();
        let mut stale: Vec<(String, u64)> = Vec::new();
        {
            let replica = self.node.sm.read();
            let farm = &replica.farm;
            let mut map = self.lock();
            for p in farm
                .printers()
                .filter(|p| p.node_id.as_deref() == Some(&me))
            {
                let Some(spec) = spec_of(p) else { continue };
                let respawn = map.get(&p.id).is_none_or(|m| m.spec != spec);
                if respawn {
                    tracing::info!(printer = %p.id, ?spec, "starting printer driver");
                    let stop = self.shutdown.child_token();
                    let handle = spawn_driver(
                        p.id.clone(),
                        spec.clone(),
                        self.events.clone(),
                        stop.clone(),
                    );
                    if let Some(old) = map.insert(
                        p.id.clone(),
                        Managed {
                            spec,
                            handle,
                            stop,
                            current: None,
                        },
                    ) {
                        old.stop.cancel();
                    }
                }
                let Some(m) = map.get_mut(&p.id) else {
                    continue;
                };
                let running = farm
                    .jobs()
                    .find(|j| j.printer_id == p.id && j.status == JobStatus::Running);
                let desired = running.and_then(|j| j.attempt.map(|a| (j.id.clone(), a)));
                if let Some((job, attempt)) = m.current.clone() {
                    if desired.as_ref() != Some(&(job.clone(), attempt)) {
                        // The job left Running: canceled, or ended by a client (`Done`) while
                        // the printer may still be printing it. Either way the printer stops;
                        // after the driver's own outcome it is idle and ignores this.
                        match farm.job(&job).map(|j| j.status) {
                            Some(JobStatus::Canceled) => {
                                tracing::info!(printer = %p.id, job = %job, "job canceled: stopping the print")
                            }
                            status => {
                                tracing::debug!(printer = %p.id, job = %job, ?status, "job no longer running: the printer stops if it still prints it")
                            }
                        }
                        to_send.push((m.handle.commands.clone(), DriverCommand::Cancel));
                        m.current = None;
                    }
                }
                if let (None, Some((job, attempt))) = (&m.current, desired) {
                    // Begun before this run started, or before the printer moved here: another
                    // agent (or an earlier run) started it.
                    let earlier = attempt <= started_before
                        || p.supervisor_since.is_some_and(|since| attempt < since);
                    if !handled.insert(attempt) {
                        // Started (or failed) by this run already; its outcome is on its way.
                    } else if earlier && !m.spec.is_network() {
                        stale.push((job, attempt));
                    } else if let Some(j) = running {
                        let req = PrintRequest {
                            job_id: job.clone(),
                            attempt,
                            file: self.resolve(&m.spec, &j.filepath),
                            upload: self.local_copy(&m.spec, &j.filepath),
                        };
                        let cmd = if earlier {
                            tracing::info!(printer = %p.id, job = %job, attempt, "taking over a print started earlier");
                            DriverCommand::Attach(req)
                        } else {
                            tracing::info!(printer = %p.id, job = %job, attempt, "starting print");
                            DriverCommand::Start(req)
                        };
                        to_send.push((m.handle.commands.clone(), cmd));
                        m.current = Some((job, attempt));
                    }
                }
            }
            // A printer whose supervision moved to another agent is left alone from now on.
            map.retain(|id, m| {
                let mine = farm
                    .printer(id)
                    .is_some_and(|p| p.node_id.as_deref() == Some(&me));
                if !mine {
                    tracing::warn!(printer = %id, "printer is supervised by another agent now: driver stopped");
                    m.stop.cancel();
                }
                mine
            });
        }
        for (tx, cmd) in to_send {
            if tx.send(cmd).await.is_err() {
                tracing::warn!("a printer driver has stopped; command dropped");
            }
        }
        for (job, attempt) in stale {
            let reason = "the agent restarted while the job was running; a print is never resumed on its own";
            self.report(job, attempt, JobStatus::Failed, Some(reason.to_string()))
                .await;
        }
    }

    /// Proposes an agent outcome, retrying through leader changes until it is committed or
    /// known obsolete (another attempt, or the job already ended).
    async fn report(&self, job: String, attempt: u64, status: JobStatus, reason: Option<String>) {
        let cmd = Command::SetJobStatus {
            job_id: job.clone(),
            status,
            origin: Origin::Agent {
                node_id: self.node.id.0.clone(),
                attempt,
            },
            reason,
        };
        let mut delay = Duration::from_millis(200);
        loop {
            match self.node.propose(cmd.clone()).await {
                Ok(Ok(_)) => {
                    tracing::info!(job = %job, attempt, %status, "job outcome committed");
                    return;
                }
                Ok(Err(
                    e @ (DomainError::StaleAttempt { .. }
                    | DomainError::NotSupervisor { .. }
                    | DomainError::InvalidTransition { .. }
                    | DomainError::NotFound { .. }),
                )) => {
                    tracing::info!(job = %job, attempt, error = %e, "job outcome is obsolete");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!(job = %job, attempt, error = %e, "job outcome refused");
                    return;
                }
                Err(ClusterError::ShuttingDown) => return,
                Err(e) => {
                    tracing::warn!(job = %job, attempt, error = %e, "job outcome not committed yet; retrying");
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn on_event(self: &Arc<Self>, ev: DriverEvent) {
        let (job, attempt, status, reason) = match ev {
            DriverEvent::Finished { job_id, attempt } => (job_id, attempt, JobStatus::Done, None),
            DriverEvent::Failed {
                job_id,
                attempt,
                reason,
            } => (job_id, attempt, JobStatus::Failed, Some(reason)),
            DriverEvent::CanceledByPrinter { job_id, attempt } => (
                job_id,
                attempt,
                JobStatus::Canceled,
                Some("canceled on the printer".to_string()),
            ),
        };
        for m in self.lock().values_mut() {
            if m.current
                .as_ref()
                .is_some_and(|(j, a)| *j == job && *a == attempt)
            {
                m.current = None;
            }
        }
        let this = self.clone();
        tokio::spawn(async move { this.report(job, attempt, status, reason).await });
    }
}

/// Starts the dispatcher: waits until this node has caught up with the cluster, fails jobs an
/// earlier run left `Running`, then follows every applied change.
pub fn start(node: Arc<Node>, gcode_dir: PathBuf, shutdown: CancellationToken) -> Arc<Dispatcher> {
    let (events, mut rx) = mpsc::channel(64);
    let d = Arc::new(Dispatcher {
        node: node.clone(),
        gcode_dir,
        printers: Mutex::new(HashMap::new()),
        events,
        shutdown: shutdown.clone(),
    });
    let this = d.clone();
    tokio::spawn(async move {
        // Everything Running at or below the index this node has caught up to was started by
        // an earlier run (or while this agent was away).
        let started_before = loop {
            if shutdown.is_cancelled() {
                return;
            }
            match this.node.linearize().await {
                Ok(()) => {
                    let r = this.node.sm.read();
                    break r.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dispatch waits for the cluster");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        tracing::info!(caught_up_to = started_before, "printer dispatch running");
        let mut handled = HashSet::new();
        let mut applied = this.node.sm.subscribe_applied();
        loop {
            this.reconcile(started_before, &mut handled).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = applied.changed() => if r.is_err() { return },
                Some(ev) = rx.recv() => this.on_event(ev).await,
            }
        }
    });
    d
}
