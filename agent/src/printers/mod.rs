//! Printer drivers: one long-lived task per printer that owns its connection, streams the job it
//! is given and reports telemetry and job outcomes. Drivers never touch Raft or the job model:
//! the dispatcher sends `DriverCommand`s, reads `Telemetry` and turns `DriverEvent`s into
//! proposals.
//!
//! Layout:
//! - `codec`: the Marlin host protocol as a pure state machine (framing, parsing, `Sender`).
//! - `gcode_file`: lazy, bounded-memory reading of a G-code file from disk.
//! - `progress`: byte/line progress and time-left estimate of one job.
//! - `serial` / `serial_session` / `serial_handshake` / `serial_job`: the USB-serial transport on
//!   tokio-serial: port life cycle and reconnects, one open port's protocol loop, the connection
//!   handshake (pure), one streamed job.
//! - `virtual_printer` (+ pure `virtual_model`): a simulated printer that consumes the file.
//! - `mqtt_driver`: the runtime of network printers over MQTT (rumqttc), shared by the pure
//!   protocol engines `moonraker` (Klipper's JSON-RPC) and `bambu` (+ `bambu_report`, the merged
//!   report state; `bambu_tls`, certificate checks; `delta`, partial reports merged, for both);
//!   `net_job` tracks one job on a printer that prints on its own.
//! - `fake_marlin` (pure) and `fake_pty`: a fake firmware and its pty runner; `fake_broker`,
//!   `fake_moonraker`, `fake_bambu` and `test_pki`: an MQTT broker, simulated network printers
//!   and test certificates (feature `fake`).

mod bambu;
pub mod bambu_report;
pub mod bambu_tls;
pub mod codec;
mod delta;
#[cfg(feature = "fake")]
pub mod fake_bambu;
#[cfg(feature = "fake")]
pub mod fake_broker;
#[cfg(feature = "fake")]
pub mod fake_ftps;
#[cfg(any(test, feature = "fake"))]
pub mod fake_marlin;
#[cfg(feature = "fake")]
pub mod fake_moonraker;
#[cfg(any(test, feature = "fake"))]
pub mod fake_pty;
pub mod ftps;
pub mod gcode_file;
mod moonraker;
mod mqtt_driver;
pub mod net_job;
pub mod progress;
mod serial;
mod serial_handshake;
mod serial_job;
mod serial_session;
#[cfg(feature = "fake")]
pub mod test_pki;
mod virtual_model;
mod virtual_printer;

use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Start printing `file`; `attempt` fences the outcome to this dispatch. For a network printer
/// `file` is the job's `filepath` as given: a name on the printer (Moonraker's `gcodes` root,
/// the Bambu printer's SD card), never resolved against the agent's `gcode_dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrintRequest {
    pub job_id: String,
    pub attempt: u64,
    pub file: PathBuf,
    /// A local copy of the file to upload first (network printers that take uploads).
    pub upload: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverCommand {
    Start(PrintRequest),
    /// Stop feeding lines (the printer finishes what it has queued).
    Pause,
    Resume,
    /// Stop streaming and leave the printer safe; no event follows (the cluster decided).
    Cancel,
    /// Track a print that an earlier agent (or an earlier run of this one) started on a network
    /// printer: nothing is sent to the printer, its reports decide the outcome. Printers that
    /// do not print on their own fail the request.
    Attach(PrintRequest),
}

/// Why a serial or virtual printer refuses `Attach`: its print needed this agent to feed it.
pub(crate) const NO_ATTACH: &str =
    "the agent restarted while the job was running; a print is never resumed on its own";

/// Outcome of the job given in `Start`, tagged with its `job_id` and `attempt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverEvent {
    Finished {
        job_id: String,
        attempt: u64,
    },
    Failed {
        job_id: String,
        attempt: u64,
        reason: String,
    },
    CanceledByPrinter {
        job_id: String,
        attempt: u64,
    },
}

