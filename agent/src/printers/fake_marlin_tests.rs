use super::*;
use crate::printers::codec::{
    clean_line, frame, parse_line, Event, FailReason, LineAssembler, Sender, SenderConfig, Status,
};
use std::collections::{BTreeMap, BTreeSet};

fn text(fake: &mut FakeMarlin) -> String {
    String::from_utf8_lossy(&fake.take_output()).into_owned()
}
fn send(fake: &mut FakeMarlin, bytes: &str, now: u64) -> String {
    fake.receive(bytes.as_bytes(), now);
    text(fake)
}
fn framed(n: u64, cmd: &str) -> String {
    frame(n, cmd)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .expect("frame")
}
fn booted(cfg: FakeConfig) -> FakeMarlin {
    let mut fake = FakeMarlin::new(cfg, 0);
    fake.take_output();
    fake
}

#[test]
fn boot_banner_line_assembly_and_comments() {
    let mut fake = FakeMarlin::new(
        FakeConfig {
            boot_garbage: vec![0xff, 0x00],
            ..FakeConfig::default()
        },
        0,
    );
    assert!(text(&mut fake).starts_with("\u{fffd}\0start\necho:Marlin"));
    assert_eq!(
        send(&mut fake, "\n\r\n; just a comment\n   \n", 0),
        "",
        "no ok for empty lines"
    );
    assert_eq!(send(&mut fake, "G1 X1 ; move\rG1 X2\r", 0), "ok\nok\n");
    assert_eq!(send(&mut fake, "G1 X", 0), "");
    assert_eq!(send(&mut fake, "3\n", 0), "ok\n");
    let cmds: Vec<&str> = fake.executed().iter().map(|e| e.command.as_str()).collect();
    assert_eq!(cmds, ["G1 X1", "G1 X2", "G1 X3"]);
}

#[test]
fn numbered_lines_are_checked_and_errors_flush_in_flight_lines() {
    let mut fake = booted(FakeConfig::default());
    assert_eq!(send(&mut fake, &framed(0, "M110 N0"), 0), "ok\n");
    assert_eq!(send(&mut fake, &framed(1, "G28"), 0), "");
    fake.tick(1_500);
    assert_eq!(text(&mut fake), "ok\n");
    let wrong_seq = framed(3, "G1 X1");
    assert_eq!(
        send(&mut fake, &wrong_seq, 2_000),
        format!("Error:{ERR_LINE_NO}1\nResend: 2\nok\n")
    );
    let bad_cs = format!("N2 G1 X1*{}\n", checksum(b"N2 G1 X1") ^ 1) + &framed(3, "G1 X2");
    assert_eq!(
        send(&mut fake, &bad_cs, 2_000),
        format!("Error:{ERR_CHECKSUM}1\nResend: 2\nok\n")
    );
    assert_eq!(
        send(&mut fake, "N2 G1 X1\n", 2_000),
        format!("Error:{ERR_NO_CHECKSUM}1\nResend: 2\nok\n")
    );
    let long = format!("N2 M117 {}", "x".repeat(95));
    let truncated = format!("{long}*{}\n", checksum(long.as_bytes()));
    assert!(send(&mut fake, &truncated, 2_000).starts_with("Error:"));
    let comment_eats_checksum = "N2 G1 X1 ;c*12\n";
    assert!(send(&mut fake, comment_eats_checksum, 2_000).starts_with("Error:No Checksum"));
    assert_eq!(
        send(
            &mut fake,
            &(framed(2, "G1 X1") + &framed(3, "G1 X2")),
            2_000
        ),
        "ok\nok\n"
    );
    assert_eq!(fake.last_line(), 3);
    let lines: Vec<Option<u64>> = fake.executed().iter().map(|e| e.line).collect();
    assert_eq!(lines, [Some(0), Some(1), Some(2), Some(3)]);
}

