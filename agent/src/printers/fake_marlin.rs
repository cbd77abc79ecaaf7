//! A pure fake of Marlin-style printer firmware for tests: bytes in, bytes out, time passed in.
//! Owns line assembly, numbering/checksum checks, simulated execution, a heater model, fault
//! injection and personalities. Must not do I/O, read a clock, sleep or spawn, and is no G-code
//! interpreter beyond what host-protocol tests need.

use super::codec::{checksum, MAX_LINE_BYTES};
use std::collections::VecDeque;

mod config;
pub use config::{Executed, FakeConfig, Faults, Personality};

const ERR_LINE_NO: &str = "Line Number is not Last Line Number+1, Last Line: ";
const ERR_CHECKSUM: &str = "checksum mismatch, Last Line: ";
const ERR_NO_CHECKSUM: &str = "No Checksum with line number, Last Line: ";
const AMBIENT: f64 = 25.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Until {
    Time(u64),
    Hotend,
    Bed,
}

#[derive(Debug, Clone, Copy)]
struct Running {
    line: Option<u64>,
    until: Until,
    user: bool,
    next_keepalive: u64,
    next_report: u64,
}

#[derive(Debug)]
pub struct FakeMarlin {
    cfg: FakeConfig,
    now: u64,
    out: Vec<u8>,
    rx: VecDeque<u8>,
    line_buf: Vec<u8>,
    in_comment: bool,
    ep_buf: Vec<u8>,
    last_n: u64,
    queue: VecDeque<(Option<u64>, String)>,
    running: Option<Running>,
    abort_wait: bool,
    /// hotend, hotend target, bed, bed target (°C; target 0 = off)
    temps: [f64; 4],
    autoreport_ms: u64,
    next_autoreport: u64,
    idle_since: u64,
    pos: [f64; 4],
    halted: bool,
    silent: bool,
    executed: Vec<Executed>,
    overflowed: u64,
}

