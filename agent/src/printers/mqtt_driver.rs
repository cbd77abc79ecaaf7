//! The runtime of a network printer reached over MQTT (rumqttc): a link task owns the
//! connection (connect, reconnect with a growing delay, explain every failure), and the driver
//! task feeds a pure protocol engine (`NetProtocol`: Moonraker, Bambu) with messages, commands
//! and ticks, publishes what it asks for, and turns the printer's phase into job outcomes
//! through `NetJob`. Protocol details live in the engines; this file never parses a payload.
//!
//! A network printer prints on its own: losing the connection does not fail the job until the
//! printer stays unreachable past `net_offline_grace`; a cancel is sent when it is reachable.

use super::ftps::FtpsTarget;
use super::net_job::{NetJob, PrinterPhase, Verdict};
use super::{DriverCommand, DriverCtx, DriverEvent, PrintRequest, Telemetry};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, Transport};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Reports from X1 printers reach ~15 KB; rumqttc's default limit is 10 KiB.
pub(super) const MAX_INCOMING_PACKET: usize = 256 * 1024;
const MAX_OUTGOING_PACKET: usize = 64 * 1024;

/// A message to publish.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cmd {
    Start,
    Pause,
    Resume,
    Stop,
}

/// What a protocol engine tells the runtime besides the printer's phase.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Note {
    /// The printer answered a command; `Err` carries the full, actionable reason.
    Answer {
        cmd: Cmd,
        result: Result<(), String>,
    },
    /// Something to show in telemetry and the log (malformed report, no answer, ...).
    Problem(String),
    /// The stream looks dead: rebuild the connection.
    Reconnect(String),
}

/// A pure protocol engine: bytes and `Instant`s in, messages and notes out.
pub(super) trait NetProtocol: Send + 'static {
    /// Topics to subscribe to after every (re)connect.
    fn subscriptions(&self) -> Vec<String>;
    /// Messages to send after every (re)connect (a full-state request).
    fn on_connected(&mut self, now: Instant) -> Vec<Outgoing>;
    fn on_message(&mut self, topic: &str, payload: &[u8], now: Instant) -> Vec<Note>;
    /// A command for the printer; `file` is the job's file for `Start`. `Err`: cannot be sent.
    fn command(&mut self, cmd: Cmd, file: &str, now: Instant) -> Result<Vec<Outgoing>, String>;
    /// Periodic work while connected: answer timeouts, watchdogs.
    fn on_tick(&mut self, now: Instant) -> (Vec<Outgoing>, Vec<Note>);
    /// The printer's phase, once known.
    fn phase(&self) -> Option<PrinterPhase>;
    /// Whether the printer's current file is `file` (`None`: it does not say).
    fn is_file(&self, file: &str) -> Option<bool>;
    /// Copy temperatures, progress, layers, ... into the telemetry.
    fn show(&self, tel: &mut Telemetry);
    /// What to check when the broker refuses the login.
    fn login_hint(&self) -> String;
}

/// How to reach the broker. Built from the connection spec; `Err` is a configuration problem.
pub(super) struct Link {
    pub options: MqttOptions,
    /// `host:port`, for messages.
    pub target: String,
    /// The certificate verifier's last refusal, which says more than the TLS error.
    pub tls_diag: Option<super::bambu_tls::TlsDiag>,
    /// Where a job's local file is uploaded before it starts (Bambu: FTPS).
    pub ftps: Option<super::ftps::FtpsTarget>,
}

impl Link {
    pub fn new(client_prefix: &str, host: &str, port: u16) -> Link {
        let id = format!("{client_prefix}-{:08x}", rand::random::<u32>());
        let mut options = MqttOptions::new(id, host, port);
        options
            .set_keep_alive(Duration::from_secs(15))
            .set_clean_session(true)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
            .set_transport(Transport::Tcp);
        Link {
            options,
            target: format!("{host}:{port}"),
            tls_diag: None,
            ftps: None,
        }
    }
}

enum LinkEvent {
    Up,
    Message { topic: String, payload: Vec<u8> },
    Down(ConnectionError),
}

/// Polls one rumqttc event loop until cancelled; reconnects with a doubling delay.
async fn link_task(
    mut events: rumqttc::EventLoop,
    tx: mpsc::Sender<LinkEvent>,
    stop: CancellationToken,
    min: Duration,
    max: Duration,
) {
    let mut delay = min;
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.poll() => ev,
        };
        let out = match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                delay = min;
                LinkEvent::Up
            }
            Ok(Event::Incoming(Packet::Publish(p))) => LinkEvent::Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
            },
            Ok(_) => continue,
            Err(e) => {
                if tx.send(LinkEvent::Down(e)).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(max.max(min));
                continue;
            }
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}

