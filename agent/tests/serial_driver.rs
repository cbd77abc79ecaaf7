//! The serial driver against the fake Marlin over a real pty: streaming through faults, commands
//! from the cluster, printer-side actions and failures.

#[path = "printers_support/mod.rs"]
mod support;

use raft3d::printers::codec::CANCEL_SEQUENCE;
use raft3d::printers::fake_marlin::{FakeConfig, Faults};
use raft3d::printers::{DriverCommand, DriverEvent, DriverOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::*;

fn finished(job: &str) -> DriverEvent {
    DriverEvent::Finished {
        job_id: job.into(),
        attempt: 1,
    }
}

fn failed_reason(ev: DriverEvent, job: &str) -> String {
    match ev {
        DriverEvent::Failed {
            job_id,
            attempt: 1,
            reason,
        } if job_id == job => reason,
        other => panic!("expected Failed for {job}, got {other:?}"),
    }
}

fn cube_faults() -> Faults {
    Faults {
        corrupt: BTreeMap::from([(100, 2), (5_000, 1)]),
        drop_ok: BTreeSet::from([200]),
        resend_without_ok: BTreeSet::from([300]),
        double_ok: BTreeSet::from([400]),
        busy: BTreeMap::from([(500, 60_000)]),
        ..Faults::default()
    }
}

async fn stream_cube_exactly_once(marlin: FakeConfig) {
    let mut rig = rig(marlin).await;
    let cube = sample("cube.gcode");
    rig.start("cube", &cube).await;
    assert_eq!(rig.next_event(WAIT).await, finished("cube"));
    assert_eq!(rig.numbered(), expected(&cube));
    let executed = rig.fake.executed();
    let stray: Vec<_> = executed
        .iter()
        .filter(|e| e.line.is_none() && !["M115", "M155 S1", "M105"].contains(&e.command.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "unexpected unnumbered commands: {stray:?}"
    );
    let probes = executed.iter().filter(|e| e.command == "M105").count();
    assert!(probes >= 1, "the dropped ok was recovered by an M105 probe");
    let t = rig.telemetry_until(|t| t.state == "idle").await;
    assert_eq!(
        (t.progress_percent, t.job_id.as_deref()),
        (Some(100.0), Some("cube"))
    );
    assert_eq!(
        t.bytes_sent,
        std::fs::metadata(&cube).map(|m| m.len()).unwrap_or(0)
    );
    assert_eq!(t.lines_sent as usize, expected(&cube).len() - 2);
    assert!(
        t.hotend.is_some()
            && t.firmware
                .as_deref()
                .is_some_and(|f| f.starts_with("Marlin"))
    );
    assert!(rig.events.try_recv().is_err(), "exactly one event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_streams_exactly_once_through_faults() {
    bounded(stream_cube_exactly_once(FakeConfig {
        faults: cube_faults(),
        ..FakeConfig::default()
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_streams_exactly_once_windowed_with_advanced_ok() {
    let marlin = FakeConfig {
        advanced_ok: true,
        bufsize: 8,
        faults: cube_faults(),
        ..FakeConfig::default()
    };
    bounded(stream_cube_exactly_once(marlin)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_print_sends_the_safe_sequence_and_no_event() {
    bounded(async {
        let mut rig = rig(FakeConfig::default()).await;
        rig.start("c", &sample("cube.gcode")).await;
        rig.wait_numbered(2_000).await;
        rig.send(DriverCommand::Cancel).await;
        let done = rig
            .fake
            .wait_for(WAIT, |ex, _| ex.iter().any(|e| e.command == "M84"))
            .await;
        assert!(done, "cancel sequence executed");
        let t = rig.telemetry_until(|t| t.state == "idle").await;
        assert!(
            t.progress_percent.is_some_and(|p| p > 0.0 && p < 100.0),
            "{t:?}"
        );
        let executed = rig.fake.executed();
        let m108 = executed
            .iter()
            .position(|e| e.command == "M108")
            .unwrap_or(usize::MAX);
        let tail: Vec<&str> = executed
            .iter()
            .skip(m108)
            .map(|e| e.command.as_str())
            .collect();
        assert_eq!(
            tail, CANCEL_SEQUENCE,
            "nothing but the safe sequence after M108"
        );
        rig.numbered(); // what ran, ran once and in order
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            rig.events.try_recv().is_err(),
            "no event after a cluster cancel"
        );
        // the printer is free again
        let file = moves(rig.dir.path(), 50);
        rig.start("next", &file).await;
        assert_eq!(rig.next_event(WAIT).await, finished("next"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_the_feed_and_resume_finishes() {
    bounded(async {
        let mut rig = rig(FakeConfig::default()).await;
        let cube = sample("cube.gcode");
        rig.start("p", &cube).await;
        rig.wait_numbered(2_000).await;
        rig.send(DriverCommand::Pause).await;
        rig.telemetry_until(|t| t.state == "paused").await;
        tokio::time::sleep(Duration::from_millis(200)).await; // the line in flight completes
        let before = rig.fake.stats().executed;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            rig.fake.stats().executed,
            before,
            "nothing executed while paused"
        );
        assert!(rig.events.try_recv().is_err());
        rig.send(DriverCommand::Resume).await;
        assert_eq!(rig.next_event(WAIT).await, finished("p"));
        assert_eq!(rig.numbered(), expected(&cube));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_fails_the_print_and_reconnects_without_restarting_it() {
    bounded(async {
        let mut rig = rig(FakeConfig::default()).await;
        rig.start("u", &sample("cube.gcode")).await;
        rig.wait_numbered(1_000).await;
        rig.fake.unplug().await;
        let reason = failed_reason(rig.next_event(WAIT).await, "u");
        assert!(reason.contains("disconnect"), "{reason}");
        let t = rig
            .telemetry_until(|t| t.connection == "disconnected")
            .await;
        assert!(t.last_error.is_some());
        // a Start while the port is gone fails at once
        let file = moves(rig.dir.path(), 10);
        rig.start("offline", &file).await;
        let reason = failed_reason(rig.next_event(WAIT).await, "offline");
        assert!(reason.contains("not connected"), "{reason}");
        let lines_before = rig.numbered().len();
        rig.fake.replug().await.expect("replug");
        rig.telemetry_until(|t| t.connection == "connected").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            rig.numbered().len(),
            lines_before,
            "the print was not restarted"
        );
        assert_eq!(rig.fake.stats().boots, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_fails_the_print_and_marks_the_printer_in_error() {
    bounded(async {
        let faults = Faults {
            kill_at: Some(300),
            ..Faults::default()
        };
        let mut rig = rig(FakeConfig {
            faults,
            ..FakeConfig::default()
        })
        .await;
        rig.start("k", &sample("cube.gcode")).await;
        let reason = failed_reason(rig.next_event(WAIT).await, "k");
        assert!(reason.contains("kill() called"), "{reason}");
        let t = rig.telemetry_until(|t| t.connection == "error").await;
        assert!(t.last_error.is_some_and(|e| e.contains("halted")));
        assert_eq!(rig.numbered().len(), 301);
        let file = moves(rig.dir.path(), 10);
        rig.start("after", &file).await;
        let reason = failed_reason(rig.next_event(WAIT).await, "after");
        assert!(reason.contains("halted"), "{reason}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file_fails_at_once_and_a_second_start_is_busy() {
    bounded(async {
        let mut rig = rig(FakeConfig::default()).await;
        let missing = rig.dir.path().join("nope.gcode");
        rig.start("m", &missing).await;
        let reason = failed_reason(rig.next_event(Duration::from_secs(2)).await, "m");
        assert!(
            reason.contains("nope.gcode") && reason.contains("No such file"),
            "{reason}"
        );
        rig.start("d", rig.dir.path()).await;
        let reason = failed_reason(rig.next_event(Duration::from_secs(2)).await, "d");
        assert!(reason.contains("not a regular file"), "{reason}");
        assert_eq!(rig.telemetry().state, "idle");
        rig.start("a", &sample("cube.gcode")).await;
        rig.wait_numbered(100).await;
        rig.start("b", &sample("cube.gcode")).await;
        let reason = failed_reason(rig.next_event(Duration::from_secs(2)).await, "b");
        assert_eq!(reason, "printer busy");
        assert_eq!(rig.telemetry().job_id.as_deref(), Some("a"));
        rig.send(DriverCommand::Cancel).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printer_actions_pause_resume_and_cancel() {
    bounded(async {
        let faults = Faults {
            actions: BTreeMap::from([(20, "pause".to_string())]),
            ..Faults::default()
        };
        let mut rig = rig(FakeConfig {
            faults,
            ..FakeConfig::default()
        })
        .await;
        let file = moves(rig.dir.path(), 200);
        rig.start("a", &file).await;
        rig.telemetry_until(|t| t.state == "paused").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rig.numbered().len(), 21, "the feed stopped after line 20");
        rig.fake.say("//action:resume").await;
        assert_eq!(rig.next_event(WAIT).await, finished("a"));
        assert_eq!(rig.numbered(), expected(&file));

        let faults = Faults {
            actions: BTreeMap::from([(30, "cancel".to_string())]),
            ..Faults::default()
        };
        let mut rig = rig_with(faults).await;
        let file = moves(rig.dir.path(), 200);
        rig.start("b", &file).await;
        assert_eq!(
            rig.next_event(WAIT).await,
            DriverEvent::CanceledByPrinter {
                job_id: "b".into(),
                attempt: 1
            }
        );
        let ok = rig
            .fake
            .wait_for(WAIT, |ex, _| ex.iter().any(|e| e.command == "M84"))
            .await;
        assert!(ok, "the printer is left safe");
        assert!(rig.numbered().len() <= 33);
    })
    .await;
}

async fn rig_with(faults: Faults) -> Rig {
    rig(FakeConfig {
        faults,
        ..FakeConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_restart_and_silence_fail_the_print() {
    bounded(async {
        let mut rig = rig_with(Faults {
            restart_at: Some(40),
            ..Faults::default()
        })
        .await;
        let file = moves(rig.dir.path(), 200);
        rig.start("r", &file).await;
        let reason = failed_reason(rig.next_event(WAIT).await, "r");
        assert!(reason.contains("restarted"), "{reason}");
        rig.telemetry_until(|t| t.connection == "connected").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rig.numbered().len(), 40, "nothing resent after the restart");

        let mut rig = rig_with(Faults {
            silent_from: Some(40),
            ..Faults::default()
        })
        .await;
        let file = moves(rig.dir.path(), 200);
        rig.start("s", &file).await;
        let reason = failed_reason(rig.next_event(WAIT).await, "s");
        assert!(
            reason.contains("no answer") && reason.contains("disconnected"),
            "{reason}"
        );
        assert!(
            rig.fake.wait_for(WAIT, |_, s| s.boots >= 2).await,
            "port reopened, board reset"
        );
        rig.telemetry_until(|t| t.connection == "connected").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_autoreport_temperatures_are_polled_while_idle() {
    bounded(async {
        // a poll on every tick: Starts land while a poll's `ok` is still due
        let opts = DriverOptions {
            temperature_interval: Duration::from_millis(1),
            ..options()
        };
        let mut rig = rig_opts(
            FakeConfig {
                autoreport_temp: false,
                ..FakeConfig::default()
            },
            opts,
        )
        .await;
        let t = rig
            .telemetry_until(|t| t.hotend.is_some() && t.bed.is_some())
            .await;
        assert_eq!(t.hotend, Some(25.0));
        assert!(!rig
            .fake
            .executed()
            .iter()
            .any(|e| e.command.starts_with("M155")));
        for round in 0..5 {
            tokio::time::sleep(Duration::from_millis(30 + round * 7)).await;
            let file = moves(rig.dir.path(), 20 + round as usize);
            rig.start("poll", &file).await;
            assert_eq!(rig.next_event(WAIT).await, finished("poll"));
            let executed = rig.fake.executed();
            let last_job = executed
                .iter()
                .rposition(|e| e.command == "M110 N0")
                .unwrap_or(0);
            let job: Vec<_> = executed
                .iter()
                .skip(last_job)
                .filter(|e| e.line.is_some())
                .cloned()
                .collect();
            assert_eq!(numbered(&job), expected(&file), "round {round}");
        }
        let polls = rig
            .fake
            .executed()
            .iter()
            .filter(|e| e.command == "M105")
            .count();
        assert!(polls >= 5, "temperatures were polled: {polls}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bom_crlf_and_missing_final_newline_stream_every_command_once() {
    bounded(async {
        let mut rig = rig(FakeConfig::default()).await;
        let path = rig.dir.path().join("windows.gcode");
        let mut body = String::from("\u{feff}; exported on Windows\r\nG28 ; home\r\n\r\n");
        body.extend((0..40).map(|i| format!("G1 X{i} Y{i}\r\n")));
        body.push_str("M104 S0"); // no final newline: still sent
        std::fs::write(&path, &body).expect("write");
        rig.start("w", &path).await;
        assert_eq!(rig.next_event(WAIT).await, finished("w"));
        let sent = rig.numbered();
        assert_eq!(sent, expected(&path));
        assert_eq!(sent.get(1).map(String::as_str), Some("G28"));
        assert_eq!(
            sent.get(sent.len() - 2).map(String::as_str),
            Some("M104 S0")
        );
        let t = rig.telemetry_until(|t| t.state == "idle").await;
        assert_eq!(
            (t.bytes_sent, t.bytes_total),
            (body.len() as u64, body.len() as u64)
        );
    })
    .await;
}
