//! The virtual printer driver: finishing a real file fast, commands, and failures.

#[path = "printers_support/mod.rs"]
mod support;

use raft3d::printers::{
    spawn_driver_with, ConnectionSpec, DriverCommand, DriverEvent, DriverHandle, PrintRequest,
    Telemetry,
};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{bounded, moves, options, sample};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Virtual {
    handle: DriverHandle,
    events: mpsc::Receiver<DriverEvent>,
    shutdown: CancellationToken,
}

impl Drop for Virtual {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn virtual_printer(speed: f64) -> Virtual {
    let (tx, events) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let handle = spawn_driver_with(
        "v1".into(),
        ConnectionSpec::Virtual { speed },
        options(),
        tx,
        shutdown.clone(),
    );
    Virtual {
        handle,
        events,
        shutdown,
    }
}

impl Virtual {
    async fn start(&self, job: &str, file: &Path) {
        let req = PrintRequest {
            job_id: job.into(),
            attempt: 7,
            file: file.to_path_buf(),
            upload: None,
        };
        self.handle
            .commands
            .send(DriverCommand::Start(req))
            .await
            .expect("driver alive");
    }
    async fn event(&mut self, within: Duration) -> DriverEvent {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(ev)) => ev,
            other => panic!("no event within {within:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vase_finishes_at_high_speed_with_rising_temperatures_and_full_progress() {
    bounded(async {
        let mut v = virtual_printer(20_000.0);
        let vase = sample("vase.gcode");
        let started = Instant::now();
        v.start("vase", &vase).await;
        // follow the telemetry until the job ends
        let mut rx = v.handle.telemetry.clone();
        let mut seen: Vec<Telemetry> = Vec::new();
        let finished = loop {
            tokio::select! {
                ev = v.events.recv() => break ev,
                changed = rx.changed() => {
                    assert!(changed.is_ok());
                    seen.push(rx.borrow_and_update().clone());
                }
                _ = tokio::time::sleep(Duration::from_secs(60)) => panic!("vase did not finish"),
            }
        };
        assert_eq!(
            finished,
            Some(DriverEvent::Finished {
                job_id: "vase".into(),
                attempt: 7
            })
        );
        let elapsed = started.elapsed();
        let last = v.handle.telemetry.borrow().clone();
        assert_eq!(last.progress_percent, Some(100.0));
        assert_eq!(
            last.bytes_sent,
            std::fs::metadata(&vase).map(|m| m.len()).unwrap_or(0)
        );
        assert_eq!(
            (last.state.as_str(), last.job_id.as_deref()),
            ("idle", Some("vase"))
        );
        let printing: Vec<&Telemetry> = seen.iter().filter(|t| t.state == "printing").collect();
        assert!(printing.len() >= 3, "progress was published while printing");
        let progress: Vec<f64> = printing.iter().filter_map(|t| t.progress_percent).collect();
        assert!(
            progress.windows(2).all(|w| w[0] <= w[1]),
            "progress never goes back"
        );
        let hot = seen.iter().filter_map(|t| t.hotend).fold(0.0, f64::max);
        assert!(hot > 150.0, "the hotend heated up: max {hot}");
        println!(
            "vase at 20000x: {elapsed:?}, {} telemetry updates",
            seen.len()
        );
        // the simulated print is hours long: at 20000x it takes seconds, not minutes
        assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_speed_scales_time_and_commands_work() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        // 100 moves of 100 mm at 50 mm/s: 200 simulated seconds, 2 s at 100x
        let path = dir.path().join("slow.gcode");
        let body: String = (0..100)
            .map(|i| format!("G1 X{} F3000\n", if i % 2 == 0 { 100 } else { 0 }))
            .collect();
        std::fs::write(&path, body).expect("write");
        let mut v = virtual_printer(100.0);
        let started = Instant::now();
        v.start("slow", &path).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        v.start("other", &path).await;
        assert_eq!(
            v.event(Duration::from_secs(2)).await,
            DriverEvent::Failed {
                job_id: "other".into(),
                attempt: 7,
                reason: "printer busy".into()
            }
        );
        v.handle
            .commands
            .send(DriverCommand::Pause)
            .await
            .expect("alive");
        let mut rx = v.handle.telemetry.clone();
        let paused = rx
            .wait_for(|t| t.state == "paused")
            .await
            .map(|t| t.bytes_sent)
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            v.handle.telemetry.borrow().bytes_sent,
            paused,
            "no progress while paused"
        );
        v.handle
            .commands
            .send(DriverCommand::Resume)
            .await
            .expect("alive");
        assert_eq!(
            v.event(Duration::from_secs(20)).await,
            DriverEvent::Finished {
                job_id: "slow".into(),
                attempt: 7
            }
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(2_300) && took < Duration::from_secs(15),
            "{took:?}"
        );

        // cancel: no event, idle again, heaters off
        let file = moves(dir.path(), 5_000);
        v.start("c", &file).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        v.handle
            .commands
            .send(DriverCommand::Cancel)
            .await
            .expect("alive");
        let t = rx
            .wait_for(|t| t.state == "idle")
            .await
            .map(|t| t.clone())
            .expect("idle");
        assert_eq!(t.hotend_target, Some(0.0));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), v.events.recv())
                .await
                .is_err()
        );

        // missing file: immediate failure
        v.start("m", &dir.path().join("missing.gcode")).await;
        match v.event(Duration::from_secs(1)).await {
            DriverEvent::Failed { job_id, reason, .. } => {
                assert_eq!(job_id, "m");
                assert!(reason.contains("missing.gcode"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temperatures_rise_gradually_during_a_heat_up_wait() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("heat.gcode");
        // 25 -> 199 °C at 2.5 °C/s: ~70 simulated seconds, ~1.4 s at 50x
        std::fs::write(&path, "M140 S60\nM109 S200\nG1 X10 F600\n").expect("write");
        let mut v = virtual_printer(50.0);
        v.start("heat", &path).await;
        let mut rx = v.handle.telemetry.clone();
        let mut temps = Vec::new();
        let ended = loop {
            tokio::select! {
                ev = v.events.recv() => break ev,
                _ = rx.changed() => temps.extend(rx.borrow_and_update().hotend),
            }
        };
        assert_eq!(
            ended,
            Some(DriverEvent::Finished {
                job_id: "heat".into(),
                attempt: 7
            })
        );
        let between = temps.iter().filter(|h| **h > 40.0 && **h < 190.0).count();
        assert!(between >= 5, "intermediate temperatures shown: {temps:?}");
        assert!(
            temps.windows(2).all(|w| w[0] <= w[1] + 0.05),
            "rising: {temps:?}"
        );
        let t = v.handle.telemetry.borrow().clone();
        assert!(
            t.hotend.is_some_and(|h| h >= 199.0) && t.bed.is_some_and(|b| b > 25.0),
            "{t:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn invalid_speed_is_reported() {
    let mut v = virtual_printer(0.0);
    let mut rx = v.handle.telemetry.clone();
    let t = rx
        .wait_for(|t| t.connection == "error")
        .await
        .map(|t| t.clone())
        .expect("error state");
    assert!(t.last_error.is_some_and(|e| e.contains("speed")));
    v.start("x", Path::new("/nonexistent")).await;
    assert!(matches!(
        v.event(Duration::from_secs(1)).await,
        DriverEvent::Failed { .. }
    ));
}
