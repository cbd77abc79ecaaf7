//! Marlin-style serial host protocol as a pure state machine: line cleaning and framing, parsing
//! printer lines into `Event`s, and the per-job `Sender` (`codec/sender.rs`). Must not do I/O,
//! read a clock, sleep, spawn or panic: bytes, events and time (`now_ms`) come in as arguments,
//! bytes go out as values.

use thiserror::Error;

mod sender;
pub use sender::{FailReason, Sender, SenderConfig, Status};

/// Marlin's default input line buffer (`MAX_CMD_SIZE`): a framed line, `\n` included, must fit.
pub const MAX_LINE_BYTES: usize = 96;
/// Longest command `clean_line` accepts: room is kept for `N` + 10 digits + ` ` and `*255\n`.
pub const MAX_COMMAND_LEN: usize = MAX_LINE_BYTES - 16;
/// Commands that legitimately run for minutes (M0/M1 wait for a person like M600).
pub const LONG_COMMANDS: [(char, u32); 8] = [
    ('G', 28),
    ('G', 29),
    ('M', 109),
    ('M', 190),
    ('M', 400),
    ('M', 600),
    ('M', 0),
    ('M', 1),
];
/// Safe cancel: break heat-up waits, stop motion now, heaters off, fan off, motors off.
pub const CANCEL_SEQUENCE: [&str; 6] = ["M108", "M410", "M104 S0", "M140 S0", "M106 S0", "M84"];
/// Emergency stop bytes: `M112` on its own line (preceded by a newline), then heaters off.
pub const EMERGENCY_STOP: &[u8] = b"\nM112\nM104 S0\nM140 S0\n";
const FATAL_MARKERS: [&str; 8] = [
    "kill() called",
    "halted",
    "thermal runaway",
    "heating failed",
    "mintemp",
    "maxtemp",
    "stopped",
    "m999",
];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineError {
    #[error("non-ASCII character {ch:?} at byte {at} of the command")]
    NonAscii { at: usize, ch: char },
    #[error("control byte {byte:#04x} at byte {at} of the command")]
    Control { at: usize, byte: u8 },
    #[error("line too long: {len} bytes, limit {max}")]
    TooLong { len: usize, max: usize },
}

/// XOR of every byte (Marlin's line checksum).
pub fn checksum(s: &[u8]) -> u8 {
    s.iter().fold(0, |acc, b| acc ^ b)
}

fn check_chars(cmd: &str) -> Result<(), LineError> {
    for (at, ch) in cmd.char_indices() {
        if !ch.is_ascii() {
            return Err(LineError::NonAscii { at, ch });
        }
        let byte = ch as u8;
        if byte.is_ascii_control() && byte != b'\t' {
            return Err(LineError::Control { at, byte });
        }
    }
    Ok(())
}

/// Strip BOM, comment, CR and surrounding white space. `None` for blank or comment-only lines.
/// Tabs become spaces. Errors on non-ASCII or control bytes in the command part, and on commands
/// that could not be framed within `MAX_LINE_BYTES` even with a 10-digit line number.
pub fn clean_line(raw: &str) -> Result<Option<String>, LineError> {
    let s = raw.strip_prefix('\u{feff}').unwrap_or(raw);
    let code = s.split(';').next().unwrap_or_default().trim();
    if code.is_empty() {
        return Ok(None);
    }
    check_chars(code)?;
    if code.len() > MAX_COMMAND_LEN {
        return Err(LineError::TooLong {
            len: code.len(),
            max: MAX_COMMAND_LEN,
        });
    }
    Ok(Some(code.replace('\t', " ")))
}

/// Frame a command as `N<n> <cmd>*<checksum>\n`; errors when the result exceeds 96 bytes.
pub fn frame(n: u64, cmd: &str) -> Result<Vec<u8>, LineError> {
    check_chars(cmd)?;
    let body = format!("N{n} {cmd}");
    let line = format!("{body}*{}\n", checksum(body.as_bytes()));
    if line.len() > MAX_LINE_BYTES {
        return Err(LineError::TooLong {
            len: line.len(),
            max: MAX_LINE_BYTES,
        });
    }
    Ok(line.into_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
    Other(String),
}

/// One line from the printer, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `ok`, `ok N12 P15 B3` (ADVANCED_OK), `ok 12`.
    Ok {
        line: Option<u64>,
        planner_free: Option<u32>,
        buffer_free: Option<u32>,
    },
    /// `Resend: n` or `rs n`.
    Resend(u64),
    /// `echo:busy: processing`, `busy: paused for user`: the reason text.
    Busy(String),
    Wait,
    Start,
    Error(String),
    /// Printer halted / thermal runaway / Klipper `!!`: stop sending.
    Fatal(String),
    Action(Action),
    Temperature {
        hotend: Option<f64>,
        hotend_target: Option<f64>,
        bed: Option<f64>,
        bed_target: Option<f64>,
    },
    /// `FIRMWARE_NAME:...` (name) or `Cap:NAME:0|1` (one cap) from M115.
    Firmware {
        name: Option<String>,
        caps: Vec<(String, bool)>,
    },
    Echo(String),
    Unknown(String),
}

fn strip_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.get(..prefix.len())
        .filter(|h| h.eq_ignore_ascii_case(prefix))
        .and_then(|_| s.get(prefix.len()..))
}

fn leading_u64(s: &str) -> Option<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
}

/// Classify one printer line (without its newline). `ok T:...` yields `Ok` then `Temperature`.
pub fn parse_line(line: &str) -> Vec<Event> {
    let t = line
        .trim_start_matches(|c: char| c == '\u{fffd}' || c.is_control())
        .trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if t.is_empty() {
        return Vec::new();
    }
    match t.strip_prefix("ok") {
        Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => parse_ok(rest),
        _ => vec![parse_other(t)],
    }
}