/// Telemetry `connection` and an actionable message for a connection failure.
fn explain(e: &ConnectionError, link: &Link, login_hint: &str) -> (&'static str, String) {
    use rumqttc::ConnectReturnCode as Rc;
    let target = &link.target;
    if let Some(why) = link.tls_diag.as_ref().and_then(|d| d.take()) {
        return ("error", why);
    }
    match e {
        ConnectionError::ConnectionRefused(code @ (Rc::BadUserNamePassword | Rc::NotAuthorized)) => (
            "error",
            format!("{target} refused the login ({code:?}): {login_hint}"),
        ),
        ConnectionError::ConnectionRefused(code) => (
            "error",
            format!("{target} refused the connection ({code:?})"),
        ),
        ConnectionError::Io(io) => (
            "disconnected",
            format!("cannot reach {target}: {io} (is it on, on the network, and is the address right?)"),
        ),
        ConnectionError::NetworkTimeout => (
            "disconnected",
            format!("cannot reach {target}: connection timed out (is it on, on the network, and is the address right?)"),
        ),
        ConnectionError::Tls(t) => (
            "error",
            format!("TLS with {target} failed: {t} (check the host, ca_file and serial)"),
        ),
        ConnectionError::MqttState(s) => {
            let text = s.to_string();
            if text.to_ascii_lowercase().contains("size") {
                (
                    "disconnected",
                    format!(
                        "{target} sent a message over the {} KiB limit ({text}); reconnecting",
                        MAX_INCOMING_PACKET / 1024
                    ),
                )
            } else {
                ("disconnected", format!("connection to {target} lost: {text}"))
            }
        }
        other => ("disconnected", format!("connection to {target} lost: {other}")),
    }
}

struct Runtime<P: NetProtocol> {
    ctx: DriverCtx,
    link: Link,
    proto: P,
    tel: Telemetry,
    job: Option<NetJob>,
    /// A cluster cancel that could not be sent yet: sent on reconnect.
    stop_pending: bool,
    connected: bool,
    /// The current connection problem (also the telemetry's `last_error`).
    problem: Option<String>,
    client: AsyncClient,
    link_stop: CancellationToken,
    rx: mpsc::Receiver<LinkEvent>,
    /// The attempt whose file is being uploaded; its print starts once the upload is done.
    uploading: Option<u64>,
    uploads_tx: mpsc::Sender<UploadEvent>,
    uploads: mpsc::Receiver<UploadEvent>,
}

/// From an upload task: progress, then the outcome, for one job attempt.
enum UploadEvent {
    Progress {
        attempt: u64,
        sent: u64,
        total: u64,
    },
    Done {
        attempt: u64,
        result: Result<String, String>,
    },
}

enum Step {
    Shutdown,
    Command(DriverCommand),
    Link(LinkEvent),
    Upload(UploadEvent),
    Tick,
}

/// The driver task of a network printer.
pub(super) async fn run<P: NetProtocol>(ctx: DriverCtx, link: Result<Link, String>, proto: P) {
    let link = match link {
        Ok(link) => link,
        Err(why) => return misconfigured(ctx, why).await,
    };
    info!(printer = %ctx.printer_id, target = %link.target, "network printer driver started");
    let (client, link_stop, rx) = connect(&ctx, &link);
    let tel = Telemetry {
        connection: "connecting".into(),
        state: "idle".into(),
        ..Telemetry::default()
    };
    let (uploads_tx, uploads) = mpsc::channel(64);
    let mut rt = Runtime {
        ctx,
        link,
        proto,
        tel,
        job: None,
        stop_pending: false,
        connected: false,
        problem: None,
        client,
        link_stop,
        rx,
        uploading: None,
        uploads_tx,
        uploads,
    };
    rt.publish();
    let mut tick = tokio::time::interval(rt.ctx.options.tick);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let step = tokio::select! {
            _ = rt.ctx.shutdown.cancelled() => Step::Shutdown,
            c = rt.ctx.commands.recv() => c.map_or(Step::Shutdown, Step::Command),
            Some(ev) = rt.rx.recv() => Step::Link(ev),
            Some(ev) = rt.uploads.recv() => Step::Upload(ev),
            _ = tick.tick() => Step::Tick,
        };
        match step {
            Step::Shutdown => break,
            Step::Command(c) => rt.on_command(c).await,
            Step::Link(ev) => rt.on_link(ev).await,
            Step::Upload(ev) => rt.on_upload(ev).await,
            Step::Tick => rt.on_tick().await,
        }
        rt.publish();
    }
    rt.link_stop.cancel();
    if let Some(job) = rt.job.take() {
        let reason = "the agent is shutting down (the printer may still be printing)".to_string();
        let _ = rt.ctx.events.try_send(DriverEvent::Failed {
            job_id: job.req.job_id,
            attempt: job.req.attempt,
            reason,
        });
    }
    rt.tel.connection = "disconnected".into();
    rt.publish();
    info!(printer = %rt.ctx.printer_id, "network printer driver stopped");
}