/// Live state of one printer, kept in memory and served by the API (never written to the log).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Telemetry {
    /// `connecting` | `connected` | `disconnected` | `error`.
    pub connection: String,
    pub firmware: Option<String>,
    pub hotend: Option<f64>,
    pub hotend_target: Option<f64>,
    pub bed: Option<f64>,
    pub bed_target: Option<f64>,
    /// The job being printed, or the last one (with its final progress) while idle.
    pub job_id: Option<String>,
    /// `idle` | `uploading` (a network printer receiving the job's file) | `printing` |
    /// `paused` | `finishing` (end of file, waiting for the printer) |
    /// `canceling` (safe sequence sent, waiting for the printer to answer it).
    pub state: String,
    /// Share of the file's bytes acknowledged by the printer (100 once finished).
    pub progress_percent: Option<f64>,
    /// File bytes up to the last acknowledged command.
    pub bytes_sent: u64,
    pub bytes_total: u64,
    /// G-code commands acknowledged (blank and comment lines are not counted).
    pub lines_sent: u64,
    /// Estimated from the progress rate so far (paused time excluded).
    pub time_left_s: Option<u64>,
    /// Share of the job's file uploaded to the printer, while and after uploading (Bambu).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_percent: Option<f64>,
    pub last_error: Option<String>,
    /// Network printers: the state as the printer names it (`RUNNING`, `printing`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub printer_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_layers: Option<u32>,
    /// Bambu AMS trays (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ams: Vec<AmsTray>,
}

/// One filament slot of a Bambu AMS, as last reported.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct AmsTray {
    pub unit: u32,
    pub tray: u32,
    pub material: Option<String>,
    /// `RRGGBBAA` as the printer reports it.
    pub color: Option<String>,
    /// Filament left in percent; `None` when the printer does not know (it reports -1).
    pub remain_percent: Option<i64>,
}

/// A password or access code: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"********\"")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ConnectionSpec {
    Serial {
        port: String,
        baud: u32,
    },
    /// Simulated printer; `speed` 1.0 = real time, 1000.0 = 1000× faster.
    Virtual {
        speed: f64,
    },
    /// Klipper through Moonraker's MQTT API on the broker `host:port`.
    Moonraker {
        broker: String,
        instance: String,
        username: Option<String>,
        password: Option<Secret>,
    },
    /// A Bambu Lab printer in LAN mode: it is the MQTT broker (TLS, user `bblp`).
    Bambu {
        host: String,
        port: u16,
        serial: String,
        access_code: Option<Secret>,
        ca_file: Option<PathBuf>,
        /// Skip certificate checks (logged loudly at every connect).
        insecure_tls: bool,
        /// Implicit-FTPS port for uploads (990 on the printers).
        ftps_port: u16,
    },
}

impl ConnectionSpec {
    /// Network printers print files stored on the printer and keep printing on their own.
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            ConnectionSpec::Moonraker { .. } | ConnectionSpec::Bambu { .. }
        )
    }
}

pub struct DriverHandle {
    pub commands: mpsc::Sender<DriverCommand>,
    pub telemetry: watch::Receiver<Telemetry>,
}

/// Timing knobs of the drivers. Defaults suit real printers; tests shorten them.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// After opening the port, how long to wait for the boot banner (`start`) before identifying
    /// anyway (boards that do not reset on open print no banner).
    pub banner_timeout: Duration,
    /// Quiet time after the banner before `M115` (the banner arrives in several lines).
    pub banner_settle: Duration,
    /// How long each identification command (`M115`, `M155`) may take to be acknowledged.
    pub handshake_timeout: Duration,
    /// `M115` attempts before the port is closed and reopened later.
    pub handshake_attempts: u32,
    /// Temperature auto-report period (`M155 S<n>`, whole seconds) or `M105` poll period.
    pub temperature_interval: Duration,
    /// Silence with a line in flight before an `M105` probe.
    pub silence_timeout: Duration,
    /// Same while a long command (`G28`, `M109`, `M400`, ...) is in flight.
    pub long_command_timeout: Duration,
    /// Unanswered probes before the print fails and the port is reopened.
    pub max_probes: u32,
    /// Lines in flight when the firmware reports `ADVANCED_OK` (else one).
    pub window: usize,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Housekeeping and telemetry publication period.
    pub tick: Duration,
    /// How long the printer may take to acknowledge the cancel sequence before the driver idles.
    pub cancel_drain: Duration,
    /// A write to the port that takes longer than this means the port is gone.
    pub write_timeout: Duration,
    /// Network printers: how long a command may wait for the printer's answer.
    pub net_command_timeout: Duration,
    /// Network printers: how long after a start the printer must show the print under way
    /// (also how long a start waits for an offline printer).
    pub net_start_timeout: Duration,
    /// Network printers: how long a running job survives an unreachable printer (it keeps
    /// printing on its own) before it is failed.
    pub net_offline_grace: Duration,
    /// Network printers: silence on the report stream before a full refresh is asked for; the
    /// same again without a report and the connection is rebuilt.
    pub net_report_silence: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            banner_timeout: Duration::from_secs(4),
            banner_settle: Duration::from_millis(300),
            handshake_timeout: Duration::from_secs(5),
            handshake_attempts: 3,
            temperature_interval: Duration::from_secs(2),
            silence_timeout: Duration::from_secs(30),
            long_command_timeout: Duration::from_secs(600),
            max_probes: 3,
            window: 4,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            tick: Duration::from_millis(200),
            cancel_drain: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            net_command_timeout: Duration::from_secs(10),
            net_start_timeout: Duration::from_secs(120),
            net_offline_grace: Duration::from_secs(600),
            net_report_silence: Duration::from_secs(60),
        }
    }
}

