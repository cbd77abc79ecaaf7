//! One open serial port: the handshake (boot banner, `M115`, temperature auto-report or `M105`
//! polling), then the protocol loop that streams at most one job, obeys driver commands and keeps
//! telemetry. Ends when the port goes away, the printer stops answering, or on shutdown; opening
//! and reopening the port is `serial`'s job. A print is never restarted here.

use super::codec::{parse_line, Event, FailReason, LineAssembler, Status};
use super::serial_handshake::{Handshake, Step as Hs};
use super::serial_job::SerialJob;
use super::{DriverCommand, DriverCtx, DriverEvent, PrintRequest, Telemetry};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::MissedTickBehavior;
use tokio_serial::SerialStream;
use tracing::{debug, info, trace, warn};

pub(super) enum SessionEnd {
    Shutdown,
    /// Port gone or printer unresponsive: close it and reopen later. `connected`: the handshake
    /// had completed (a fresh reconnect delay is warranted).
    Lost {
        reason: String,
        connected: bool,
    },
}

enum Slot {
    Idle,
    Printing(Box<SerialJob>),
    /// Safe sequence sent; its acknowledgements are awaited before another job may start, so
    /// that they cannot be taken for the new job's.
    Draining {
        until: Instant,
        oks_left: u64,
    },
}

pub(super) struct Session<'a> {
    ctx: &'a mut DriverCtx,
    port: SerialStream,
    asm: LineAssembler,
    tel: Telemetry,
    handshake: Handshake,
    slot: Slot,
    /// A Start received before the printer was ready, or while the last job drains.
    pending: Option<PrintRequest>,
    /// An idle `M105` poll awaiting its `ok` (a new job waits for it: a late `ok` would be
    /// taken for the job's first line).
    idle_query: Option<Instant>,
    idle_misses: u32,
    last_poll: Instant,
    last_line_at: Instant,
    out: Vec<u8>,
    connected: bool,
}

enum Step {
    Shutdown,
    Read(std::io::Result<usize>),
    Command(Option<DriverCommand>),
    Tick,
}

fn lost(reason: impl Into<String>, connected: bool) -> SessionEnd {
    SessionEnd::Lost {
        reason: reason.into(),
        connected,
    }
}

impl<'a> Session<'a> {
    pub fn new(ctx: &'a mut DriverCtx, port: SerialStream) -> Session<'a> {
        let now = Instant::now();
        let tel = Telemetry {
            connection: "connecting".into(),
            ..ctx.telemetry.borrow().clone()
        };
        let handshake = Handshake::new(&ctx.options, now);
        Session {
            ctx,
            port,
            asm: LineAssembler::default(),
            tel,
            handshake,
            slot: Slot::Idle,
            pending: None,
            idle_query: None,
            idle_misses: 0,
            last_poll: now,
            last_line_at: now,
            out: Vec::new(),
            connected: false,
        }
    }

    pub async fn run(mut self) -> SessionEnd {
        let mut tick = tokio::time::interval(self.ctx.options.tick);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut buf = vec![0u8; 4096];
        loop {
            if let Err(end) = self.pump().await {
                return self.end(end).await;
            }
            let step = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => Step::Shutdown,
                r = self.port.read(&mut buf) => Step::Read(r),
                c = self.ctx.commands.recv() => Step::Command(c),
                _ = tick.tick() => Step::Tick,
            };
            let connected = self.connected;
            let result = match step {
                Step::Shutdown | Step::Command(None) => {
                    return self.end(SessionEnd::Shutdown).await
                }
                Step::Read(Ok(0)) => Err(lost(
                    "printer disconnected (0-byte read: device gone)",
                    connected,
                )),
                Step::Read(Err(e)) => Err(lost(
                    format!("printer disconnected (read failed: {e})"),
                    connected,
                )),
                Step::Read(Ok(n)) => self.on_bytes(buf.get(..n).unwrap_or_default()).await,
                Step::Command(Some(cmd)) => self.on_command(cmd).await,
                Step::Tick => self.on_tick().await,
            };
            if let Err(end) = result {
                return self.end(end).await;
            }
        }
    }

