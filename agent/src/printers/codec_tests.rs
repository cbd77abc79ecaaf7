use super::*;

fn ok() -> Event {
    Event::Ok {
        line: None,
        planner_free: None,
        buffer_free: None,
    }
}
fn temp(h: f64, ht: Option<f64>, b: Option<f64>, bt: Option<f64>) -> Event {
    Event::Temperature {
        hotend: Some(h),
        hotend_target: ht,
        bed: b,
        bed_target: bt,
    }
}
fn tx(s: &mut Sender) -> Option<String> {
    s.poll_transmit()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[test]
fn checksum_vectors() {
    for (s, cs) in [
        ("N0 M110 N0", 125),
        ("N1 M105", 38),
        ("N1 M110", 34),
        ("N10 G92 X0 Y0 Z0 A0 B0", 107),
    ] {
        assert_eq!(checksum(s.as_bytes()), cs, "{s}");
    }
    assert_eq!(frame(0, "M110 N0"), Ok(b"N0 M110 N0*125\n".to_vec()));
    assert_eq!(
        frame(10, "G92 X0 Y0 Z0 A0 B0"),
        Ok(b"N10 G92 X0 Y0 Z0 A0 B0*107\n".to_vec())
    );
}

#[test]
fn framing_limit_counts_line_number_and_newline() {
    let cmd = "M117 ".to_string() + &"x".repeat(83); // "N1 " + 88 + "*cs\n"
    let fits = frame(1, &cmd).map(|f| f.len());
    assert!(matches!(fits, Ok(n) if n <= MAX_LINE_BYTES), "{fits:?}");
    assert!(matches!(
        frame(1_000_000, &cmd),
        Err(LineError::TooLong { max: 96, .. })
    ));
    assert!(matches!(
        frame(1, "G1 X1\u{a0}Y2"),
        Err(LineError::NonAscii { .. })
    ));
}

#[test]
fn clean_line_cases() {
    assert_eq!(clean_line("\u{feff}G28 ; home\r"), Ok(Some("G28".into())));
    assert_eq!(clean_line("  G1 X1\tY2  \r\n"), Ok(Some("G1 X1 Y2".into())));
    assert_eq!(clean_line("M104 S200"), Ok(Some("M104 S200".into()))); // no final newline
    for blank in [
        "",
        "   ",
        "\r",
        "; only a comment",
        "\u{feff}",
        "\u{feff};x",
    ] {
        assert_eq!(clean_line(blank), Ok(None), "{blank:?}");
    }
    assert_eq!(clean_line("G1 X1 ; température"), Ok(Some("G1 X1".into())));
    assert_eq!(
        clean_line("M117 caf\u{e9}"),
        Err(LineError::NonAscii {
            at: 8,
            ch: '\u{e9}'
        })
    );
    assert_eq!(
        clean_line("G1\u{1a}"),
        Err(LineError::Control { at: 2, byte: 0x1a })
    );
    let long = "G1 ".to_string() + &"X1 ".repeat(30);
    assert!(matches!(clean_line(&long), Err(LineError::TooLong { .. })));
    assert!(clean_line(&"X".repeat(MAX_COMMAND_LEN)).is_ok());
}

#[test]
fn parses_every_line_type() {
    let cases: Vec<(&str, Vec<Event>)> = vec![
        ("ok", vec![ok()]),
        (
            "ok N12 P15 B3",
            vec![Event::Ok {
                line: Some(12),
                planner_free: Some(15),
                buffer_free: Some(3),
            }],
        ),
        (
            "ok 7",
            vec![Event::Ok {
                line: Some(7),
                planner_free: None,
                buffer_free: None,
            }],
        ),
        (
            "ok T:210.0 /210.0 B:60.0 /60.0 @:127 B@:0",
            vec![ok(), temp(210.0, Some(210.0), Some(60.0), Some(60.0))],
        ),
        (
            " T:21.5 /0.0 B:20.0 /0.0 T0:21.5 /0.0 @:0 B@:0",
            vec![temp(21.5, Some(0.0), Some(20.0), Some(0.0))],
        ),
        ("T:22.1 E:0 W:?", vec![temp(22.1, None, None, None)]),
        (
            "ok B:60.0 /60.0 T0:200.0 /210.0",
            vec![ok(), temp(200.0, Some(210.0), Some(60.0), Some(60.0))],
        ),
        ("Resend: 5", vec![Event::Resend(5)]),
        ("Resend:6\r", vec![Event::Resend(6)]),
        ("rs 7", vec![Event::Resend(7)]),
        ("rs N8", vec![Event::Resend(8)]),
        (
            "echo:busy: processing",
            vec![Event::Busy("processing".into())],
        ),
        (
            "busy: paused for user",
            vec![Event::Busy("paused for user".into())],
        ),
        ("wait", vec![Event::Wait]),
        ("start", vec![Event::Start]),
        ("\u{fffd}\u{fffd}\0start", vec![Event::Start]),
        (
            "Error:checksum mismatch, Last Line: 4",
            vec![Event::Error("checksum mismatch, Last Line: 4".into())],
        ),
        (
            "Error:Printer halted. kill() called!",
            vec![Event::Fatal("Printer halted. kill() called!".into())],
        ),
        (
            "Error:Thermal Runaway, system stopped! Heater_ID: 0",
            vec![Event::Fatal(
                "Thermal Runaway, system stopped! Heater_ID: 0".into(),
            )],
        ),
        (
            "!! Move out of range: 0.000 0.000 500.000 [0.000]",
            vec![Event::Fatal(
                "Move out of range: 0.000 0.000 500.000 [0.000]".into(),
            )],
        ),
        ("//action:pause", vec![Event::Action(Action::Pause)]),
        ("//action:paused", vec![Event::Action(Action::Pause)]),
        ("//action:resume", vec![Event::Action(Action::Resume)]),
        ("//action:cancel", vec![Event::Action(Action::Cancel)]),
        (
            "//action:notification Hi",
            vec![Event::Action(Action::Other("notification Hi".into()))],
        ),
        (
            "FIRMWARE_NAME:Marlin 2.1.2 (Github) SOURCE_CODE_URL:https://x PROTOCOL_VERSION:1.0",
            vec![Event::Firmware {
                name: Some("Marlin 2.1.2 (Github)".into()),
                caps: vec![],
            }],
        ),
        (
            "Cap:AUTOREPORT_TEMP:1",
            vec![Event::Firmware {
                name: None,
                caps: vec![("AUTOREPORT_TEMP".into(), true)],
            }],
        ),
        (
            "Cap:EMERGENCY_PARSER:0",
            vec![Event::Firmware {
                name: None,
                caps: vec![("EMERGENCY_PARSER".into(), false)],
            }],
        ),
        (
            "ok FIRMWARE_NAME:Klipper FIRMWARE_VERSION:v0.12",
            vec![
                ok(),
                Event::Firmware {
                    name: Some("Klipper".into()),
                    caps: vec![],
                },
            ],
        ),
        (
            "echo:Unknown command: \"G999\"",
            vec![Event::Echo("Unknown command: \"G999\"".into())],
        ),
        (
            "// Klipper state: Ready",
            vec![Event::Echo("Klipper state: Ready".into())],
        ),
        (
            "X:0.00 Y:0.00 Z:0.00 E:0.00 Count X:0 Y:0 Z:0",
            vec![Event::Unknown(
                "X:0.00 Y:0.00 Z:0.00 E:0.00 Count X:0 Y:0 Z:0".into(),
            )],
        ),
        ("okay", vec![Event::Unknown("okay".into())]),
        ("   ", vec![]),
    ];
    for (line, want) in cases {
        assert_eq!(parse_line(line), want, "{line:?}");
    }
}

#[test]
fn line_assembler_handles_crlf_and_partial_lines() {
    let mut asm = LineAssembler::default();
    assert_eq!(
        asm.push(b"\xff\xfestart\r\nok\nT:2"),
        vec!["\u{fffd}\u{fffd}start", "ok"]
    );
    assert_eq!(asm.push(b"0.0 /0.0\n"), vec!["T:20.0 /0.0"]);
}

#[test]
fn one_line_in_flight_and_stray_ok_is_ignored() {
    let mut s = Sender::new(SenderConfig::default());
    for c in ["G28 ; home", "", "; c", "M110 N5", "G1 X1"] {
        s.next_command(c.into()).ok();
    }
    s.end_of_input();
    assert_eq!(tx(&mut s).as_deref(), Some("N0 M110 N0*125\n"));
    assert_eq!(tx(&mut s), None);
    s.on_event(&ok());
    s.on_event(&ok()); // stray: must not open a second slot
    assert!(tx(&mut s).is_some_and(|l| l.starts_with("N1 G28*")));
    assert_eq!(tx(&mut s), None);
    s.on_event(&Event::Wait); // idle printer while printing counts as ok
    assert!(tx(&mut s).is_some_and(|l| l.starts_with("N2 G1 X1*")));
    s.on_event(&ok());
    assert!(tx(&mut s).is_some_and(|l| l.starts_with("N3 M400*")));
    assert_eq!(s.status(), &Status::Streaming);
    s.on_event(&ok());
    assert_eq!(s.status(), &Status::Finished);
}

fn streamed(n: usize, cfg: SenderConfig) -> Sender {
    let mut s = Sender::new(cfg);
    for i in 0..n {
        s.next_command(format!("G1 X{i}")).ok();
        while tx(&mut s).is_some() {}
        s.on_event(&ok());
    }
    tx(&mut s); // lines 0..n acknowledged, line n in flight
    s
}

#[test]
fn resend_replays_and_swallows_its_ok() {
    let mut s = streamed(3, SenderConfig::default());
    s.on_event(&Event::Error("checksum mismatch, Last Line: 2".into()));
    s.on_event(&Event::Resend(3));
    assert_eq!(tx(&mut s), None, "wait for the ok that follows Resend");
    s.on_event(&ok());
    assert!(tx(&mut s).is_some_and(|l| l.starts_with("N3 G1 X2*")));
    // Resend without ok: replay after the grace period
    s.on_event(&Event::Resend(3));
    s.on_tick(500);
    assert_eq!(tx(&mut s), None);
    s.on_tick(1_600);
    assert!(tx(&mut s).is_some_and(|l| l.starts_with("N3 ")));
    assert_eq!(s.status(), &Status::Streaming);
}

#[test]
fn resend_failures() {
    let cfg = SenderConfig {
        history: 4,
        ..SenderConfig::default()
    };
    let mut s = streamed(10, cfg.clone());
    s.on_event(&Event::Resend(2));
    assert!(matches!(
        s.status(),
        Status::Failed(FailReason::ResendUnavailable { line: 2, .. })
    ));
    let mut s = streamed(10, cfg.clone());
    s.on_event(&Event::Resend(50));
    assert!(matches!(
        s.status(),
        Status::Failed(FailReason::ResendNotSent { line: 50, .. })
    ));
    let mut s = streamed(10, cfg);
    for _ in 0..10 {
        s.on_event(&Event::Resend(10));
        s.on_event(&ok());
        assert!(tx(&mut s).is_some());
    }
    s.on_event(&Event::Resend(10));
    assert!(matches!(
        s.status(),
        Status::Failed(FailReason::TooManyResends {
            line: 10,
            count: 11
        })
    ));
}

#[test]
fn fatal_start_and_cancel() {
    let mut s = Sender::new(SenderConfig::default());
    s.on_event(&Event::Start); // boot banner before the job: fine
    assert!(tx(&mut s).is_some());
    s.on_event(&Event::Start);
    assert_eq!(s.status(), &Status::Failed(FailReason::FirmwareRestarted));
    let mut s = streamed(2, SenderConfig::default());
    s.on_event(&Event::Fatal("Printer halted. kill() called!".into()));
    assert!(matches!(s.status(), Status::Failed(FailReason::Fatal(_))));
    let mut s = streamed(2, SenderConfig::default());
    s.cancel();
    let sent: Vec<String> = std::iter::from_fn(|| tx(&mut s)).collect();
    assert_eq!(
        sent,
        [
            "M108\n",
            "M410\n",
            "M104 S0\n",
            "M140 S0\n",
            "M106 S0\n",
            "M84\n"
        ]
    );
    assert_eq!(s.status(), &Status::Failed(FailReason::Cancelled));
}

#[test]
fn silence_probes_then_fails_and_long_commands_get_longer() {
    let mut s = streamed(1, SenderConfig::default());
    assert_eq!(s.in_flight(), 1);
    s.on_tick(29_999);
    assert_eq!(tx(&mut s), None);
    s.on_tick(30_000);
    assert_eq!(tx(&mut s).as_deref(), Some("M105\n"));
    s.on_event(&Event::Busy("processing".into())); // keep-alive resets the clock
    s.on_tick(59_000);
    assert_eq!(tx(&mut s), None);
    for t in [60_000, 90_000, 120_000] {
        s.on_tick(t);
        assert_eq!(tx(&mut s).as_deref(), Some("M105\n"));
    }
    s.on_tick(150_000);
    assert_eq!(
        s.status(),
        &Status::Failed(FailReason::Timeout { probes: 3 })
    );
    let mut s = streamed(0, SenderConfig::default());
    s.on_event(&ok());
    s.next_command("M109 S200".into()).ok();
    assert!(tx(&mut s).is_some());
    s.on_tick(300_000);
    assert_eq!(tx(&mut s), None);
    s.on_tick(600_000);
    assert_eq!(tx(&mut s).as_deref(), Some("M105\n"));
}

#[test]
fn advanced_ok_opens_a_window_keeping_a_slot_free() {
    let mut s = Sender::new(SenderConfig {
        window: 8,
        ..SenderConfig::default()
    });
    for i in 0..20 {
        s.next_command(format!("G1 X{i}")).ok();
    }
    assert!(tx(&mut s).is_some());
    s.on_event(&Event::Ok {
        line: Some(0),
        planner_free: Some(15),
        buffer_free: Some(4),
    });
    let burst: Vec<String> = std::iter::from_fn(|| tx(&mut s)).collect();
    assert_eq!(burst.len(), 3, "{burst:?}");
    s.on_event(&Event::Ok {
        line: Some(2),
        planner_free: Some(15),
        buffer_free: Some(3),
    });
    assert_eq!(s.in_flight(), 1);
    assert_eq!(std::iter::from_fn(|| tx(&mut s)).count(), 1);
}

mod fuzz {
    //! Random input for the codec: whatever bytes a printer sends and whatever lines a file
    //! holds, nothing panics, framed lines stay valid, and the default sender never has more
    //! than one command in flight.
    use super::*;
    use proptest::prelude::*;

    /// Lines a printer might send, mixed with noise.
    fn printer_line() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("ok".to_string()),
            (0u64..40).prop_map(|n| format!("ok N{n} P15 B3")),
            (0u64..40).prop_map(|n| format!("Resend: {n}")),
            (0u64..40).prop_map(|n| format!("rs {n}")),
            Just("echo:busy: processing".to_string()),
            Just("wait".to_string()),
            Just("start".to_string()),
            Just("Error:Printer halted. kill() called!".to_string()),
            Just("!! Move out of range".to_string()),
            Just("T:210.0 /210.0 B:60.0 /60.0 @:127 B@:0".to_string()),
            Just("//action:pause".to_string()),
            Just("Cap:AUTOREPORT_TEMP:1".to_string()),
            "\\PC{0,120}",
        ]
    }

    proptest! {
        #[test]
        fn any_bytes_from_the_printer_parse_without_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20)) {
            let mut a = LineAssembler::default();
            for c in &chunks {
                for line in a.push(c) {
                    let _ = parse_line(&line);
                }
            }
        }

        #[test]
        fn any_file_line_is_framed_valid_or_refused(raw in "\\PC{0,200}", n in 0u64..10_000_000) {
            if let Ok(Some(cmd)) = clean_line(&raw) {
                if let Ok(bytes) = frame(n, &cmd) {
                    prop_assert!(bytes.len() <= MAX_LINE_BYTES, "{} bytes", bytes.len());
                    prop_assert!(bytes.is_ascii());
                    prop_assert_eq!(bytes.last(), Some(&b'\n'));
                    let text = String::from_utf8_lossy(&bytes);
                    let star = text.rfind('*').expect("checksum separator");
                    let sum: u8 = text[star + 1..].trim_end().parse().expect("decimal checksum");
                    prop_assert_eq!(sum, checksum(&bytes[..star]));
                }
            }
        }

        #[test]
        fn the_sender_survives_any_printer_and_keeps_one_line_in_flight(
            lines in prop::collection::vec(printer_line(), 0..120),
            commands in 1usize..60,
        ) {
            let mut s = Sender::new(SenderConfig::default());
            let mut fed = 0;
            let mut now = 0;
            for l in &lines {
                while s.wants_command() && fed < commands {
                    let _ = s.next_command(format!("G1 X{fed} Y{fed}"));
                    fed += 1;
                }
                if fed == commands {
                    s.end_of_input();
                }
                while s.poll_transmit().is_some() {}
                prop_assert!(s.in_flight() <= 1, "{} in flight", s.in_flight());
                for ev in parse_line(l) {
                    s.on_event(&ev);
                }
                now += 700;
                s.on_tick(now);
            }
        }
    }
}
