//! Shared rig for the driver tests: a fake Marlin on a pty, the serial driver on its path, and
//! bounded waits on telemetry, events and what the fake executed.
#![allow(dead_code)]

use raft3d::printers::codec::clean_line;
use raft3d::printers::fake_marlin::{Executed, FakeConfig};
use raft3d::printers::fake_pty::{FakePrinter, FakePtyConfig};
use raft3d::printers::{
    spawn_driver_with, ConnectionSpec, DriverCommand, DriverEvent, DriverHandle, DriverOptions,
    PrintRequest, Telemetry,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn sample(name: &str) -> PathBuf {
    // shared/ sits beside the folder that holds this crate
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../samples/gcode")
        .join(name)
}

pub fn options() -> DriverOptions {
    DriverOptions {
        banner_timeout: Duration::from_secs(2),
        banner_settle: Duration::from_millis(50),
        handshake_timeout: Duration::from_secs(1),
        temperature_interval: Duration::from_secs(1),
        silence_timeout: Duration::from_millis(400),
        long_command_timeout: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(400),
        tick: Duration::from_millis(20),
        cancel_drain: Duration::from_secs(1),
        write_timeout: Duration::from_secs(2),
        ..DriverOptions::default()
    }
}

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub fake: FakePrinter,
    pub handle: DriverHandle,
    pub events: mpsc::Receiver<DriverEvent>,
    pub shutdown: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Fake at 100× simulated time, driver connected.
pub async fn rig(marlin: FakeConfig) -> Rig {
    rig_opts(marlin, options()).await
}

pub async fn rig_opts(marlin: FakeConfig, options: DriverOptions) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyFAKE0");
    let cfg = FakePtyConfig {
        marlin,
        time_scale: 100.0,
        ..FakePtyConfig::default()
    };
    let fake = FakePrinter::start(&link, cfg).expect("fake printer on a pty");
    let (tx, events) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let spec = ConnectionSpec::Serial {
        port: link.display().to_string(),
        baud: 115_200,
    };
    let handle = spawn_driver_with("p1".into(), spec, options, tx, shutdown.clone());
    let mut rig = Rig {
        dir,
        fake,
        handle,
        events,
        shutdown,
    };
    rig.telemetry_until(|t| t.connection == "connected").await;
    rig
}

impl Rig {
    pub async fn send(&self, cmd: DriverCommand) {
        self.handle.commands.send(cmd).await.expect("driver alive");
    }

    pub async fn start(&self, job_id: &str, file: &Path) {
        let req = PrintRequest {
            job_id: job_id.into(),
            attempt: 1,
            file: file.to_path_buf(),
            upload: None,
        };
        self.send(DriverCommand::Start(req)).await;
    }

    pub async fn next_event(&mut self, within: Duration) -> DriverEvent {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("event channel closed"),
            Err(_) => panic!(
                "no driver event within {within:?}; telemetry {:?}",
                self.telemetry()
            ),
        }
    }

    pub fn telemetry(&self) -> Telemetry {
        self.handle.telemetry.borrow().clone()
    }

    pub async fn telemetry_until(&mut self, pred: impl Fn(&Telemetry) -> bool) -> Telemetry {
        let rx = &mut self.handle.telemetry;
        let found = match tokio::time::timeout(WAIT, rx.wait_for(|t| pred(t))).await {
            Ok(Ok(t)) => Some(t.clone()),
            _ => None,
        };
        found.unwrap_or_else(|| {
            panic!(
                "telemetry condition not met; last {:?}",
                rx.borrow().clone()
            )
        })
    }

    /// Numbered commands the fake executed, checked to be lines 0, 1, 2, ... each exactly once.
    pub fn numbered(&self) -> Vec<String> {
        numbered(&self.fake.executed())
    }

    pub async fn wait_numbered(&self, at_least: usize) {
        let ok = self
            .fake
            .wait_for(WAIT, |ex, _| {
                ex.iter().filter(|e| e.line.is_some()).count() >= at_least
            })
            .await;
        assert!(ok, "the fake did not execute {at_least} numbered lines");
    }
}

pub fn numbered(executed: &[Executed]) -> Vec<String> {
    let numbered: Vec<&Executed> = executed.iter().filter(|e| e.line.is_some()).collect();
    for (i, e) in numbered.iter().enumerate() {
        assert_eq!(
            e.line,
            Some(i as u64),
            "executed out of order or twice: {e:?}"
        );
    }
    numbered.iter().map(|e| e.command.clone()).collect()
}

/// What the printer must execute for `file`: `M110 N0`, every command once, `M400`.
pub fn expected(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("read sample");
    let body = text
        .lines()
        .filter_map(|l| clean_line(l).expect("clean sample line"));
    std::iter::once("M110 N0".to_string())
        .chain(body)
        .chain(std::iter::once("M400".to_string()))
        .collect()
}

/// A generated file of `n` moves.
pub fn moves(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("moves{n}.gcode"));
    let body: String = (0..n)
        .map(|i| format!("G1 X{} Y{} F3000 ; move {i}\n", i % 200, (i * 7) % 200))
        .collect();
    std::fs::write(&path, body).expect("write moves");
    path
}

pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(120), f).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {:?}", started.elapsed()),
    }
}