fn number(s: &str) -> u64 {
    s.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// `N12 G1 X5*34` → `G1 X5` (also for unnumbered lines with a `*`).
fn strip_framing(line: &str) -> &str {
    let line = line.trim();
    let line = match line.strip_prefix('N') {
        Some(rest) => rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-'),
        None => line,
    };
    line.rsplit_once('*').map_or(line, |(cmd, _)| cmd).trim()
}

fn param(cmd: &str, letter: char) -> Option<f64> {
    cmd.split_whitespace()
        .skip(1)
        .find_map(|w| w.strip_prefix(letter)?.parse().ok())
}

fn code(cmd: &str) -> (char, u32) {
    let word = cmd.split_whitespace().next().unwrap_or_default();
    let mut chars = word.chars();
    let letter = chars.next().unwrap_or(' ').to_ascii_uppercase();
    (letter, chars.as_str().parse().unwrap_or(u32::MAX))
}

impl FakeMarlin {
    /// Power on at `now_ms`: garbage (if configured) and the boot banner are ready to read.
    pub fn new(cfg: FakeConfig, now_ms: u64) -> Self {
        let mut fake = FakeMarlin {
            cfg,
            now: now_ms,
            out: Vec::new(),
            rx: VecDeque::new(),
            line_buf: Vec::new(),
            in_comment: false,
            ep_buf: Vec::new(),
            last_n: 0,
            queue: VecDeque::new(),
            running: None,
            abort_wait: false,
            temps: [AMBIENT, 0.0, AMBIENT, 0.0],
            autoreport_ms: 0,
            next_autoreport: 0,
            idle_since: now_ms,
            pos: [0.0; 4],
            halted: false,
            silent: false,
            executed: Vec::new(),
            overflowed: 0,
        };
        fake.boot();
        fake
    }

    /// Bytes from the host arrive at `now_ms`.
    pub fn receive(&mut self, bytes: &[u8], now_ms: u64) {
        self.advance_clock(now_ms);
        for &b in bytes {
            if self.halted || self.silent {
                return;
            }
            self.emergency_parser(b);
            if self.rx.len() >= self.cfg.rx_capacity {
                self.pump();
            }
            if self.rx.len() < self.cfg.rx_capacity {
                self.rx.push_back(b);
            } else {
                self.overflowed += 1;
            }
        }
        self.pump();
    }

    /// Let simulated time pass (executions finish, heaters move, keep-alives and reports go out).
    pub fn tick(&mut self, now_ms: u64) {
        self.advance_clock(now_ms);
        self.pump();
    }

    /// Everything printed since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
    /// Commands executed so far, in order (numbered lines each exactly once when all went well).
    pub fn executed(&self) -> &[Executed] {
        &self.executed
    }
    /// Move the executed commands out (a long-running fake would otherwise grow without bound).
    pub fn take_executed(&mut self) -> Vec<Executed> {
        std::mem::take(&mut self.executed)
    }
    /// Print one line to the host, as the firmware would (e.g. `//action:cancel`). Nothing once
    /// halted or silent.
    pub fn say_line(&mut self, line: &str) {
        self.say(line);
    }
    pub fn last_line(&self) -> u64 {
        self.last_n
    }
    pub fn is_halted(&self) -> bool {
        self.halted
    }
    /// Hotend and bed temperatures (°C).
    pub fn temperatures(&self) -> (f64, f64) {
        (self.temps[0], self.temps[2])
    }
    /// Bytes lost to a full receive buffer.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    fn say(&mut self, line: &str) {
        if !self.halted && !self.silent {
            self.out.extend_from_slice(line.as_bytes());
            self.out.push(b'\n');
        }
    }

    fn klipper(&self) -> bool {
        self.cfg.personality == Personality::Klipper
    }

    fn boot(&mut self) {
        self.queue.clear();
        self.rx.clear();
        self.line_buf.clear();
        self.running = None;
        self.last_n = 0;
        self.temps = [AMBIENT, 0.0, AMBIENT, 0.0];
        self.autoreport_ms = 0;
        if self.klipper() {
            return self.say("// Klipper state: Ready");
        }
        let garbage = self.cfg.boot_garbage.clone();
        self.out.extend_from_slice(&garbage);
        for line in [
            "start",
            "echo:Marlin 2.1.2.1 (fake)",
            "echo: Last Updated: 2023-08-11 | Author: (Raft3D)",
        ] {
            self.say(line);
        }
        self.say("echo: Free Memory: 4619  PlannerBufferBytes: 1200");
    }

    fn advance_clock(&mut self, now_ms: u64) {
        let now = now_ms.max(self.now);
        let dt = (now - self.now) as f64 / 1000.0;
        self.now = now;
        let approach = |t: &mut f64, target: f64, up: f64, down: f64| {
            let goal = if target > 0.0 { target } else { AMBIENT };
            *t = if *t < goal {
                (*t + up * dt).min(goal)
            } else {
                (*t - down * dt).max(goal)
            };
        };
        let [hotend, hotend_target, bed, bed_target] = &mut self.temps;
        approach(hotend, *hotend_target, 4.0, 2.0);
        approach(bed, *bed_target, 1.0, 0.5);
    }

    /// Marlin's emergency parser sees bytes as they arrive: M108, M112, M410 act at once.
    fn emergency_parser(&mut self, b: u8) {
        if b != b'\n' && b != b'\r' {
            if self.ep_buf.len() < MAX_LINE_BYTES {
                self.ep_buf.push(b);
            }
            return;
        }
        let line = String::from_utf8_lossy(&self.ep_buf).into_owned();
        self.ep_buf.clear();
        match strip_framing(&line) {
            "M108" => self.abort_wait = true,
            "M112" => self.kill("M112"),
            _ => {}
        }
    }

    fn kill(&mut self, why: &str) {
        let msg = if self.klipper() {
            format!("!! Shutdown due to {why}")
        } else {
            String::from("Error:Printer halted. kill() called!")
        };
        self.say(&msg);
        self.halted = true;
        self.queue.clear();
        self.running = None;
        self.rx.clear();
    }

    /// Marlin's main loop: read lines into the queue (not while a blocking command runs), then
    /// execute one command; repeat while anything happens.
    fn pump(&mut self) {
        loop {
            if self.halted || self.silent {
                self.rx.clear();
                return;
            }
            if self.running.is_none() {
                while self.queue.len() < self.cfg.bufsize && self.read_line() {}
            }
            if !self.advance() {
                break;
            }
        }
        self.periodic();
    }

    /// Move bytes from rx into the line buffer; on end of line handle it. False when rx ran dry.
    fn read_line(&mut self) -> bool {
        while let Some(b) = self.rx.pop_front() {
            if b == b'\n' || (b == b'\r' && !self.klipper()) {
                let line = String::from_utf8_lossy(&self.line_buf).into_owned();
                self.line_buf.clear();
                self.in_comment = false;
                self.handle_line(&line);
                self.idle_since = self.now;
                return true;
            }
            self.in_comment |= b == b';';
            if !self.in_comment && b != b'\r' && self.line_buf.len() < MAX_LINE_BYTES - 1 {
                self.line_buf.push(b);
            }
        }
        false
    }

    fn handle_line(&mut self, raw: &str) {
        let line = raw.trim();
        let own_n = line.strip_prefix('N').map(number);
        if self.klipper() {
            return self
                .queue
                .push_back((own_n, strip_framing(line).to_string()));
        }
        if line.is_empty() {
            return; // Marlin answers nothing to empty lines
        }
        let Some(n) = own_n else {
            return self
                .queue
                .push_back((None, strip_framing(line).to_string()));
        };
        let f = &mut self.cfg.faults;
        if f.silent_from.is_some_and(|s| n >= s) {
            self.silent = true;
            return;
        }
        if f.restart_at.take_if(|r| *r == n).is_some() {
            return self.boot();
        }
        if let Some(m) = f.bogus_resend.remove(&n) {
            self.last_n = m.saturating_sub(1);
            return self.line_error(ERR_CHECKSUM, true);
        }
        let is_m110 = line.contains("M110");
        let seq_n = match line.get(4..).and_then(|s| s.find('N').map(|i| (s, i))) {
            Some((s, i)) if is_m110 => number(s.get(i + 1..).unwrap_or_default()),
            _ => n,
        };
        if seq_n != self.last_n + 1 && !is_m110 {
            return self.line_error(ERR_LINE_NO, true);
        }
        let Some((body, cs)) = line.rsplit_once('*') else {
            return self.line_error(ERR_NO_CHECKSUM, true);
        };
        let f = &mut self.cfg.faults;
        let no_ok = f.resend_without_ok.remove(&n);
        let corrupt = f
            .corrupt
            .get_mut(&n)
            .filter(|c| **c > 0)
            .map(|c| *c -= 1)
            .is_some();
        if no_ok || corrupt || cs.trim().parse::<u8>().ok() != Some(checksum(body.as_bytes())) {
            if self.cfg.personality == Personality::SilentDrop {
                return;
            }
            return self.line_error(ERR_CHECKSUM, !no_ok);
        }
        self.last_n = seq_n;
        self.queue
            .push_back((Some(n), strip_framing(line).to_string()));
    }

    /// Error, flush of everything in flight, `Resend:`, `ok`.
    fn line_error(&mut self, msg: &str, with_ok: bool) {
        self.say(&format!("Error:{msg}{}", self.last_n));
        self.rx.clear();
        self.line_buf.clear();
        self.in_comment = false;
        self.say(&format!("Resend: {}", self.last_n + 1));
        if with_ok {
            self.say("ok");
        }
    }

    fn advance(&mut self) -> bool {
        if let Some(run) = self.running {
            let heating = matches!(run.until, Until::Hotend | Until::Bed);
            let done = (self.abort_wait && (run.user || heating))
                || match run.until {
                    Until::Time(t) => self.now >= t,
                    Until::Hotend => self.temps[0] >= self.temps[1] - 1.0,
                    Until::Bed => self.temps[2] >= self.temps[3] - 1.0,
                };
            if !done {
                return false;
            }
            self.running = None;
            self.abort_wait = false;
            self.finish(run.line);
            return true;
        }
        let Some((line, cmd)) = self.queue.pop_front() else {
            return false;
        };
        self.idle_since = self.now;
        self.execute(line, &cmd);
        true
    }

    fn execute(&mut self, line: Option<u64>, cmd: &str) {
        if cmd.is_empty() {
            return self.finish(line); // Klipper: `ok` per newline
        }
        self.executed.push(Executed {
            line,
            command: cmd.to_string(),
        });
        if line.is_some() && line == self.cfg.faults.kill_at {
            return self.kill("an injected fault");
        }
        let (letter, num) = code(cmd);
        let mut until = None;
        let mut user = false;
        match (letter, num) {
            ('G', 0 | 1 | 92) => {
                for (i, axis) in ['X', 'Y', 'Z', 'E'].into_iter().enumerate() {
                    if let (Some(v), Some(p)) = (param(cmd, axis), self.pos.get_mut(i)) {
                        *p = v;
                    }
                }
            }
            ('G', 4) => {
                let ms = param(cmd, 'P').or_else(|| param(cmd, 'S').map(|s| s * 1000.0));
                until = Some(Until::Time(self.now + ms.unwrap_or(0.0) as u64));
            }
            ('G', 28) => self.pos = [0.0, 0.0, 0.0, self.pos[3]],
            ('M', 104 | 109 | 140 | 190) => {
                let bed = num == 140 || num == 190;
                if let Some(t) = param(cmd, 'S').or_else(|| param(cmd, 'R')) {
                    self.temps[if bed { 3 } else { 1 }] = t;
                }
                if num == 109 || num == 190 {
                    self.abort_wait = false;
                    until = Some(if bed { Until::Bed } else { Until::Hotend });
                }
            }
            ('M', 105) => {
                let report = self.temp_report();
                return self.say(&format!("ok {report}"));
            }
            ('M', 155) => {
                self.autoreport_ms = (param(cmd, 'S').unwrap_or(0.0) * 1000.0) as u64;
                self.next_autoreport = self.now + self.autoreport_ms;
            }
            ('M', 115) if self.klipper() => {
                return self.say("ok FIRMWARE_NAME:Klipper FIRMWARE_VERSION:v0.12.0-fake");
            }
            ('M', 115) => {
                self.say("FIRMWARE_NAME:Marlin 2.1.2.1 (fake) SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin PROTOCOL_VERSION:1.0 MACHINE_TYPE:Raft3D EXTRUDER_COUNT:1");
                let adv = u8::from(self.cfg.advanced_ok);
                let autoreport = u8::from(self.cfg.autoreport_temp);
                self.say(&format!("Cap:AUTOREPORT_TEMP:{autoreport}"));
                for cap in ["EMERGENCY_PARSER:1", "HOST_ACTION_COMMANDS:1"] {
                    self.say(&format!("Cap:{cap}"));
                }
                self.say(&format!("Cap:ADVANCED_OK:{adv}"));
            }
            ('M', 114) => {
                let [x, y, z, e] = self.pos;
                self.say(&format!(
                    "X:{x:.2} Y:{y:.2} Z:{z:.2} E:{e:.2} Count X:0 Y:0 Z:0"
                ));
            }
            ('M', 27) => self.say("Not SD printing"),
            ('M', 112) => return self.kill("M112"),
            ('M', 0 | 1 | 600) => {
                self.abort_wait = false;
                user = true;
            }
            ('G', 21 | 29 | 90 | 91)
            | ('M', 18 | 82 | 83 | 84 | 106 | 107 | 108 | 110 | 117 | 220 | 221 | 400 | 410)
            | ('T', _) => {}
            _ if self.klipper() => self.say(&format!("// Unknown command:\"{cmd}\"")),
            _ => self.say(&format!("echo:Unknown command: \"{cmd}\"")),
        }
        let key = format!("{letter}{num}");
        let delay = self
            .cfg
            .delays
            .iter()
            .find(|(c, _)| *c == key)
            .map(|(_, ms)| *ms);
        if let Some(ms) = line.and_then(|l| self.cfg.faults.busy.remove(&l)).or(delay) {
            until = until.or(Some(Until::Time(self.now + ms)));
        }
        match until {
            Some(until) => {
                let first = self.now + self.cfg.host_keepalive_ms.unwrap_or(u64::MAX / 2);
                self.running = Some(Running {
                    line,
                    until,
                    user,
                    next_keepalive: first,
                    next_report: self.now + 1_000,
                });
            }
            None => self.finish(line),
        }
    }

    fn finish(&mut self, line: Option<u64>) {
        let f = &mut self.cfg.faults;
        let action = line.and_then(|l| f.actions.remove(&l));
        let dropped = line.is_some_and(|l| f.drop_ok.remove(&l));
        let doubled = line.is_some_and(|l| f.double_ok.remove(&l));
        if let Some(action) = action {
            self.say(&format!("//action:{action}"));
        }
        for _ in 0..(u8::from(!dropped) + u8::from(doubled)) {
            self.send_ok();
        }
    }

    fn send_ok(&mut self) {
        if self.cfg.advanced_ok && !self.klipper() {
            let free = self.cfg.bufsize.saturating_sub(self.queue.len() + 1);
            self.say(&format!("ok N{} P15 B{free}", self.last_n));
        } else {
            self.say("ok");
        }
    }

    fn temp_report(&self) -> String {
        let [t, tt, b, bt] = self.temps;
        if self.klipper() {
            return format!("B:{b:.1} /{bt:.1} T0:{t:.1} /{tt:.1}");
        }
        let (power, bed_power) = (if t < tt { 127 } else { 0 }, if b < bt { 127 } else { 0 });
        format!("T:{t:.1} /{tt:.1} B:{b:.1} /{bt:.1} @:{power} B@:{bed_power}")
    }

    /// Keep-alives and heat-up reports for the running command, auto-reports, `wait`.
    fn periodic(&mut self) {
        if self.halted || self.silent {
            return;
        }
        if let Some(mut run) = self.running {
            if self.now >= run.next_keepalive && !self.klipper() {
                let what = if run.user {
                    "paused for user"
                } else {
                    "processing"
                };
                self.say(&format!("echo:busy: {what}"));
                run.next_keepalive = self.now + self.cfg.host_keepalive_ms.unwrap_or(u64::MAX / 2);
            }
            if self.now >= run.next_report && matches!(run.until, Until::Hotend | Until::Bed) {
                let report = self.temp_report();
                self.say(&format!(" {report} W:?"));
                run.next_report = self.now + 1_000;
            }
            self.running = Some(run);
        }
        if self.autoreport_ms > 0 && self.now >= self.next_autoreport {
            let report = self.temp_report();
            self.say(&format!(" {report}"));
            self.next_autoreport = self.now + self.autoreport_ms;
        }
        let idle = self.running.is_none() && self.queue.is_empty() && self.rx.is_empty();
        if let Some(ms) = self
            .cfg
            .wait_when_idle_ms
            .filter(|ms| idle && self.now >= self.idle_since + ms)
        {
            self.say("wait");
            self.idle_since = self.now.max(self.idle_since + ms);
        }
    }
}

#[cfg(test)]
#[path = "fake_marlin_tests.rs"]
mod tests;