#[test]
fn replies_to_status_commands() {
    let mut fake = booted(FakeConfig {
        advanced_ok: true,
        ..FakeConfig::default()
    });
    assert_eq!(
        send(&mut fake, "M105\n", 0),
        "ok T:25.0 /0.0 B:25.0 /0.0 @:0 B@:0\n"
    );
    let m115 = send(&mut fake, "M115\n", 0);
    let events: Vec<Event> = m115.lines().flat_map(parse_line).collect();
    assert!(
        matches!(&events[0], Event::Firmware { name: Some(n), .. } if n == "Marlin 2.1.2.1 (fake)")
    );
    assert!(events.contains(&Event::Firmware {
        name: None,
        caps: vec![("ADVANCED_OK".into(), true)]
    }));
    assert!(m115.ends_with("ok N0 P15 B3\n"));
    assert_eq!(
        send(&mut fake, "G1 X10 Y2.5\nM114\n", 0),
        "ok N0 P15 B2\nX:10.00 Y:2.50 Z:0.00 E:0.00 Count X:0 Y:0 Z:0\nok N0 P15 B3\n"
    );
    assert_eq!(
        send(&mut fake, "M27\n", 0),
        "Not SD printing\nok N0 P15 B3\n"
    );
    assert_eq!(send(&mut fake, "M400\n", 0), "ok N0 P15 B3\n");
    assert_eq!(send(&mut fake, &framed(7, "M110 N7"), 0), "ok N7 P15 B3\n");
    assert_eq!(
        send(&mut fake, "G999\n", 0),
        "echo:Unknown command: \"G999\"\nok N7 P15 B3\n"
    );
    assert_eq!(send(&mut fake, "M155 S2\n", 0), "ok N7 P15 B3\n");
    fake.tick(2_000);
    assert_eq!(text(&mut fake), " T:25.0 /0.0 B:25.0 /0.0 @:0 B@:0\n");
}

#[test]
fn heater_model_m108_and_kill() {
    let mut fake = booted(FakeConfig::default());
    assert_eq!(send(&mut fake, "M109 S200\n", 0), "");
    fake.tick(2_000);
    let out = text(&mut fake);
    assert!(
        out.contains("echo:busy: processing") && out.contains(" T:33.0 /200.0"),
        "{out}"
    );
    assert_eq!(
        send(&mut fake, "M108\n", 2_100),
        "ok\nok\n",
        "wait broken, then M108's own ok"
    );
    assert!(fake.temperatures().0 < 200.0);
    assert_eq!(send(&mut fake, "M190 S60\n", 3_000), "");
    fake.tick(40_000);
    assert!(text(&mut fake).ends_with("ok\n"));
    assert!(fake.temperatures().1 >= 59.0);
    assert_eq!(
        send(&mut fake, "M112\nM105\n", 40_000),
        "Error:Printer halted. kill() called!\n"
    );
    assert!(fake.is_halted());
    assert_eq!(send(&mut fake, "M105\n", 41_000), "");
}

#[test]
fn personalities() {
    let mut k = booted(FakeConfig {
        personality: Personality::Klipper,
        ..FakeConfig::default()
    });
    assert_eq!(
        send(&mut k, "\nN5 G1 X1*0\r\nM105\nFOO\n", 0),
        "ok\nok\nok B:25.0 /0.0 T0:25.0 /0.0\n// Unknown command:\"FOO\"\nok\n"
    );
    let mut s = booted(FakeConfig {
        personality: Personality::SilentDrop,
        ..FakeConfig::default()
    });
    assert_eq!(
        send(&mut s, "N1 G1 X1*0\n", 0),
        "",
        "bad checksum: no answer"
    );
    assert!(send(&mut s, &framed(2, "G1"), 0).starts_with("Error:Line Number"));
}

#[test]
fn overflowing_the_receive_buffer_loses_bytes() {
    let mut fake = booted(FakeConfig {
        rx_capacity: 64,
        ..FakeConfig::default()
    });
    send(&mut fake, "G4 S5\n", 0);
    let burst: String = (0..10).map(|i| format!("G1 X{i} Y{i} Z{i}\n")).collect();
    assert_eq!(send(&mut fake, &burst, 10), "");
    assert!(fake.overflowed() > 0);
    fake.tick(6_000);
    assert!(fake.executed().len() < 11);
}