fn connect(
    ctx: &DriverCtx,
    link: &Link,
) -> (AsyncClient, CancellationToken, mpsc::Receiver<LinkEvent>) {
    let (client, events) = AsyncClient::new(link.options.clone(), 64);
    let (tx, rx) = mpsc::channel(256);
    let stop = ctx.shutdown.child_token();
    let (min, max) = (ctx.options.reconnect_min, ctx.options.reconnect_max);
    tokio::spawn(link_task(events, tx, stop.clone(), min, max));
    (client, stop, rx)
}

/// A connection that cannot work as configured: say so and fail every start.
async fn misconfigured(mut ctx: DriverCtx, why: String) {
    warn!(printer = %ctx.printer_id, %why, "network printer misconfigured");
    ctx.publish(&Telemetry {
        connection: "error".into(),
        state: "idle".into(),
        last_error: Some(why.clone()),
        ..Telemetry::default()
    });
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            cmd = ctx.commands.recv() => match cmd {
                None => return,
                Some(DriverCommand::Start(req) | DriverCommand::Attach(req)) => ctx.fail(&req, why.clone()).await,
                Some(_) => {}
            },
        }
    }
}

impl<P: NetProtocol> Runtime<P> {
    fn publish(&mut self) {
        self.proto.show(&mut self.tel);
        let phase = self.proto.phase();
        self.tel.state = match (&self.job, &phase) {
            (Some(_), _) if self.uploading.is_some() => "uploading".into(),
            (_, Some(p)) if self.connected => p.state().into(),
            (Some(_), _) => "printing".into(),
            _ => "idle".into(),
        };
        if !self.connected {
            (self.tel.hotend, self.tel.bed) = (None, None);
        }
        self.ctx.publish(&self.tel);
    }

    fn send(&mut self, out: Vec<Outgoing>) {
        for o in out {
            debug!(printer = %self.ctx.printer_id, topic = %o.topic, payload = %String::from_utf8_lossy(&o.payload), "publish");
            if let Err(e) = self
                .client
                .try_publish(o.topic, QoS::AtMostOnce, false, o.payload)
            {
                self.note_problem(format!("cannot queue a message for the printer: {e}"));
            }
        }
    }

    fn note_problem(&mut self, msg: String) {
        if self.tel.last_error.as_deref() != Some(&msg) {
            warn!(printer = %self.ctx.printer_id, problem = %msg, "network printer problem");
        }
        self.tel.last_error = Some(msg);
    }

    async fn on_command(&mut self, cmd: DriverCommand) {
        debug!(printer = %self.ctx.printer_id, ?cmd, "command");
        let now = Instant::now();
        match cmd {
            DriverCommand::Start(req) => {
                if self.job.is_some() {
                    return self.ctx.fail(&req, "printer busy").await;
                }
                info!(printer = %self.ctx.printer_id, job = %req.job_id, attempt = req.attempt, file = %req.file.display(), "print requested");
                self.tel.job_id = Some(req.job_id.clone());
                self.tel.progress_percent = None;
                self.tel.time_left_s = None;
                self.tel.upload_percent = None;
                if let (Some(local), Some(target)) = (req.upload.clone(), self.link.ftps.clone()) {
                    self.begin_upload(&req, local, target);
                }
                self.job = Some(NetJob::new(req, now));
                if !self.connected {
                    if let Some(j) = self.job.as_mut() {
                        j.disconnected(now);
                    }
                }
                self.start_if_ready(now).await;
            }
            DriverCommand::Attach(req) => {
                if self.job.is_some() {
                    return self.ctx.fail(&req, "printer busy").await;
                }
                info!(printer = %self.ctx.printer_id, job = %req.job_id, attempt = req.attempt, file = %req.file.display(), "re-attaching to a print started earlier");
                self.tel.job_id = Some(req.job_id.clone());
                let mut job = NetJob::attached(req, now);
                if !self.connected {
                    job.disconnected(now);
                }
                self.job = Some(job);
                self.observe().await;
            }
            DriverCommand::Pause | DriverCommand::Resume => {
                let c = if cmd == DriverCommand::Pause {
                    Cmd::Pause
                } else {
                    Cmd::Resume
                };
                if self.job.is_none() {
                    return debug!(printer = %self.ctx.printer_id, ?cmd, "no job: command ignored");
                }
                if !self.connected {
                    return self
                        .note_problem(format!("cannot {c:?} now: the printer is not connected"));
                }
                match self.proto.command(c, "", now) {
                    Ok(out) => self.send(out),
                    Err(e) => self.note_problem(e),
                }
            }
            DriverCommand::Cancel => {
                let Some(job) = self.job.take() else {
                    return debug!(printer = %self.ctx.printer_id, "no job: cancel ignored");
                };
                info!(printer = %self.ctx.printer_id, job = %job.req.job_id, "print canceled by the cluster: stopping the printer");
                if !job.is_sent() {
                    return;
                }
                if self.connected {
                    self.stop_now(now);
                } else {
                    self.stop_pending = true;
                }
            }
        }
    }

