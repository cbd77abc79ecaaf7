//! The MQTT printer drivers against a real MQTT broker on loopback (the test broker) and
//! simulated printers: a Moonraker (Klipper) instance and a Bambu Lab printer behind TLS with
//! a CA made at test time and CN = the printer's serial. Each case is one thing a farm relies
//! on: a print ends `Finished` exactly once, a cancel reaches the printer, a cancel or error on
//! the printer is reported as such, a wrong access code or a certificate for another printer
//! is explained and refused, and a broker restart mid-print does not lose the job.

use raft3d::printers::fake_bambu::FakeBambu;
use raft3d::printers::fake_broker::{BrokerConfig, FakeBroker};
use raft3d::printers::fake_ftps::FakeFtps;
use raft3d::printers::fake_moonraker::FakeMoonraker;
use raft3d::printers::test_pki::TestPki;
use raft3d::printers::{
    spawn_driver_with, ConnectionSpec, DriverCommand, DriverEvent, DriverHandle, DriverOptions,
    PrintRequest, Secret, Telemetry,
};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
const SERIAL: &str = "01S00C123456789";
const CODE: &str = "12345678";

fn options() -> DriverOptions {
    DriverOptions {
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(400),
        tick: Duration::from_millis(20),
        net_command_timeout: Duration::from_secs(5),
        net_start_timeout: Duration::from_secs(10),
        net_offline_grace: Duration::from_secs(20),
        net_report_silence: Duration::from_secs(5),
        ..DriverOptions::default()
    }
}

struct Rig {
    handle: DriverHandle,
    events: mpsc::Receiver<DriverEvent>,
    shutdown: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Rig {
    fn spawn(spec: ConnectionSpec) -> Rig {
        let (tx, events) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let handle = spawn_driver_with("net-1".into(), spec, options(), tx, shutdown.clone());
        Rig {
            handle,
            events,
            shutdown,
        }
    }

    async fn send(&self, cmd: DriverCommand) {
        self.handle.commands.send(cmd).await.expect("driver alive");
    }

    async fn start(&self, job: &str, attempt: u64, file: &str) {
        self.send(DriverCommand::Start(PrintRequest {
            job_id: job.into(),
            attempt,
            file: PathBuf::from(file),
            upload: None,
        }))
        .await;
    }

    async fn next_event(&mut self) -> DriverEvent {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("event channel closed"),
            Err(_) => panic!(
                "no driver event within {WAIT:?}; telemetry {:?}",
                self.tel()
            ),
        }
    }

    /// Connected and the printer's state known: the simulated printer is listening too.
    async fn ready(&mut self) -> Telemetry {
        self.until("the printer's state", |t| {
            t.connection == "connected" && t.printer_state.is_some()
        })
        .await
    }

    /// No event arrives within `d`.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(ev) = tokio::time::timeout(d, self.events.recv()).await {
            panic!("unexpected driver event {ev:?}");
        }
    }

    fn tel(&self) -> Telemetry {
        self.handle.telemetry.borrow().clone()
    }

    async fn until(&mut self, what: &str, pred: impl Fn(&Telemetry) -> bool) -> Telemetry {
        let rx = &mut self.handle.telemetry;
        let found = match tokio::time::timeout(WAIT, rx.wait_for(|t| pred(t))).await {
            Ok(Ok(t)) => Some(t.clone()),
            _ => None,
        };
        found.unwrap_or_else(|| {
            panic!(
                "telemetry never showed {what}; last {:?}",
                rx.borrow().clone()
            )
        })
    }
}

async fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------- Moonraker ----------

async fn moonraker(print_time: Duration) -> (FakeBroker, FakeMoonraker, Rig) {
    let broker = FakeBroker::start(BrokerConfig::default())
        .await
        .expect("broker");
    let fake = FakeMoonraker::start(broker.plain_port, "k1", &["cube.gcode"], print_time);
    let rig = Rig::spawn(ConnectionSpec::Moonraker {
        broker: format!("127.0.0.1:{}", broker.plain_port),
        instance: "k1".into(),
        username: None,
        password: None,
    });
    (broker, fake, rig)
}

#[tokio::test]
async fn moonraker_print_finishes_once_with_progress_shown() {
    let (_broker, fake, mut rig) = moonraker(Duration::from_secs(2)).await;
    rig.ready().await;
    rig.start("j1", 7, "cube.gcode").await;
    let t = rig
        .until("printing", |t| {
            t.printer_state.as_deref() == Some("printing")
        })
        .await;
    assert_eq!(t.hotend_target, Some(215.0), "{t:?}");
    assert_eq!(
        rig.next_event().await,
        DriverEvent::Finished {
            job_id: "j1".into(),
            attempt: 7
        }
    );
    assert!(
        fake.methods().iter().any(|m| m == "printer.print.start"),
        "{:?}",
        fake.methods()
    );
    // The printer keeps showing `complete`: that must not finish the job a second time.
    rig.quiet_for(Duration::from_millis(800)).await;
}