/// Sender ↔ fake, pure loop; time advances 100 ms whenever both sides are quiet.
struct Rig {
    sender: Sender,
    fake: FakeMarlin,
    asm: LineAssembler,
    input: std::vec::IntoIter<String>,
    now: u64,
    one_at_a_time: bool,
    resends: usize,
    max_in_flight: u64,
}

impl Rig {
    fn new(lines: Vec<String>, scfg: SenderConfig, fcfg: FakeConfig) -> Rig {
        let fake = FakeMarlin::new(fcfg, 0);
        let mut rig = Rig {
            sender: Sender::new(scfg),
            fake,
            asm: LineAssembler::default(),
            input: lines.into_iter(),
            now: 0,
            one_at_a_time: false,
            resends: 0,
            max_in_flight: 0,
        };
        rig.deliver(); // boot banner
        rig
    }
    fn deliver(&mut self) -> bool {
        let out = self.fake.take_output();
        for line in self.asm.push(&out) {
            for ev in parse_line(&line) {
                self.resends += usize::from(matches!(ev, Event::Resend(_)));
                self.sender.on_event(&ev);
            }
        }
        !out.is_empty()
    }
    fn run(&mut self, max_ms: u64) -> &Status {
        let (end, mut spins) = (self.now + max_ms, 0);
        while self.now < end {
            while self.sender.wants_command() {
                match self.input.next() {
                    Some(line) => {
                        self.sender.next_command(line).expect("clean input");
                    }
                    None => self.sender.end_of_input(),
                }
            }
            spins += 1;
            assert!(spins < 2_000_000, "the loop makes no progress in time");
            let (mut chunk, mut sent) = (Vec::new(), false);
            while let Some(bytes) = self.sender.poll_transmit() {
                sent = true;
                self.max_in_flight = self.max_in_flight.max(self.sender.in_flight());
                if self.one_at_a_time {
                    self.fake.receive(&bytes, self.now);
                } else {
                    chunk.extend(bytes);
                }
            }
            self.fake.receive(&chunk, self.now);
            let heard = self.deliver();
            if heard || sent {
                continue;
            }
            if self.sender.status() != &Status::Streaming {
                break;
            }
            self.now += 100;
            self.fake.tick(self.now);
            self.sender.on_tick(self.now);
        }
        self.sender.status()
    }
    /// Numbered commands the fake executed, checked to be lines 0, 1, 2, ... in order.
    fn numbered(&self) -> Vec<&str> {
        let numbered: Vec<&Executed> = self
            .fake
            .executed()
            .iter()
            .filter(|e| e.line.is_some())
            .collect();
        for (i, e) in numbered.iter().enumerate() {
            assert_eq!(
                e.line,
                Some(i as u64),
                "executed out of order or twice: {e:?}"
            );
        }
        numbered.iter().map(|e| e.command.as_str()).collect()
    }
}

fn cube() -> Vec<String> {
    // shared/ sits beside the repository (or the scratch folder) that holds this crate
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/gcode/cube.gcode");
    let text = std::fs::read_to_string(path).expect("samples/gcode/cube.gcode");
    text.lines().map(String::from).collect()
}
fn expected(lines: &[String]) -> Vec<String> {
    let body = lines.iter().filter_map(|l| clean_line(l).expect("clean"));
    std::iter::once("M110 N0".to_string())
        .chain(body)
        .chain(std::iter::once("M400".to_string()))
        .collect()
}
fn small() -> Vec<String> {
    (0..40)
        .map(|i| format!("G1 X{i} Y{} ; move {i}", i * 2))
        .collect()
}

