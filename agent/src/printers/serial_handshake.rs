//! The connection handshake of a serial printer as a pure state machine: wait for the boot
//! banner, identify with `M115` (retried), enable temperature auto-report with `M155` when the
//! firmware offers it, and notice reboots and halts. Printer events and `Instant`s come in,
//! lines to send come out; no I/O, no clock reads.

use super::codec::Event;
use super::DriverOptions;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdStep {
    M115,
    M155,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the boot banner until `deadline`; identification follows once `start` was
    /// seen and the line has been quiet for `banner_settle`.
    Banner {
        deadline: Instant,
        seen_start: bool,
    },
    Identify {
        step: IdStep,
        sent_at: Instant,
        attempts: u32,
    },
    Ready,
    /// The firmware halted (kill, thermal runaway): nothing is sent until it reboots.
    Halted,
}

/// What the firmware said it can do (`Cap:` lines of the `M115` answer).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Caps {
    pub autoreport_temp: bool,
    pub advanced_ok: bool,
}

/// What the session must do after feeding the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Nothing,
    /// Write this (unnumbered) line.
    Send(String),
    /// Identification complete: the printer takes jobs now.
    Ready,
    /// The printer rebooted: forget what was known about it.
    Rebooted,
    /// Give up on this port.
    Lost(String),
}

#[derive(Debug, Clone)]
pub(super) struct Handshake {
    phase: Phase,
    caps: Caps,
    banner_timeout: Duration,
    banner_settle: Duration,
    timeout: Duration,
    attempts: u32,
    report_secs: u64,
}

impl Handshake {
    pub fn new(o: &DriverOptions, now: Instant) -> Handshake {
        Handshake {
            phase: Phase::Banner {
                deadline: now + o.banner_timeout,
                seen_start: false,
            },
            caps: Caps::default(),
            banner_timeout: o.banner_timeout,
            banner_settle: o.banner_settle,
            timeout: o.handshake_timeout,
            attempts: o.handshake_attempts.max(1),
            report_secs: o.temperature_interval.as_secs().max(1),
        }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }
    pub fn is_halted(&self) -> bool {
        self.phase == Phase::Halted
    }

    /// The firmware reported a fatal error: wait for it to be reset (`start`).
    pub fn halt(&mut self) {
        self.phase = Phase::Halted;
    }

    /// The firmware printed `start` (rebooted): identify it again.
    pub fn reboot(&mut self, now: Instant) {
        self.phase = Phase::Banner {
            deadline: now + self.banner_timeout,
            seen_start: true,
        };
        self.caps = Caps::default();
    }

    /// Feed one printer event. Capabilities are recorded in any phase.
    pub fn on_event(&mut self, ev: &Event, now: Instant) -> Step {
        if let Event::Firmware { caps, .. } = ev {
            for (cap, on) in caps {
                match cap.as_str() {
                    "AUTOREPORT_TEMP" => self.caps.autoreport_temp = *on,
                    "ADVANCED_OK" => self.caps.advanced_ok = *on,
                    _ => {}
                }
            }
        }
        match (self.phase, ev) {
            (Phase::Banner { deadline, .. }, Event::Start) => {
                self.phase = Phase::Banner {
                    deadline,
                    seen_start: true,
                };
                Step::Nothing
            }
            (Phase::Identify { .. } | Phase::Halted, Event::Start) => {
                self.reboot(now);
                Step::Rebooted
            }
            (Phase::Identify { step, .. }, Event::Ok { .. }) => self.identified(step, now),
            _ => Step::Nothing,
        }
    }

