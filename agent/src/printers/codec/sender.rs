//! The host side of one job as a pure state machine: numbering, the in-flight window, resends,
//! silence probes, pause, cancel and completion (`M400`). Part of `codec`: same rules, no I/O,
//! no clock (time comes in as `now_ms`), no panics.

use super::{clean_line, frame, Action, Event, LineError, CANCEL_SEQUENCE, LONG_COMMANDS};
use std::collections::VecDeque;
use thiserror::Error;

fn command_code(cmd: &str) -> Option<(char, u32)> {
    let word = cmd.split_whitespace().next()?;
    let mut chars = word.chars();
    let letter = chars.next()?.to_ascii_uppercase();
    Some((letter, chars.as_str().split('.').next()?.parse().ok()?))
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FailReason {
    #[error("the firmware restarted (`start`) mid-job: the print is lost")]
    FirmwareRestarted,
    #[error("fatal printer error: {0}")]
    Fatal(String),
    #[error("the printer requested line {line} {count} times in a row")]
    TooManyResends { line: u64, count: u32 },
    #[error("the printer requested line {line}, no longer kept (oldest kept: {oldest})")]
    ResendUnavailable { line: u64, oldest: u64 },
    #[error("the printer requested line {line}, never sent (next new line: {next})")]
    ResendNotSent { line: u64, next: u64 },
    #[error("no answer from the printer after {probes} M105 probes")]
    Timeout { probes: u32 },
    #[error("cancelled by the host")]
    Cancelled,
    #[error("the printer asked the host to cancel")]
    CancelledByPrinter,
    #[error("cannot frame a line: {0}")]
    Line(#[from] LineError),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Streaming,
    Finished,
    Failed(FailReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    /// Sent lines kept for resends.
    pub history: usize,
    /// Lines in flight once ADVANCED_OK has been seen (1 = one at a time, always used before).
    pub window: usize,
    /// Resends of the same line in a row before failing.
    pub max_resends: u32,
    /// Silence (no ok/busy/resend) before an `M105` probe.
    pub silence_timeout_ms: u64,
    /// Same, while a `LONG_COMMANDS` command is in flight.
    pub long_command_timeout_ms: u64,
    /// Unanswered probes before failing.
    pub max_probes: u32,
    /// How long to wait for the `ok` that normally follows `Resend:` (and, after a resend request
    /// taken as stale, how much silence makes it count as a real one).
    pub resend_ok_grace_ms: u64,
    /// Bytes in flight at most when windowed (Marlin's RX buffer is 128): a flush after a bad
    /// line then drops whole lines, never leaves a fragment that would run unnumbered.
    pub max_in_flight_bytes: usize,
    /// Cleaned commands buffered ahead (`wants_command`).
    pub lookahead: usize,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            history: 64,
            window: 1,
            max_resends: 10,
            silence_timeout_ms: 30_000,
            long_command_timeout_ms: 600_000,
            max_probes: 3,
            resend_ok_grace_ms: 1_000,
            max_in_flight_bytes: 127,
            lookahead: 8,
        }
    }
}

/// The host side of one job. Lines `< acked` are acknowledged, `< sent` transmitted in the current
/// pass, `< assigned` numbered; `history` holds lines `oldest..assigned`. `Sender::default()` is
/// `Sender::new(SenderConfig::default())`.
#[derive(Debug, Default)]
pub struct Sender {
    cfg: SenderConfig,
    status: Status,
    paused: bool,
    input_done: bool,
    pending: VecDeque<String>,
    urgent: VecDeque<Vec<u8>>,
    history: VecDeque<String>,
    oldest: u64,
    assigned: u64,
    sent: u64,
    acked: u64,
    final_line: Option<u64>,
    advanced: bool,
    buffer_free: Option<u32>,
    max_buffer_free: u32,
    expect_resend_ok: bool,
    resend_at: u64,
    resend_line: Option<u64>,
    resend_count: u32,
    stale_budget: u64,
    stale_swallowed: bool,
    now: u64,
    last_progress: u64,
    probes: u32,
    last_error: Option<String>,
}

impl Sender {
    /// A new job; its first line is `N0 M110 N0*125`.
    pub fn new(mut cfg: SenderConfig) -> Self {
        cfg.history = cfg.history.max(1);
        cfg.window = cfg.window.clamp(1, cfg.history);
        Sender {
            cfg,
            ..Sender::default()
        }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }
    pub fn is_paused(&self) -> bool {
        self.paused
    }
    pub fn pause(&mut self) {
        self.paused = true;
    }
    pub fn resume(&mut self) {
        self.paused = false;
    }
    /// Line numbers below this are acknowledged (`M110 N0` is line 0, the file's commands follow
    /// in order from line 1). Can step back when the printer asks for an acknowledged line again.
    pub fn acked(&self) -> u64 {
        self.acked
    }
    /// Numbered lines transmitted but not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.sent.saturating_sub(self.acked)
    }
    /// Whether the printer has shown ADVANCED_OK (`ok N.. P.. B..`).
    pub fn advanced_ok(&self) -> bool {
        self.advanced
    }
    /// The last non-fatal `Error:` text.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    /// True while the sender would take another command (read the file lazily).
    pub fn wants_command(&self) -> bool {
        self.status == Status::Streaming
            && !self.input_done
            && self.pending.len() < self.cfg.lookahead
    }

    /// Queue one raw file line. `Ok(false)`: nothing to send (blank, comment, or `M110`, which
    /// the sender owns). An error leaves the job running; the caller decides.
    pub fn next_command(&mut self, raw: String) -> Result<bool, LineError> {
        match clean_line(&raw)? {
            Some(cmd) if command_code(&cmd) != Some(('M', 110)) => {
                self.pending.push_back(cmd);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// End of file: once every line is acknowledged, `M400` goes out; its `ok` finishes the job.
    pub fn end_of_input(&mut self) {
        self.input_done = true;
    }

    /// Stop streaming and queue `CANCEL_SEQUENCE` (unnumbered) for `poll_transmit`.
    pub fn cancel(&mut self) {
        self.stop(FailReason::Cancelled);
        self.pending.clear();
        self.urgent.extend(
            CANCEL_SEQUENCE
                .iter()
                .map(|c| format!("{c}\n").into_bytes()),
        );
    }

    /// Next bytes to write (one line), if any may go out now.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if let Some(bytes) = self.urgent.pop_front() {
            return Some(bytes);
        }
        if self.status != Status::Streaming
            || self.expect_resend_ok
            || self.in_flight() >= self.window()
        {
            return None;
        }
        if self.sent == self.assigned {
            let cmd = if self.assigned == 0 {
                String::from("M110 N0") // every job starts by resetting the line numbers
            } else if self.paused {
                return None;
            } else if let Some(cmd) = self.pending.pop_front() {
                cmd
            } else if self.input_done && self.final_line.is_none() && self.acked == self.assigned {
                self.final_line = Some(self.assigned);
                String::from("M400")
            } else {
                return None;
            };
            self.history.push_back(cmd);
            self.assigned += 1;
            if self.history.len() > self.cfg.history {
                self.history.pop_front();
                self.oldest += 1;
            }
        }
        let framed = match self.line_cmd(self.sent).map(|cmd| frame(self.sent, cmd)) {
            Some(Ok(framed)) => framed,
            Some(Err(e)) => return self.fail(e.into()),
            None => {
                return self.fail(FailReason::ResendUnavailable {
                    line: self.sent,
                    oldest: self.oldest,
                });
            }
        };
        if self.in_flight() > 0
            && self.in_flight_bytes() + framed.len() > self.cfg.max_in_flight_bytes
        {
            return None;
        }
        if self.sent == self.acked {
            self.last_progress = self.now;
        }
        self.sent += 1;
        Some(framed)
    }

    /// Feed one parsed printer line.
    pub fn on_event(&mut self, ev: &Event) {
        if self.status != Status::Streaming {
            return;
        }
        match ev {
            Event::Ok {
                line, buffer_free, ..
            } => {
                self.progress();
                if let Some(b) = *buffer_free {
                    self.buffer_free = Some(b);
                    self.max_buffer_free = self.max_buffer_free.max(b);
                }
                self.advanced |= line.is_some();
                if std::mem::take(&mut self.expect_resend_ok) {
                    return; // the ok that belongs to the `Resend:`
                }
                match *line {
                    Some(n) => self.acked = self.acked.max(n.saturating_add(1).min(self.sent)),
                    None if self.sent > self.acked => self.acked += 1,
                    None => {} // stray ok: credit stays capped
                }
                self.after_ack();
            }
            Event::Wait => {
                self.progress();
                if !self.expect_resend_ok && self.sent > self.acked {
                    self.acked += 1;
                    self.after_ack();
                }
            }
            Event::Resend(r) => self.on_resend(*r),
            Event::Busy(_) => self.progress(),
            Event::Error(msg) => {
                self.progress();
                self.expect_resend_ok = false;
                self.last_error = Some(msg.clone());
            }
            Event::Fatal(msg) => {
                self.stop(FailReason::Fatal(msg.clone()));
            }
            Event::Start if self.assigned > 0 => {
                self.stop(FailReason::FirmwareRestarted);
            }
            Event::Action(Action::Pause) => self.paused = true,
            Event::Action(Action::Resume) => self.paused = false,
            Event::Action(Action::Cancel) => {
                self.stop(FailReason::CancelledByPrinter);
            }
            Event::Temperature { .. } if self.any_in_flight(|c| matches!(c, ('M', 109 | 190))) => {
                self.progress(); // heat-up reports: the wait is progressing
            }
            _ => {}
        }
    }

    /// Advance the clock: resend grace, silence probes (`M105`), timeout failure.
    pub fn on_tick(&mut self, now_ms: u64) {
        self.now = self.now.max(now_ms);
        if self.status != Status::Streaming {
            return;
        }
        if self.expect_resend_ok
            && self.now.saturating_sub(self.resend_at) >= self.cfg.resend_ok_grace_ms
        {
            self.expect_resend_ok = false; // `Resend` without its `ok`: replay anyway
        }
        let quiet = self.now.saturating_sub(self.last_progress) >= self.cfg.resend_ok_grace_ms;
        if let Some(r) = self
            .resend_line
            .filter(|_| self.stale_swallowed && quiet && self.sent > self.acked)
        {
            self.stale_budget = 0; // nothing followed the request taken as stale: it was real
            return self.rewind(r);
        }
        if self.sent == self.acked && !self.expect_resend_ok {
            self.last_progress = self.now;
            self.probes = 0;
            return;
        }
        let allowance = if self.any_in_flight(|c| LONG_COMMANDS.contains(&c)) {
            self.cfg.long_command_timeout_ms
        } else {
            self.cfg.silence_timeout_ms
        };
        if self.now.saturating_sub(self.last_progress) < allowance {
            return;
        }
        if self.probes >= self.cfg.max_probes {
            self.stop(FailReason::Timeout {
                probes: self.probes,
            });
            return;
        }
        self.urgent.push_back(b"M105\n".to_vec());
        self.probes += 1;
        self.last_progress = self.now;
    }

    fn on_resend(&mut self, requested: u64) {
        self.progress();
        // Until `M110 N0` is acknowledged the firmware still counts from its old numbering.
        let r = if self.acked == 0 { 0 } else { requested };
        if r > self.assigned {
            self.stop(FailReason::ResendNotSent {
                line: r,
                next: self.assigned,
            });
            return;
        }
        if r < self.oldest {
            self.stop(FailReason::ResendUnavailable {
                line: r,
                oldest: self.oldest,
            });
            return;
        }
        self.expect_resend_ok = true;
        self.resend_at = self.now;
        if self.resend_line == Some(r) && self.stale_budget > 0 {
            self.stale_budget -= 1; // caused by a line sent before we rewound: already replayed
            self.stale_swallowed = true;
            return;
        }
        self.rewind(r);
    }

    fn rewind(&mut self, r: u64) {
        if self.resend_line == Some(r) {
            self.resend_count += 1;
        } else {
            self.resend_line = Some(r);
            self.resend_count = 1;
        }
        if self.resend_count > self.cfg.max_resends {
            self.stop(FailReason::TooManyResends {
                line: r,
                count: self.resend_count,
            });
            return;
        }
        self.stale_budget = self.sent.saturating_sub(r).saturating_sub(1);
        self.stale_swallowed = false;
        self.sent = r;
        self.acked = r;
    }

    fn after_ack(&mut self) {
        if self.resend_line.is_some_and(|l| self.acked > l) {
            self.resend_line = None;
            self.resend_count = 0;
            self.stale_budget = 0;
            self.stale_swallowed = false;
        }
        // With ADVANCED_OK `N` is the last line *received*: also require an empty command queue.
        let drained = !self.advanced || self.buffer_free.unwrap_or(0) >= self.max_buffer_free;
        if self.final_line.is_some_and(|f| self.acked > f) && drained {
            self.status = Status::Finished;
        }
    }

    fn window(&self) -> u64 {
        let keep_one_free = |b: u32| (b.saturating_sub(1) as usize).clamp(1, self.cfg.window);
        let w = match self.buffer_free {
            Some(b) if self.advanced && self.cfg.window > 1 => keep_one_free(b),
            _ => 1,
        };
        w as u64
    }

    fn in_flight_bytes(&self) -> usize {
        let framed = |n| {
            self.line_cmd(n)
                .and_then(|c| frame(n, c).ok())
                .map_or(0, |f| f.len())
        };
        (self.acked..self.sent).map(framed).sum()
    }

    fn line_cmd(&self, n: u64) -> Option<&String> {
        let idx = usize::try_from(n.checked_sub(self.oldest)?).ok()?;
        self.history.get(idx)
    }

    fn any_in_flight(&self, pred: impl Fn((char, u32)) -> bool) -> bool {
        (self.acked..self.sent).any(|n| {
            self.line_cmd(n)
                .and_then(|c| command_code(c))
                .is_some_and(&pred)
        })
    }

    fn progress(&mut self) {
        self.last_progress = self.now;
        self.probes = 0;
    }

    fn fail<T>(&mut self, reason: FailReason) -> Option<T> {
        if self.status == Status::Streaming {
            self.status = Status::Failed(reason);
            self.pending.clear();
        }
        None
    }

    fn stop(&mut self, reason: FailReason) {
        self.fail::<()>(reason);
    }
}
