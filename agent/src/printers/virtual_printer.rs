//! The virtual printer driver: a simulated Marlin-style printer inside the process. It consumes
//! the real G-code file line by line, lets simulated time pass for each command (see
//! `virtual_model`) divided by the speed factor, and reports the same telemetry and events as
//! the serial driver. It owns no port and never touches real hardware.

use super::codec::clean_line;
use super::gcode_file::GcodeReader;
use super::progress::Progress;
use super::virtual_model::{MachineModel, AMBIENT};
use super::{DriverCommand, DriverCtx, DriverEvent, PrintRequest, Telemetry};
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

/// Real time owed before the driver sleeps: finer sleeps cost more than they show.
const SLEEP_QUANTUM: Duration = Duration::from_millis(20);
/// Lines per batch at most, so that commands and shutdown are served even at huge speeds.
const BATCH_LINES: usize = 512;

struct VirtualJob {
    req: PrintRequest,
    reader: GcodeReader,
    progress: Progress,
    paused: bool,
    commands: u64,
}

struct VirtualPrinter {
    speed: f64,
    model: MachineModel,
    tel: Telemetry,
    job: Option<VirtualJob>,
    /// Real time owed for simulated work already done, not yet being slept.
    debt: Duration,
    /// End of the current sleep (simulated work being "performed").
    wake_at: Option<Instant>,
    sleep_from: Instant,
    /// Hotend and bed temperatures before the work being slept, to show them rising meanwhile.
    shown_from: (f64, f64),
    last_idle: Instant,
}

enum Batch {
    Continue,
    Finished,
    Failed(String),
}

pub(super) async fn run(mut ctx: DriverCtx, speed: f64) {
    if !(speed.is_finite() && speed > 0.0) {
        return invalid_speed(ctx, speed).await;
    }
    info!(printer = %ctx.printer_id, speed, "virtual printer started");
    let mut vp = VirtualPrinter {
        speed,
        model: MachineModel::default(),
        tel: Telemetry {
            connection: "connected".into(),
            firmware: Some(format!("Raft3D virtual printer (speed x{speed})")),
            state: "idle".into(),
            ..Telemetry::default()
        },
        job: None,
        debt: Duration::ZERO,
        wake_at: None,
        sleep_from: Instant::now(),
        shown_from: (AMBIENT, AMBIENT),
        last_idle: Instant::now(),
    };
    vp.refresh(Instant::now());
    ctx.publish(&vp.tel);
    let mut tick = tokio::time::interval(ctx.options.tick);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        if vp.active() && vp.wake_at.is_none() {
            vp.shown_from = vp.temps();
            match vp.batch().await {
                Batch::Continue => {}
                Batch::Finished => vp.finish(&ctx).await,
                Batch::Failed(reason) => vp.fail(&ctx, reason).await,
            }
            if vp.active() && vp.debt >= SLEEP_QUANTUM {
                let now = Instant::now();
                vp.sleep_from = now;
                vp.wake_at = Some(now + std::mem::take(&mut vp.debt));
            }
            tokio::task::yield_now().await;
        }
        let wake = vp.wake_at;
        let busy = vp.active() && wake.is_none();
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            cmd = ctx.commands.recv() => match cmd {
                None => break,
                Some(cmd) => vp.on_command(&ctx, cmd).await,
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => {
                vp.wake_at = None;
            }
            _ = tick.tick() => {
                vp.refresh(Instant::now());
                ctx.publish(&vp.tel);
            }
            _ = std::future::ready(()), if busy => {}
        }
    }
    if let Some(job) = vp.job.take() {
        let reason = "the agent is shutting down".to_string();
        let event = DriverEvent::Failed {
            job_id: job.req.job_id,
            attempt: job.req.attempt,
            reason,
        };
        let _ = ctx.events.try_send(event);
    }
    vp.tel.connection = "disconnected".into();
    ctx.publish(&vp.tel);
    info!(printer = %ctx.printer_id, "virtual printer stopped");
}