fn parse_ok(rest: &str) -> Vec<Event> {
    let (mut line, mut planner_free, mut buffer_free) = (None, None, None);
    let mut body = rest.trim_start();
    while !body.is_empty() {
        let (tok, tail) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
        let num = |p: char| tok.strip_prefix(p).and_then(|v| v.parse::<u32>().ok());
        if let Some(n) = tok.strip_prefix('N').and_then(|v| v.parse().ok()) {
            line = Some(n);
        } else if let Some(p) = num('P') {
            planner_free = Some(p);
        } else if let Some(b) = num('B') {
            buffer_free = Some(b);
        } else if let Ok(n) = tok.parse() {
            line = Some(n);
        } else {
            break;
        }
        body = tail.trim_start();
    }
    let mut events = vec![Event::Ok {
        line,
        planner_free,
        buffer_free,
    }];
    if !body.is_empty() {
        events.push(parse_other(body));
    }
    events
}

fn parse_other(t: &str) -> Event {
    if t == "start" {
        return Event::Start;
    }
    if t == "wait" {
        return Event::Wait;
    }
    if let Some(r) = strip_ci(t, "resend:").or_else(|| strip_ci(t, "rs ")) {
        let r = r.trim_start().trim_start_matches('N');
        return leading_u64(r).map_or_else(|| Event::Unknown(t.to_string()), Event::Resend);
    }
    if let Some(r) = t.strip_prefix("!!") {
        return Event::Fatal(r.trim().to_string());
    }
    if let Some(r) = strip_ci(t, "error:") {
        let lower = r.to_ascii_lowercase();
        let msg = r.trim().to_string();
        let fatal = FATAL_MARKERS.iter().any(|m| lower.contains(m));
        return if fatal {
            Event::Fatal(msg)
        } else {
            Event::Error(msg)
        };
    }
    if let Some(r) = t.strip_prefix("//action:") {
        let word = r
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        return Event::Action(match word.as_str() {
            "pause" | "paused" => Action::Pause,
            "resume" | "resumed" => Action::Resume,
            "cancel" => Action::Cancel,
            _ => Action::Other(r.trim().to_string()),
        });
    }
    if let Some(r) = strip_ci(t, "echo:busy:").or_else(|| strip_ci(t, "busy:")) {
        return Event::Busy(r.trim().to_string());
    }
    if let Some(r) = t.strip_prefix("echo:") {
        return Event::Echo(r.trim().to_string());
    }
    if let Some(r) = t.strip_prefix("FIRMWARE_NAME:") {
        return Event::Firmware {
            name: Some(firmware_name(r)),
            caps: Vec::new(),
        };
    }
    if let Some((name, v @ ("0" | "1"))) = t.strip_prefix("Cap:").and_then(|r| r.rsplit_once(':')) {
        return Event::Firmware {
            name: None,
            caps: vec![(name.to_string(), v == "1")],
        };
    }
    if let Some(ev) = parse_temperature(t) {
        return ev;
    }
    match t.strip_prefix("//") {
        Some(r) => Event::Echo(r.trim().to_string()),
        None => Event::Unknown(t.to_string()),
    }
}

/// The name runs up to the next ` KEY:` field (`SOURCE_CODE_URL:`, `FIRMWARE_VERSION:`, ...).
fn firmware_name(r: &str) -> String {
    let is_key = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    let end = r.match_indices(' ').map(|(i, _)| i).find(|&i| {
        let word = r.get(i + 1..).unwrap_or_default();
        let len = word.find(|c: char| !is_key(c)).unwrap_or(word.len());
        len > 0 && word.get(len..).is_some_and(|w| w.starts_with(':'))
    });
    r.get(..end.unwrap_or(r.len()))
        .unwrap_or(r)
        .trim()
        .to_string()
}

fn parse_temperature(t: &str) -> Option<Event> {
    let first = t.split_whitespace().next()?;
    if !["T:", "T0:", "B:"].iter().any(|p| first.starts_with(p)) {
        return None;
    }
    let mut slots: [(Option<f64>, Option<f64>); 3] = [(None, None); 3]; // T, T0, B
    let mut key = "";
    for tok in t.split_whitespace() {
        let (value, target) = if let Some(v) = tok.strip_prefix('/') {
            (None, v.parse().ok())
        } else if let Some((k, v)) = tok.split_once(':') {
            key = k;
            match v.split_once('/') {
                Some((a, b)) => (a.parse().ok(), b.parse().ok()),
                None => (v.parse().ok(), None),
            }
        } else {
            continue;
        };
        let Some(slot) = ["T", "T0", "B"]
            .iter()
            .position(|k| *k == key)
            .and_then(|i| slots.get_mut(i))
        else {
            continue;
        };
        slot.0 = value.or(slot.0);
        slot.1 = target.or(slot.1);
    }
    let [t, t0, b] = slots;
    let (hotend, hotend_target) = if t.0.is_some() { t } else { t0 };
    (hotend.is_some() || b.0.is_some()).then_some(Event::Temperature {
        hotend,
        hotend_target,
        bed: b.0,
        bed_target: b.1,
    })
}

/// Splits printer output into lines (`\n`, optional `\r`), lossy UTF-8, 4 KiB per line at most.
#[derive(Debug, Default)]
pub struct LineAssembler {
    buf: Vec<u8>,
}

impl LineAssembler {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.push(
                    String::from_utf8_lossy(&self.buf)
                        .trim_end_matches('\r')
                        .to_string(),
                );
                self.buf.clear();
            } else if self.buf.len() < 4096 {
                self.buf.push(b);
            }
        }
        lines
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