#[tokio::test]
async fn moonraker_cancel_from_the_cluster_reaches_the_printer() {
    let (_broker, fake, mut rig) = moonraker(Duration::from_secs(60)).await;
    rig.ready().await;
    rig.start("j1", 1, "cube.gcode").await;
    rig.until("printing", |t| {
        t.printer_state.as_deref() == Some("printing")
    })
    .await;
    rig.send(DriverCommand::Cancel).await;
    poll_until("the printer to cancel", || fake.state() == "cancelled").await;
    assert!(fake.methods().iter().any(|m| m == "printer.print.cancel"));
    // The cluster decided the cancel: no outcome is proposed for it.
    rig.quiet_for(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn moonraker_cancel_and_error_on_the_printer_are_reported() {
    let (_broker, fake, mut rig) = moonraker(Duration::from_secs(60)).await;
    rig.ready().await;
    rig.start("j1", 1, "cube.gcode").await;
    rig.until("printing", |t| {
        t.printer_state.as_deref() == Some("printing")
    })
    .await;
    fake.cancel_on_printer();
    assert_eq!(
        rig.next_event().await,
        DriverEvent::CanceledByPrinter {
            job_id: "j1".into(),
            attempt: 1
        }
    );

    rig.start("j2", 2, "cube.gcode").await;
    rig.until("printing again", |t| {
        t.printer_state.as_deref() == Some("printing")
    })
    .await;
    fake.fail_on_printer("Heater extruder not heating at expected rate");
    match rig.next_event().await {
        DriverEvent::Failed {
            job_id,
            attempt,
            reason,
        } => {
            assert_eq!((job_id.as_str(), attempt), ("j2", 2));
            assert!(reason.contains("not heating"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn moonraker_missing_file_fails_with_the_printers_reason() {
    let (_broker, _fake, mut rig) = moonraker(Duration::from_secs(2)).await;
    rig.ready().await;
    rig.start("j1", 1, "no-such-file.gcode").await;
    match rig.next_event().await {
        DriverEvent::Failed { reason, .. } => {
            assert!(reason.contains("no-such-file.gcode"), "{reason}")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

// ---------- Bambu ----------

struct BambuRig {
    _dir: tempfile::TempDir,
    broker: FakeBroker,
    fake: FakeBambu,
    ca_file: PathBuf,
    /// The printer's FTPS side (same certificate, same access code).
    ftps: FakeFtps,
}

/// A broker standing in for the printer: TLS with a certificate for `cert_cn` issued by a test
/// CA, login `bblp` / `CODE`; the simulated printer on its plain port.
async fn bambu(cert_cn: &str, print_time: Duration) -> BambuRig {
    let pki = TestPki::new("Test Bambu CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, pki.ca_pem()).expect("write CA");
    let tls = pki.server_config(cert_cn);
    let broker = FakeBroker::start(BrokerConfig {
        tls: Some(tls.clone()),
        login: Some(("bblp".into(), CODE.into())),
    })
    .await
    .expect("broker");
    let ftps = FakeFtps::start(tls, CODE).await.expect("ftps");
    let fake = FakeBambu::start(
        broker.plain_port,
        SERIAL,
        Duration::from_millis(300),
        print_time,
    );
    BambuRig {
        _dir: dir,
        broker,
        fake,
        ca_file,
        ftps,
    }
}

fn bambu_spec(b: &BambuRig, code: &str) -> ConnectionSpec {
    ConnectionSpec::Bambu {
        host: "127.0.0.1".into(),
        port: b.broker.port,
        serial: SERIAL.into(),
        access_code: Some(Secret(code.into())),
        ca_file: Some(b.ca_file.clone()),
        insecure_tls: false,
        ftps_port: b.ftps.port,
    }
}

#[tokio::test]
async fn bambu_print_finishes_with_telemetry_and_big_reports() {
    let b = bambu(SERIAL, Duration::from_secs(3)).await;
    let mut rig = Rig::spawn(bambu_spec(&b, CODE));
    rig.ready().await;
    // A full report after connecting (pushall) carries the AMS trays.
    let t = rig.until("AMS trays", |t| !t.ams.is_empty()).await;
    assert_eq!(t.ams.len(), 4, "{:?}", t.ams);
    assert_eq!(t.ams[0].material.as_deref(), Some("PLA"));
    assert_eq!(t.ams[2].remain_percent, None, "-1 means unknown");
    assert!(b.fake.pushalls() >= 1);

    rig.start("j1", 3, "cube.gcode").await;
    let t = rig
        .until("printing", |t| {
            t.printer_state.as_deref() == Some("RUNNING")
        })
        .await;
    assert_eq!(t.job_id.as_deref(), Some("j1"), "{t:?}");
    // An X1-sized report (over rumqttc's 10 KiB default) must not break the connection.
    b.fake.send_big_report(15 * 1024);
    let t = rig.until("layers", |t| t.total_layers == Some(50)).await;
    assert!(t.hotend_target.unwrap_or(0.0) > 200.0, "{t:?}");
    assert_eq!(
        rig.next_event().await,
        DriverEvent::Finished {
            job_id: "j1".into(),
            attempt: 3
        }
    );
    assert!(
        b.fake.commands().iter().any(|c| c == "gcode_file"),
        "{:?}",
        b.fake.commands()
    );
    assert_eq!(rig.tel().connection, "connected", "{:?}", rig.tel());
    rig.quiet_for(Duration::from_millis(800)).await;
}

#[tokio::test]
async fn bambu_cancel_both_ways_and_printer_errors() {
    let b = bambu(SERIAL, Duration::from_secs(60)).await;
    let mut rig = Rig::spawn(bambu_spec(&b, CODE));
    rig.ready().await;

    // Cancel from the cluster: a `stop` goes to the printer, no outcome comes back.
    rig.start("j1", 1, "cube.gcode").await;
    rig.until("printing", |t| {
        t.printer_state.as_deref() == Some("RUNNING")
    })
    .await;
    rig.send(DriverCommand::Cancel).await;
    poll_until("the stop command", || {
        b.fake.commands().iter().any(|c| c == "stop")
    })
    .await;
    rig.quiet_for(Duration::from_millis(500)).await;

    // Cancel on the printer: its cancel code then FAILED is a cancel, not a failure.
    rig.start("j2", 2, "cube.gcode").await;
    poll_until("the printer to run j2", || b.fake.state() == "RUNNING").await;
    rig.until("printing", |t| {
        t.printer_state.as_deref() == Some("RUNNING")
    })
    .await;
    b.fake.cancel_on_printer();
    assert_eq!(
        rig.next_event().await,
        DriverEvent::CanceledByPrinter {
            job_id: "j2".into(),
            attempt: 2
        }
    );

    // Any other error code fails the job with the code in the reason.
    rig.start("j3", 3, "cube.gcode").await;
    poll_until("the printer to run j3", || b.fake.state() == "RUNNING").await;
    rig.until("printing", |t| {
        t.printer_state.as_deref() == Some("RUNNING")
    })
    .await;
    b.fake.fail_on_printer(0x0700_8011);
    match rig.next_event().await {
        DriverEvent::Failed {
            job_id,
            attempt,
            reason,
        } => {
            assert_eq!((job_id.as_str(), attempt), ("j3", 3));
            assert!(reason.to_lowercase().contains("error"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn bambu_refused_control_is_its_own_error() {
    let b = bambu(SERIAL, Duration::from_secs(3)).await;
    b.fake.reject_control(true);
    let mut rig = Rig::spawn(bambu_spec(&b, CODE));
    rig.ready().await;
    rig.start("j1", 1, "cube.gcode").await;
    match rig.next_event().await {
        DriverEvent::Failed { reason, .. } => {
            assert!(reason.contains("Developer Mode"), "{reason}")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn bambu_wrong_access_code_is_explained_and_nothing_prints() {
    let b = bambu(SERIAL, Duration::from_secs(3)).await;
    let mut rig = Rig::spawn(bambu_spec(&b, "00000000"));
    let t = rig
        .until("a login error", |t| {
            t.last_error
                .as_deref()
                .is_some_and(|e| e.contains("access code"))
        })
        .await;
    assert_ne!(t.connection, "connected", "{t:?}");
    assert!(
        !format!("{t:?}").contains("00000000"),
        "the access code leaked into telemetry"
    );
    assert!(b.fake.commands().is_empty());
}

#[tokio::test]
async fn bambu_certificate_for_another_printer_is_refused() {
    let b = bambu("01S00C999999999", Duration::from_secs(3)).await;
    let mut rig = Rig::spawn(bambu_spec(&b, CODE));
    let t = rig
        .until("a certificate error", |t| {
            t.last_error
                .as_deref()
                .is_some_and(|e| e.contains("01S00C999999999") || e.contains("certificate"))
        })
        .await;
    assert_ne!(t.connection, "connected", "{t:?}");
    let why = t.last_error.unwrap_or_default();
    assert!(why.contains(SERIAL) || why.contains("serial"), "{why}");
    assert_eq!(
        b.fake.pushalls(),
        0,
        "no request may reach an unverified printer"
    );
}

#[tokio::test]
async fn bambu_without_ca_file_trusts_only_the_bundled_bambu_cas() {
    // The test CA is not Bambu Lab's: with no ca_file the printer must be refused.
    let b = bambu(SERIAL, Duration::from_secs(3)).await;
    let mut spec = bambu_spec(&b, CODE);
    if let ConnectionSpec::Bambu { ca_file, .. } = &mut spec {
        *ca_file = None;
    }
    let mut rig = Rig::spawn(spec);
    let t = rig
        .until("a certificate error", |t| {
            t.last_error
                .as_deref()
                .is_some_and(|e| e.contains("bundled Bambu Lab CAs"))
        })
        .await;
    assert_ne!(t.connection, "connected", "{t:?}");
    assert!(
        t.last_error.unwrap_or_default().contains("ca_file"),
        "the error says how to fix it"
    );
    assert_eq!(
        b.fake.pushalls(),
        0,
        "no request may reach an unverified printer"
    );
}

#[tokio::test]
async fn bambu_broker_restart_mid_print_keeps_the_job() {
    let mut b = bambu(SERIAL, Duration::from_secs(4)).await;
    let mut rig = Rig::spawn(bambu_spec(&b, CODE));
    rig.ready().await;
    rig.start("j1", 1, "cube.gcode").await;
    rig.until("printing", |t| {
        t.printer_state.as_deref() == Some("RUNNING")
    })
    .await;
    let pushalls = |b: &BambuRig| {
        b.broker
            .published()
            .iter()
            .filter(|(topic, body)| topic.ends_with("/request") && body.contains("pushall"))
            .count()
    };
    let before = pushalls(&b);
    b.broker
        .restart()
        .await
        .expect("broker back on the same ports");
    assert_eq!(
        rig.next_event().await,
        DriverEvent::Finished {
            job_id: "j1".into(),
            attempt: 1
        }
    );
    assert!(
        pushalls(&b) > before,
        "a full refresh is asked for after the reconnect"
    );
    let starts = b
        .fake
        .commands()
        .iter()
        .filter(|c| *c == "gcode_file")
        .count();
    assert_eq!(starts, 1, "the print is never started twice");
}

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../samples/gcode")
        .join(name)
}

#[tokio::test]
async fn bambu_local_file_is_uploaded_over_ftps_then_printed() {
    // A print long enough that a busy machine cannot miss it under way.
    let b = bambu(SERIAL, Duration::from_secs(6)).await;
    let mut rig = Rig::spawn(bambu_spec(&b, CODE));
    rig.ready().await;
    rig.send(DriverCommand::Start(PrintRequest {
        job_id: "u1".into(),
        attempt: 7,
        file: PathBuf::from("bracket.gcode"),
        upload: Some(sample("bracket.gcode")),
    }))
    .await;
    let t = rig
        .until("printing", |t| {
            t.printer_state.as_deref() == Some("RUNNING")
        })
        .await;
    assert_eq!(t.upload_percent, Some(100.0), "{t:?}");
    let want = std::fs::read(sample("bracket.gcode")).unwrap();
    let files = b.ftps.files();
    assert!(
        files.get("bracket.gcode") == Some(&want),
        "the whole file is on the printer before it starts: {:?}",
        files.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        b.ftps.refused_without_reuse(),
        0,
        "the data connection resumes the TLS session"
    );
    assert_eq!(
        rig.next_event().await,
        DriverEvent::Finished {
            job_id: "u1".into(),
            attempt: 7
        }
    );
    let starts = b
        .fake
        .commands()
        .iter()
        .filter(|c| *c == "gcode_file")
        .count();
    assert_eq!(starts, 1, "{:?}", b.fake.commands());
}

#[tokio::test]
async fn bambu_failed_upload_fails_the_job_with_the_reason_and_prints_nothing() {
    let b = bambu(SERIAL, Duration::from_secs(2)).await;
    let mut rig = Rig::spawn(bambu_spec(&b, CODE));
    rig.ready().await;
    rig.send(DriverCommand::Start(PrintRequest {
        job_id: "u2".into(),
        attempt: 8,
        file: PathBuf::from("gone.gcode"),
        upload: Some(sample("no-such-file.gcode")),
    }))
    .await;
    match rig.next_event().await {
        DriverEvent::Failed { job_id, reason, .. } => {
            assert_eq!(job_id, "u2");
            assert!(
                reason.contains("upload") && reason.contains("no-such-file.gcode"),
                "{reason}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(
        !b.fake.commands().iter().any(|c| c == "gcode_file"),
        "nothing may print: {:?}",
        b.fake.commands()
    );
}