/// A bad speed is a configuration error: report it and fail every Start until shutdown.
async fn invalid_speed(mut ctx: DriverCtx, speed: f64) {
    let why = format!("invalid virtual printer speed {speed}: must be a positive number");
    warn!(printer = %ctx.printer_id, %why);
    let tel = Telemetry {
        connection: "error".into(),
        state: "idle".into(),
        last_error: Some(why.clone()),
        ..Telemetry::default()
    };
    ctx.publish(&tel);
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

impl VirtualPrinter {
    fn active(&self) -> bool {
        self.job.as_ref().is_some_and(|j| !j.paused)
    }

    fn temps(&self) -> (f64, f64) {
        (self.model.hotend.temp, self.model.bed.temp)
    }

    fn stop_clock(&mut self) {
        self.debt = Duration::ZERO;
        self.wake_at = None;
    }
    /// Execute lines until enough real time is owed, the batch is full, or the file ends.
    async fn batch(&mut self) -> Batch {
        let Some(job) = self.job.as_mut() else {
            return Batch::Continue;
        };
        for _ in 0..BATCH_LINES {
            if self.debt >= SLEEP_QUANTUM {
                break;
            }
            let raw = match job.reader.next_line().await {
                Ok(Some(raw)) => raw,
                Ok(None) => return Batch::Finished,
                Err(e) => return Batch::Failed(e.to_string()),
            };
            match clean_line(&raw) {
                Ok(Some(cmd)) => {
                    let secs = self.model.execute(&cmd) / self.speed;
                    self.debt += Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO);
                    job.commands += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    let path = job.reader.path().display();
                    return Batch::Failed(format!(
                        "line {} of {path} cannot be sent: {e}",
                        job.reader.lines_read()
                    ));
                }
            }
            job.progress.advance(job.reader.bytes_read(), job.commands);
        }
        self.last_idle = Instant::now();
        Batch::Continue
    }

    async fn finish(&mut self, ctx: &DriverCtx) {
        let Some(mut job) = self.job.take() else {
            return;
        };
        job.progress.complete();
        self.show_progress(&job, Instant::now());
        self.tel.state = "idle".into();
        self.stop_clock();
        info!(printer = %ctx.printer_id, job = %job.req.job_id, commands = job.commands, "virtual print finished");
        ctx.publish(&self.tel);
        ctx.emit(DriverEvent::Finished {
            job_id: job.req.job_id,
            attempt: job.req.attempt,
        })
        .await;
    }

    async fn fail(&mut self, ctx: &DriverCtx, reason: String) {
        let Some(job) = self.job.take() else { return };
        warn!(printer = %ctx.printer_id, job = %job.req.job_id, %reason, "virtual print failed");
        self.model.heaters_off();
        self.tel.state = "idle".into();
        self.tel.last_error = Some(reason.clone());
        self.stop_clock();
        ctx.publish(&self.tel);
        ctx.fail(&job.req, reason).await;
    }

    async fn on_command(&mut self, ctx: &DriverCtx, cmd: DriverCommand) {
        debug!(printer = %ctx.printer_id, ?cmd, "command");
        let now = Instant::now();
        match (cmd, self.job.as_mut()) {
            (DriverCommand::Start(req), Some(_)) => ctx.fail(&req, "printer busy").await,
            (DriverCommand::Attach(req), _) => ctx.fail(&req, super::NO_ATTACH).await,
            (DriverCommand::Start(req), None) => match GcodeReader::open(&req.file).await {
                Ok(reader) => {
                    info!(printer = %ctx.printer_id, job = %req.job_id, file = %req.file.display(), "virtual print started");
                    let progress = Progress::new(reader.bytes_total(), now);
                    self.tel.job_id = Some(req.job_id.clone());
                    self.tel.last_error = None;
                    self.job = Some(VirtualJob {
                        req,
                        reader,
                        progress,
                        paused: false,
                        commands: 0,
                    });
                    self.settle_idle(now);
                }
                Err(e) => ctx.fail(&req, e.to_string()).await,
            },
            (DriverCommand::Pause, Some(job)) => {
                job.paused = true;
                job.progress.set_paused(true, now);
                if let Some(wake) = self.wake_at.take() {
                    self.debt += wake.saturating_duration_since(now); // owed again after resume
                }
                self.last_idle = now;
            }
            (DriverCommand::Resume, Some(job)) => {
                job.paused = false;
                job.progress.set_paused(false, now);
                self.settle_idle(now);
            }
            (DriverCommand::Cancel, Some(_)) => {
                if let Some(job) = self.job.take() {
                    info!(printer = %ctx.printer_id, job = %job.req.job_id, "virtual print cancelled");
                }
                self.model.heaters_off();
                self.stop_clock();
                self.tel.state = "idle".into();
            }
            (cmd, None) => debug!(printer = %ctx.printer_id, ?cmd, "no job: command ignored"),
        }
        self.refresh(now);
        ctx.publish(&self.tel);
    }

    /// Let the heaters follow their targets for the simulated time spent idle or paused.
    fn settle_idle(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last_idle).as_secs_f64() * self.speed;
        self.model.idle(dt.min(86_400.0));
        self.last_idle = now;
    }

    fn refresh(&mut self, now: Instant) {
        if self.job.as_ref().is_none_or(|j| j.paused) {
            self.settle_idle(now);
        }
        let (mut hotend, mut bed) = self.temps();
        if let Some(wake) = self.wake_at {
            // the work being slept is under way: show the heaters part of the way there
            let span = wake
                .saturating_duration_since(self.sleep_from)
                .as_secs_f64();
            let done = now.saturating_duration_since(self.sleep_from).as_secs_f64();
            let f = if span > 0.0 {
                (done / span).clamp(0.0, 1.0)
            } else {
                1.0
            };
            hotend = self.shown_from.0 + (hotend - self.shown_from.0) * f;
            bed = self.shown_from.1 + (bed - self.shown_from.1) * f;
        }
        let round = |t: f64| (t * 10.0).round() / 10.0;
        self.tel.hotend = Some(round(hotend));
        self.tel.hotend_target = Some(self.model.hotend.target);
        self.tel.bed = Some(round(bed));
        self.tel.bed_target = Some(self.model.bed.target);
        if let Some(job) = self.job.take() {
            self.show_progress(&job, now);
            self.tel.state = if job.paused { "paused" } else { "printing" }.into();
            self.job = Some(job);
        }
    }

    fn show_progress(&mut self, job: &VirtualJob, now: Instant) {
        let p = &job.progress;
        self.tel.bytes_sent = p.bytes_done();
        self.tel.bytes_total = p.bytes_total();
        self.tel.lines_sent = p.lines_done();
        self.tel.progress_percent = Some(p.percent());
        self.tel.time_left_s = p.time_left_s(now);
    }
}