fn assert_streams_exactly_once(
    lines: Vec<String>,
    scfg: SenderConfig,
    fcfg: FakeConfig,
    one_at_a_time: bool,
) -> Rig {
    let want = expected(&lines);
    let mut rig = Rig::new(lines, scfg, fcfg);
    rig.one_at_a_time = one_at_a_time;
    assert_eq!(rig.run(3_600_000), &Status::Finished);
    assert_eq!(rig.numbered(), want);
    let unnumbered = rig.fake.executed().iter().filter(|e| e.line.is_none());
    assert!(
        unnumbered.clone().all(|e| e.command == "M105"),
        "{:?}",
        unnumbered.collect::<Vec<_>>()
    );
    rig
}

fn cube_faults() -> Faults {
    Faults {
        corrupt: BTreeMap::from([(100, 2), (5_000, 1)]),
        drop_ok: BTreeSet::from([200]),
        resend_without_ok: BTreeSet::from([300]),
        double_ok: BTreeSet::from([400, 401]),
        busy: BTreeMap::from([(500, 60_000)]),
        ..Faults::default()
    }
}

#[test]
fn cube_streams_exactly_once_through_injected_faults() {
    let rig = assert_streams_exactly_once(
        cube(),
        SenderConfig::default(),
        FakeConfig {
            faults: cube_faults(),
            ..FakeConfig::default()
        },
        false,
    );
    assert_eq!(rig.sender.in_flight(), 0);
    let probes = rig
        .fake
        .executed()
        .iter()
        .filter(|e| e.line.is_none())
        .count();
    assert_eq!(probes, 1, "one M105 probe for the dropped ok");
    assert_eq!(rig.resends, 4);
    assert_eq!(rig.max_in_flight, 1);
}

#[test]
fn cube_streams_windowed_with_advanced_ok_and_stale_resends() {
    for one_at_a_time in [false, true] {
        let fcfg = FakeConfig {
            advanced_ok: true,
            bufsize: 8,
            faults: cube_faults(),
            ..FakeConfig::default()
        };
        let scfg = SenderConfig {
            window: 4,
            ..SenderConfig::default()
        };
        let rig = assert_streams_exactly_once(cube(), scfg, fcfg, one_at_a_time);
        assert!(rig.sender.advanced_ok());
        assert!(rig.max_in_flight >= 3, "window used: {}", rig.max_in_flight);
        assert!(
            rig.fake.executed().iter().all(|e| e.line.is_some()),
            "no probe needed"
        );
        assert!(
            rig.resends > if one_at_a_time { 4 } else { 3 },
            "stale requests seen: {}",
            rig.resends
        );
    }
}

#[test]
fn klipper_and_silent_drop_personalities_stream_exactly_once() {
    let klipper = FakeConfig {
        personality: Personality::Klipper,
        ..FakeConfig::default()
    };
    assert_streams_exactly_once(small(), SenderConfig::default(), klipper, false);
    let faults = Faults {
        corrupt: BTreeMap::from([(10, 1)]),
        ..Faults::default()
    };
    let silent = FakeConfig {
        personality: Personality::SilentDrop,
        faults,
        ..FakeConfig::default()
    };
    let rig = assert_streams_exactly_once(small(), SenderConfig::default(), silent, false);
    assert!(rig.now >= 30_000, "recovered through the M105 probe");
}

#[test]
fn wait_recovers_a_dropped_ok_and_actions_pause_the_stream() {
    let faults = Faults {
        drop_ok: BTreeSet::from([5]),
        ..Faults::default()
    };
    let fcfg = FakeConfig {
        wait_when_idle_ms: Some(1_000),
        faults,
        ..FakeConfig::default()
    };
    let rig = assert_streams_exactly_once(small(), SenderConfig::default(), fcfg, false);
    assert!(rig.now < 30_000);
    let faults = Faults {
        actions: BTreeMap::from([(3, "pause".into())]),
        ..Faults::default()
    };
    let mut rig = Rig::new(
        small(),
        SenderConfig::default(),
        FakeConfig {
            faults,
            ..FakeConfig::default()
        },
    );
    assert_eq!(rig.run(60_000), &Status::Streaming);
    assert!(rig.sender.is_paused());
    assert_eq!(rig.numbered().len(), 4);
    rig.sender
        .on_event(&Event::Action(crate::printers::codec::Action::Resume));
    assert_eq!(rig.run(60_000), &Status::Finished);
    assert_eq!(rig.numbered(), expected(&small()));
}