    fn stop_now(&mut self, now: Instant) {
        self.stop_pending = false;
        match self.proto.command(Cmd::Stop, "", now) {
            Ok(out) => self.send(out),
            Err(e) => self.note_problem(e),
        }
    }

    /// Uploads the job's local file in a task of its own; the print starts when it is done.
    fn begin_upload(&mut self, req: &PrintRequest, local: PathBuf, target: FtpsTarget) {
        let attempt = req.attempt;
        let name = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| req.file.to_string_lossy().into_owned());
        info!(printer = %self.ctx.printer_id, job = %req.job_id, file = %local.display(), to = %format!("{}:{}", target.host, target.port), "uploading the job's file to the printer");
        self.uploading = Some(attempt);
        self.tel.upload_percent = Some(0.0);
        let tx = self.uploads_tx.clone();
        let stop = self.ctx.shutdown.clone();
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let mut last = std::time::Instant::now();
            let work = super::ftps::upload(&target, &local, &name, |sent, total| {
                if last.elapsed() >= Duration::from_millis(200) || sent == total {
                    last = std::time::Instant::now();
                    let _ = progress_tx.try_send(UploadEvent::Progress {
                        attempt,
                        sent,
                        total,
                    });
                }
            });
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = work => r.map(|()| name),
            };
            let _ = tx.send(UploadEvent::Done { attempt, result }).await;
        });
    }

    async fn on_upload(&mut self, ev: UploadEvent) {
        let current = self.job.as_ref().map(|j| j.req.attempt);
        match ev {
            UploadEvent::Progress {
                attempt,
                sent,
                total,
            } if current == Some(attempt) => {
                self.tel.upload_percent = Some(if total == 0 {
                    100.0
                } else {
                    (sent as f64 * 1000.0 / total as f64).round() / 10.0
                });
            }
            UploadEvent::Done { attempt, result } if current == Some(attempt) => {
                self.uploading = None;
                match result {
                    Ok(name) => {
                        info!(printer = %self.ctx.printer_id, file = %name, "upload done; starting the print");
                        self.tel.upload_percent = Some(100.0);
                        if let Some(job) = self.job.as_mut() {
                            job.req.file = PathBuf::from(name);
                        }
                        self.start_if_ready(Instant::now()).await;
                    }
                    Err(e) => {
                        self.note_problem(e.clone());
                        self.verdict(Verdict::Failed(format!(
                            "uploading the file to the printer failed: {e}"
                        )))
                        .await;
                    }
                }
            }
            // A job canceled (or replaced) while its file was on the way.
            UploadEvent::Done { attempt, .. } => {
                if self.uploading == Some(attempt) {
                    self.uploading = None;
                }
            }
            UploadEvent::Progress { .. } => {}
        }
    }

    async fn start_if_ready(&mut self, now: Instant) {
        if !self.connected || self.uploading.is_some() {
            return;
        }
        let Some(job) = self.job.as_mut().filter(|j| !j.is_sent()) else {
            return;
        };
        let file = job.file();
        match self.proto.command(Cmd::Start, &file, now) {
            Ok(out) => {
                job.sent(now);
                self.send(out);
            }
            Err(reason) => self.verdict(Verdict::Failed(reason)).await,
        }
    }

    async fn on_link(&mut self, ev: LinkEvent) {
        let now = Instant::now();
        match ev {
            LinkEvent::Up => {
                info!(printer = %self.ctx.printer_id, target = %self.link.target, "printer connected");
                self.connected = true;
                self.problem = None;
                self.tel.connection = "connected".into();
                self.tel.last_error = None;
                for topic in self.proto.subscriptions() {
                    if let Err(e) = self.client.try_subscribe(topic, QoS::AtMostOnce) {
                        self.note_problem(format!("cannot subscribe: {e}"));
                    }
                }
                let out = self.proto.on_connected(now);
                self.send(out);
                if let Some(j) = self.job.as_mut() {
                    j.connected();
                }
                if self.stop_pending {
                    self.stop_now(now);
                }
                self.start_if_ready(now).await;
            }
            LinkEvent::Down(e) => {
                let (state, why) = explain(&e, &self.link, &self.proto.login_hint());
                if self.problem.as_deref() != Some(&why) {
                    warn!(printer = %self.ctx.printer_id, error = %why, "printer connection problem");
                }
                self.connected = false;
                self.tel.connection = state.into();
                self.tel.last_error = Some(why.clone());
                self.problem = Some(why);
                if let Some(j) = self.job.as_mut() {
                    j.disconnected(now);
                }
            }
            LinkEvent::Message { topic, payload } => {
                let notes = self.proto.on_message(&topic, &payload, now);
                self.on_notes(notes).await;
                self.observe().await;
            }
        }
    }

    async fn on_notes(&mut self, notes: Vec<Note>) {
        for note in notes {
            match note {
                Note::Answer {
                    cmd,
                    result: Ok(()),
                } => {
                    debug!(printer = %self.ctx.printer_id, ?cmd, "command accepted");
                }
                Note::Answer {
                    cmd: Cmd::Start,
                    result: Err(why),
                } => {
                    let verdict = match self.job.as_mut() {
                        Some(j) => j.rejected(&why),
                        None => Verdict::Continue,
                    };
                    self.note_problem(why);
                    self.verdict(verdict).await;
                }
                Note::Answer {
                    result: Err(why), ..
                } => self.note_problem(why),
                Note::Problem(why) => self.note_problem(why),
                Note::Reconnect(why) => {
                    self.note_problem(why.clone());
                    self.rebuild(why);
                }
            }
        }
    }

    /// Drop the connection and open a new one (the old link task ends).
    fn rebuild(&mut self, why: String) {
        warn!(printer = %self.ctx.printer_id, reason = %why, "rebuilding the printer connection");
        self.link_stop.cancel();
        let (client, stop, rx) = connect(&self.ctx, &self.link);
        (self.client, self.link_stop, self.rx) = (client, stop, rx);
        self.connected = false;
        self.tel.connection = "connecting".into();
        self.problem = Some(why);
        if let Some(j) = self.job.as_mut() {
            j.disconnected(Instant::now());
        }
    }

    async fn observe(&mut self) {
        let Some(phase) = self.proto.phase() else {
            return;
        };
        if let PrinterPhase::Unknown(s) = &phase {
            self.note_problem(format!(
                "the printer reports an unknown state '{s}'; treated as no change"
            ));
        }
        let Some(job) = self.job.as_mut() else { return };
        let matches = self.proto.is_file(&job.file());
        let verdict = job.observe(&phase, matches);
        self.verdict(verdict).await;
    }

    async fn verdict(&mut self, v: Verdict) {
        if v == Verdict::Continue {
            return;
        }
        let Some(job) = self.job.take() else { return };
        let (job_id, attempt) = (job.req.job_id.clone(), job.req.attempt);
        let event = match v {
            Verdict::Continue => return,
            Verdict::Finished => {
                info!(printer = %self.ctx.printer_id, job = %job_id, "print finished");
                self.tel.progress_percent = Some(100.0);
                self.tel.time_left_s = Some(0);
                DriverEvent::Finished { job_id, attempt }
            }
            Verdict::CanceledByPrinter => {
                info!(printer = %self.ctx.printer_id, job = %job_id, "print canceled on the printer");
                DriverEvent::CanceledByPrinter { job_id, attempt }
            }
            Verdict::Failed(reason) => {
                warn!(printer = %self.ctx.printer_id, job = %job_id, %reason, "print failed");
                self.tel.last_error = Some(reason.clone());
                DriverEvent::Failed {
                    job_id,
                    attempt,
                    reason,
                }
            }
        };
        self.publish();
        self.ctx.emit(event).await;
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        if self.connected {
            let (out, notes) = self.proto.on_tick(now);
            self.send(out);
            self.on_notes(notes).await;
        }
        if let Some(job) = self.job.as_mut() {
            let v = job.tick(now, &self.ctx.options, self.problem.as_deref());
            self.verdict(v).await;
        }
    }
}