    /// Advance time; `last_line_at` is when the printer last printed anything.
    pub fn on_tick(&mut self, now: Instant, last_line_at: Instant) -> Step {
        match self.phase {
            Phase::Banner {
                deadline,
                seen_start,
            } => {
                let settled =
                    seen_start && now.saturating_duration_since(last_line_at) >= self.banner_settle;
                if !settled && now < deadline {
                    return Step::Nothing;
                }
                self.phase = Phase::Identify {
                    step: IdStep::M115,
                    sent_at: now,
                    attempts: 1,
                };
                Step::Send("M115".into())
            }
            Phase::Identify {
                step,
                sent_at,
                attempts,
            } if now.saturating_duration_since(sent_at) >= self.timeout => {
                match step {
                    IdStep::M155 => {
                        self.caps.autoreport_temp = false; // poll with M105 instead
                        self.identified(step, now)
                    }
                    IdStep::M115 if attempts < self.attempts => {
                        self.phase = Phase::Identify {
                            step,
                            sent_at: now,
                            attempts: attempts + 1,
                        };
                        Step::Send("M115".into())
                    }
                    IdStep::M115 => Step::Lost(format!(
                        "no answer to M115 after {attempts} attempts (wrong baud rate?)"
                    )),
                }
            }
            _ => Step::Nothing,
        }
    }

    fn identified(&mut self, step: IdStep, now: Instant) -> Step {
        if step == IdStep::M115 && self.caps.autoreport_temp {
            self.phase = Phase::Identify {
                step: IdStep::M155,
                sent_at: now,
                attempts: 1,
            };
            return Step::Send(format!("M155 S{}", self.report_secs));
        }
        self.phase = Phase::Ready;
        Step::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Event {
        Event::Ok {
            line: None,
            planner_free: None,
            buffer_free: None,
        }
    }
    fn cap(name: &str, on: bool) -> Event {
        Event::Firmware {
            name: None,
            caps: vec![(name.into(), on)],
        }
    }

    #[test]
    fn banner_then_m115_then_m155() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut h = Handshake::new(&DriverOptions::default(), t0);
        assert_eq!(h.on_event(&Event::Start, ms(100)), Step::Nothing);
        assert_eq!(
            h.on_tick(ms(200), ms(100)),
            Step::Nothing,
            "banner still settling"
        );
        assert_eq!(h.on_tick(ms(400), ms(100)), Step::Send("M115".into()));
        h.on_event(&cap("AUTOREPORT_TEMP", true), ms(410));
        h.on_event(&cap("ADVANCED_OK", false), ms(410));
        assert_eq!(h.on_event(&ok(), ms(420)), Step::Send("M155 S2".into()));
        assert_eq!(h.on_event(&ok(), ms(430)), Step::Ready);
        assert!(
            h.is_ready()
                && h.caps()
                    == Caps {
                        autoreport_temp: true,
                        advanced_ok: false
                    }
        );
    }

    #[test]
    fn no_banner_retries_then_gives_up() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut h = Handshake::new(&DriverOptions::default(), t0);
        assert_eq!(h.on_tick(s(3), t0), Step::Nothing);
        assert_eq!(
            h.on_tick(s(4), t0),
            Step::Send("M115".into()),
            "no banner: identify anyway"
        );
        assert_eq!(h.on_tick(s(9), t0), Step::Send("M115".into()));
        assert_eq!(h.on_tick(s(14), t0), Step::Send("M115".into()));
        assert!(matches!(h.on_tick(s(19), t0), Step::Lost(m) if m.contains("M115")));
    }

    #[test]
    fn unanswered_m155_falls_back_to_polling_and_reboots_restart() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut h = Handshake::new(&DriverOptions::default(), t0);
        h.on_tick(s(4), t0);
        h.on_event(&cap("AUTOREPORT_TEMP", true), s(4));
        assert!(matches!(h.on_event(&ok(), s(4)), Step::Send(_)));
        assert_eq!(h.on_tick(s(10), t0), Step::Ready);
        assert!(!h.caps().autoreport_temp);
        h.halt();
        assert_eq!(h.on_event(&ok(), s(11)), Step::Nothing);
        assert_eq!(h.on_event(&Event::Start, s(12)), Step::Rebooted);
        assert!(!h.is_ready() && !h.is_halted());
    }
}