    /// Feed and transmit the job, then act on its status.
    async fn pump(&mut self) -> Result<(), SessionEnd> {
        if let (Slot::Printing(job), None) = (&mut self.slot, self.idle_query) {
            if let Err(e) = job.fill().await {
                warn!(printer = %self.ctx.printer_id, job = %job.req.job_id, error = %e, "job input failed");
                job.sender.cancel();
                let req = job.req.clone();
                job.transmit(&mut self.out);
                self.drain();
                self.ctx.fail(&req, e.to_string()).await;
            } else {
                job.transmit(&mut self.out);
            }
        }
        self.flush().await?;
        self.check_job().await?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), SessionEnd> {
        if self.out.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.out);
        trace!(printer = %self.ctx.printer_id, out = %String::from_utf8_lossy(&bytes).trim_end(), "send");
        let connected = self.connected;
        match tokio::time::timeout(self.ctx.options.write_timeout, self.port.write_all(&bytes))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(lost(
                format!("printer disconnected (write failed: {e})"),
                connected,
            )),
            Err(_) => Err(lost("printer disconnected (write timed out)", connected)),
        }
    }

    /// Report and leave a job whose sender stopped streaming.
    async fn check_job(&mut self) -> Result<(), SessionEnd> {
        let Slot::Printing(job) = &mut self.slot else {
            return Ok(());
        };
        let now = Instant::now();
        job.update(now);
        let status = job.sender.status().clone();
        let req = job.req.clone();
        let (job_id, attempt) = (req.job_id.clone(), req.attempt);
        match status {
            Status::Streaming => return Ok(()),
            Status::Finished => {
                job.progress.complete();
                self.refresh(now);
                self.slot = Slot::Idle;
                self.tel.state = "idle".into();
                info!(printer = %self.ctx.printer_id, job = %job_id, "print finished");
                self.ctx
                    .emit(DriverEvent::Finished { job_id, attempt })
                    .await;
            }
            Status::Failed(FailReason::Cancelled) => {
                info!(printer = %self.ctx.printer_id, job = %job_id, "print cancelled by the host");
                job.transmit(&mut self.out);
                self.refresh(now);
                self.drain();
            }
            Status::Failed(FailReason::CancelledByPrinter) => {
                job.sender.cancel(); // still make it safe
                job.transmit(&mut self.out);
                self.refresh(now);
                self.drain();
                self.ctx
                    .emit(DriverEvent::CanceledByPrinter { job_id, attempt })
                    .await;
            }
            Status::Failed(reason @ FailReason::Fatal(_)) => {
                self.refresh(now);
                self.slot = Slot::Idle;
                self.halt(reason.to_string());
                self.ctx.fail(&req, reason.to_string()).await;
            }
            Status::Failed(reason @ FailReason::FirmwareRestarted) => {
                self.refresh(now);
                self.slot = Slot::Idle;
                self.tel.state = "idle".into();
                self.tel.last_error = Some(reason.to_string());
                self.ctx.fail(&req, reason.to_string()).await;
                self.handshake.reboot(now);
                self.rebooted();
            }
            Status::Failed(reason @ FailReason::Timeout { .. }) => {
                self.refresh(now);
                self.slot = Slot::Idle;
                let reason = format!("{reason}; printer disconnected, the port will be reopened");
                self.ctx.fail(&req, reason.clone()).await;
                return Err(lost(reason, self.connected));
            }
            Status::Failed(reason) => {
                warn!(printer = %self.ctx.printer_id, job = %job_id, %reason, "print failed");
                job.sender.cancel();
                job.transmit(&mut self.out);
                self.refresh(now);
                self.drain();
                self.tel.last_error = Some(reason.to_string());
                self.ctx.fail(&req, reason.to_string()).await;
            }
        }
        self.ctx.publish(&self.tel);
        Ok(())
    }

    /// The cancel sequence is queued: wait for its answers (and the in-flight line's).
    fn drain(&mut self) {
        let in_flight = match &self.slot {
            Slot::Printing(job) => job.sender.in_flight(),
            _ => 0,
        };
        let oks_left = super::codec::CANCEL_SEQUENCE.len() as u64 + in_flight;
        self.slot = Slot::Draining {
            until: Instant::now() + self.ctx.options.cancel_drain,
            oks_left,
        };
        self.tel.state = "canceling".into();
    }

    fn halt(&mut self, reason: String) {
        warn!(printer = %self.ctx.printer_id, %reason, "printer halted; waiting for it to be reset");
        self.handshake.halt();
        self.tel.connection = "error".into();
        self.tel.state = "idle".into();
        self.tel.last_error = Some(reason);
    }

    /// The firmware (re)booted: identify it again.
    fn rebooted(&mut self) {
        info!(printer = %self.ctx.printer_id, "printer restarted; identifying it again");
        self.idle_query = None;
        self.connected = false;
        self.tel.connection = "connecting".into();
    }

    async fn on_bytes(&mut self, bytes: &[u8]) -> Result<(), SessionEnd> {
        for line in self.asm.push(bytes) {
            trace!(printer = %self.ctx.printer_id, %line, "recv");
            self.last_line_at = Instant::now();
            for ev in parse_line(&line) {
                self.on_event(ev).await?;
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), SessionEnd> {
        let now = Instant::now();
        match &ev {
            Event::Temperature {
                hotend,
                hotend_target,
                bed,
                bed_target,
            } => {
                self.tel.hotend = hotend.or(self.tel.hotend);
                self.tel.hotend_target = hotend_target.or(self.tel.hotend_target);
                self.tel.bed = bed.or(self.tel.bed);
                self.tel.bed_target = bed_target.or(self.tel.bed_target);
            }
            Event::Firmware {
                name: Some(name), ..
            } => self.tel.firmware = Some(name.clone()),
            Event::Error(msg) => {
                debug!(printer = %self.ctx.printer_id, %msg, "printer error line");
                self.tel.last_error = Some(msg.clone());
            }
            _ => {}
        }
        if self.handshake.is_ready() {
            self.on_ready_event(&ev, now);
            return Ok(());
        }
        if let (Event::Fatal(msg), false) = (&ev, self.handshake.is_halted()) {
            self.halt(format!("fatal printer error: {msg}"));
            self.ctx.publish(&self.tel);
            return Ok(());
        }
        let step = self.handshake.on_event(&ev, now);
        self.handshake_step(step).await
    }

    async fn handshake_step(&mut self, step: Hs) -> Result<(), SessionEnd> {
        match step {
            Hs::Nothing => {}
            Hs::Send(line) => {
                debug!(printer = %self.ctx.printer_id, %line, "handshake");
                self.out.extend_from_slice(line.as_bytes());
                self.out.push(b'\n');
                self.flush().await?;
            }
            Hs::Rebooted => self.rebooted(),
            Hs::Lost(why) => return Err(lost(why, false)),
            Hs::Ready => self.ready().await,
        }
        Ok(())
    }

    fn on_ready_event(&mut self, ev: &Event, now: Instant) {
        if self.idle_query.is_some() && matches!(ev, Event::Ok { .. } | Event::Wait) {
            // the idle poll's answer (a job that started meanwhile has sent nothing yet)
            self.idle_query = None;
            self.idle_misses = 0;
            return;
        }
        match (&mut self.slot, ev) {
            (Slot::Printing(job), _) => job.sender.on_event(ev),
            (_, Event::Start) => {
                self.handshake.reboot(now);
                self.rebooted();
            }
            (_, Event::Fatal(msg)) => self.halt(format!("fatal printer error: {msg}")),
            (Slot::Draining { oks_left, .. }, Event::Ok { .. } | Event::Wait) => {
                *oks_left = oks_left.saturating_sub(1);
            }
            (_, Event::Action(action)) => {
                debug!(printer = %self.ctx.printer_id, ?action, "printer action while no job runs: ignored");
            }
            _ => {}
        }
    }

    /// Identification complete: take jobs.
    async fn ready(&mut self) {
        let caps = self.handshake.caps();
        self.connected = true;
        self.last_poll = Instant::now();
        self.tel.connection = "connected".into();
        info!(
            printer = %self.ctx.printer_id,
            firmware = self.tel.firmware.as_deref().unwrap_or("unknown"),
            autoreport = caps.autoreport_temp,
            advanced_ok = caps.advanced_ok,
            "printer connected"
        );
        self.ctx.publish(&self.tel);
        self.start_pending().await;
    }

    async fn on_command(&mut self, cmd: DriverCommand) -> Result<(), SessionEnd> {
        debug!(printer = %self.ctx.printer_id, ?cmd, "command");
        let now = Instant::now();
        match (cmd, &mut self.slot) {
            (DriverCommand::Start(req), _) => self.on_start(req).await,
            (DriverCommand::Attach(req), _) => self.ctx.fail(&req, super::NO_ATTACH).await,
            (DriverCommand::Pause, Slot::Printing(job)) => {
                job.sender.pause();
                job.update(now);
            }
            (DriverCommand::Resume, Slot::Printing(job)) => {
                job.sender.resume();
                job.update(now);
            }
            (DriverCommand::Cancel, Slot::Printing(job)) => job.sender.cancel(),
            (DriverCommand::Cancel, _) => {
                if let Some(req) = self.pending.take() {
                    info!(printer = %self.ctx.printer_id, job = %req.job_id, "pending start cancelled");
                }
            }
            (cmd, _) => debug!(printer = %self.ctx.printer_id, ?cmd, "no job: command ignored"),
        }
        self.refresh(now);
        self.ctx.publish(&self.tel);
        Ok(())
    }

    async fn on_start(&mut self, req: PrintRequest) {
        if matches!(self.slot, Slot::Printing(_)) || self.pending.is_some() {
            return self.ctx.fail(&req, "printer busy").await;
        }
        let ready = self.handshake.is_ready();
        match (self.handshake.is_halted(), ready, &self.slot) {
            (true, _, _) => {
                let why = self.tel.last_error.clone().unwrap_or_default();
                self.ctx
                    .fail(&req, format!("printer halted ({why}); reset it first"))
                    .await;
            }
            (false, true, Slot::Idle) => self.begin(req).await,
            _ => self.pending = Some(req),
        }
    }

    async fn start_pending(&mut self) {
        if !self.handshake.is_ready() || !matches!(self.slot, Slot::Idle) {
            return;
        }
        if let Some(req) = self.pending.take() {
            self.begin(req).await;
        }
    }

    async fn begin(&mut self, req: PrintRequest) {
        let cfg = SerialJob::sender_config(&self.ctx.options, self.handshake.caps().advanced_ok);
        let window = cfg.window;
        let now = Instant::now();
        match SerialJob::open(req.clone(), cfg, now).await {
            Ok(job) => {
                info!(printer = %self.ctx.printer_id, job = %req.job_id, attempt = req.attempt,
                    file = %req.file.display(), bytes = job.progress.bytes_total(), window, "print started");
                self.tel.job_id = Some(req.job_id.clone());
                self.tel.last_error = None;
                self.slot = Slot::Printing(Box::new(job));
                self.refresh(now);
                self.ctx.publish(&self.tel);
            }
            Err(e) => {
                warn!(printer = %self.ctx.printer_id, job = %req.job_id, error = %e, "cannot start print");
                self.ctx.fail(&req, e.to_string()).await;
            }
        }
    }

    async fn on_tick(&mut self) -> Result<(), SessionEnd> {
        let now = Instant::now();
        if self.handshake.is_ready() {
            self.ready_tick(now)?;
        } else {
            let step = self.handshake.on_tick(now, self.last_line_at);
            self.handshake_step(step).await?;
        }
        if let Slot::Draining { until, oks_left } = self.slot {
            if oks_left == 0 || now >= until {
                self.slot = Slot::Idle;
                self.tel.state = "idle".into();
                self.start_pending().await;
            }
        }
        self.refresh(now);
        self.ctx.publish(&self.tel);
        Ok(())
    }

    fn ready_tick(&mut self, now: Instant) -> Result<(), SessionEnd> {
        let o = &self.ctx.options;
        if let Some(sent) = self
            .idle_query
            .filter(|s| now.duration_since(*s) >= o.handshake_timeout)
        {
            debug!(printer = %self.ctx.printer_id, since = ?sent, "M105 poll unanswered");
            self.idle_query = None;
            self.idle_misses += 1;
            if self.idle_misses >= o.max_probes.max(1) {
                let why = format!(
                    "printer stopped answering ({} M105 polls unanswered)",
                    self.idle_misses
                );
                return Err(lost(why, true));
            }
        }
        let poll_due = !self.handshake.caps().autoreport_temp
            && self.idle_query.is_none()
            && now.duration_since(self.last_poll) >= o.temperature_interval;
        match &mut self.slot {
            Slot::Printing(job) => job.tick(now),
            Slot::Idle if poll_due => {
                self.out.extend_from_slice(b"M105\n");
                self.idle_query = Some(now);
                self.last_poll = now;
            }
            _ => {}
        }
        Ok(())
    }

    /// Copy the job's progress into the telemetry.
    fn refresh(&mut self, now: Instant) {
        if let Slot::Printing(job) = &self.slot {
            job.show(&mut self.tel, now);
        }
    }

    /// Leave the session: fail the job and any pending start, report the connection state.
    async fn end(mut self, end: SessionEnd) -> SessionEnd {
        let shutdown = matches!(end, SessionEnd::Shutdown);
        let reason = match &end {
            SessionEnd::Shutdown => "the agent is shutting down".to_string(),
            SessionEnd::Lost { reason, .. } => reason.clone(),
        };
        let mut lost_jobs = Vec::new();
        if let Slot::Printing(job) = &mut self.slot {
            if shutdown {
                job.sender.cancel(); // leave the printer safe, best effort
                job.transmit(&mut self.out);
                let bytes = std::mem::take(&mut self.out);
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), self.port.write_all(&bytes)).await;
            }
            warn!(printer = %self.ctx.printer_id, job = %job.req.job_id, %reason, "print lost");
            lost_jobs.push((job.req.clone(), reason.clone()));
        }
        if let Some(req) = self.pending.take() {
            lost_jobs.push((req, format!("printer not connected: {reason}")));
        }
        for (req, reason) in lost_jobs {
            let event = DriverEvent::Failed {
                job_id: req.job_id,
                attempt: req.attempt,
                reason,
            };
            if shutdown {
                let _ = self.ctx.events.try_send(event); // the dispatcher may be gone already
            } else {
                self.ctx.emit(event).await;
            }
        }
        self.tel.connection = "disconnected".into();
        self.tel.state = "idle".into();
        if !shutdown {
            self.tel.last_error = Some(reason);
        }
        self.ctx.publish(&self.tel);
        end
    }
}