/// What every driver task gets: its identity, options, channels and the shutdown signal.
pub(crate) struct DriverCtx {
    pub printer_id: String,
    pub options: DriverOptions,
    pub commands: mpsc::Receiver<DriverCommand>,
    pub events: mpsc::Sender<DriverEvent>,
    pub telemetry: watch::Sender<Telemetry>,
    pub shutdown: CancellationToken,
}

impl DriverCtx {
    pub async fn emit(&self, event: DriverEvent) {
        tracing::info!(printer = %self.printer_id, ?event, "job outcome");
        if self.events.send(event).await.is_err() {
            tracing::warn!(printer = %self.printer_id, "event receiver gone; outcome dropped");
        }
    }

    pub async fn fail(&self, req: &PrintRequest, reason: impl Into<String>) {
        let reason = reason.into();
        self.emit(DriverEvent::Failed {
            job_id: req.job_id.clone(),
            attempt: req.attempt,
            reason,
        })
        .await;
    }

    pub fn publish(&self, tel: &Telemetry) {
        self.telemetry.send_replace(tel.clone());
    }
}

/// Spawn the driver task of one printer with default options. Must be called inside a Tokio
/// runtime. The task ends when `shutdown` fires or every `commands` sender is dropped.
pub fn spawn_driver(
    printer_id: String,
    spec: ConnectionSpec,
    events: mpsc::Sender<DriverEvent>,
    shutdown: CancellationToken,
) -> DriverHandle {
    spawn_driver_with(printer_id, spec, DriverOptions::default(), events, shutdown)
}

/// `spawn_driver` with explicit timing options.
pub fn spawn_driver_with(
    printer_id: String,
    spec: ConnectionSpec,
    options: DriverOptions,
    events: mpsc::Sender<DriverEvent>,
    shutdown: CancellationToken,
) -> DriverHandle {
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let initial = Telemetry {
        connection: "connecting".into(),
        state: "idle".into(),
        ..Telemetry::default()
    };
    let (tel_tx, tel_rx) = watch::channel(initial);
    let ctx = DriverCtx {
        printer_id,
        options,
        commands: cmd_rx,
        events,
        telemetry: tel_tx,
        shutdown,
    };
    match spec {
        ConnectionSpec::Serial { port, baud } => {
            tokio::spawn(serial::run(ctx, port, baud));
        }
        ConnectionSpec::Virtual { speed } => {
            tokio::spawn(virtual_printer::run(ctx, speed));
        }
        ConnectionSpec::Moonraker {
            broker,
            instance,
            username,
            password,
        } => {
            let link = moonraker::link(&broker, &instance, username, password);
            let proto = moonraker::Moonraker::new(&instance, &ctx.options);
            tokio::spawn(mqtt_driver::run(ctx, link, proto));
        }
        ConnectionSpec::Bambu {
            host,
            port,
            serial,
            access_code,
            ca_file,
            insecure_tls,
            ftps_port,
        } => {
            let link = bambu::link(
                &host,
                port,
                &serial,
                access_code,
                ca_file,
                insecure_tls,
                ftps_port,
            );
            let proto = bambu::Bambu::new(&serial, &ctx.options);
            tokio::spawn(mqtt_driver::run(ctx, link, proto));
        }
    }
    DriverHandle {
        commands: cmd_tx,
        telemetry: tel_rx,
    }
}