fn failing(faults: Faults) -> (FailReason, Rig) {
    let mut rig = Rig::new(
        small(),
        SenderConfig {
            history: 16,
            ..SenderConfig::default()
        },
        FakeConfig {
            faults,
            ..FakeConfig::default()
        },
    );
    match rig.run(3_600_000).clone() {
        Status::Failed(reason) => (reason, rig),
        other => panic!("expected failure, got {other:?}"),
    }
}

#[test]
fn failure_cases_stop_cleanly() {
    let (why, _) = failing(Faults {
        restart_at: Some(12),
        ..Faults::default()
    });
    assert_eq!(why, FailReason::FirmwareRestarted);
    let (why, rig) = failing(Faults {
        kill_at: Some(12),
        ..Faults::default()
    });
    assert_eq!(
        why,
        FailReason::Fatal("Printer halted. kill() called!".into())
    );
    assert!(rig.fake.is_halted());
    let (why, rig) = failing(Faults {
        silent_from: Some(12),
        ..Faults::default()
    });
    assert_eq!(why, FailReason::Timeout { probes: 3 });
    assert!(rig.now >= 120_000);
    let (why, _) = failing(Faults {
        bogus_resend: BTreeMap::from([(30, 2)]),
        ..Faults::default()
    });
    assert!(
        matches!(why, FailReason::ResendUnavailable { line: 2, .. }),
        "{why:?}"
    );
    let (why, _) = failing(Faults {
        bogus_resend: BTreeMap::from([(30, 90)]),
        ..Faults::default()
    });
    assert!(
        matches!(why, FailReason::ResendNotSent { line: 90, .. }),
        "{why:?}"
    );
    let (why, _) = failing(Faults {
        corrupt: BTreeMap::from([(7, 11)]),
        ..Faults::default()
    });
    assert_eq!(why, FailReason::TooManyResends { line: 7, count: 11 });
    let (why, _) = failing(Faults {
        actions: BTreeMap::from([(7, "cancel".into())]),
        ..Faults::default()
    });
    assert_eq!(why, FailReason::CancelledByPrinter);
    let faults = Faults {
        corrupt: BTreeMap::from([(7, 10)]),
        ..Faults::default()
    };
    assert_streams_exactly_once(
        small(),
        SenderConfig::default(),
        FakeConfig {
            faults,
            ..FakeConfig::default()
        },
        false,
    );
}

#[test]
fn klipper_errors_are_fatal() {
    let faults = Faults {
        kill_at: Some(9),
        ..Faults::default()
    };
    let fcfg = FakeConfig {
        personality: Personality::Klipper,
        faults,
        ..FakeConfig::default()
    };
    let mut rig = Rig::new(small(), SenderConfig::default(), fcfg);
    assert!(
        matches!(rig.run(600_000), Status::Failed(FailReason::Fatal(m)) if m.starts_with("Shutdown"))
    );
}

#[test]
fn cancel_mid_heat_up_breaks_the_wait() {
    let lines = vec!["M109 S200".to_string(), "G1 X1".to_string()];
    let mut rig = Rig::new(lines, SenderConfig::default(), FakeConfig::default());
    assert_eq!(rig.run(5_000), &Status::Streaming);
    rig.sender.cancel();
    assert_eq!(rig.run(5_000), &Status::Failed(FailReason::Cancelled));
    let tail: Vec<&str> = rig
        .fake
        .executed()
        .iter()
        .skip(2)
        .map(|e| e.command.as_str())
        .collect();
    assert_eq!(
        tail,
        ["M108", "M410", "M104 S0", "M140 S0", "M106 S0", "M84"]
    );
    assert!(rig.fake.temperatures().0 < 100.0);
}
