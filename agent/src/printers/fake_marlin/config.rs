//! Configuration of the fake Marlin: personality, injected faults, timings, and the record of
//! what it executed. Plain data, part of `fake_marlin`.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Personality {
    #[default]
    Marlin,
    /// `ok` per newline (empty lines too), no numbering checks or resends, `!!` errors.
    Klipper,
    /// Marlin, except a bad checksum gets no answer at all.
    SilentDrop,
}

/// Faults keyed by the line number `N` of a numbered line; each fires once (`corrupt`: n times).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Execute the line but send no `ok`.
    pub drop_ok: BTreeSet<u64>,
    /// Send two `ok`s for the line.
    pub double_ok: BTreeSet<u64>,
    /// Treat the next n in-sequence receptions of the line as checksum failures.
    pub corrupt: BTreeMap<u64, u32>,
    /// Treat the line as a checksum failure, and send `Resend:` without the `ok`.
    pub resend_without_ok: BTreeSet<u64>,
    /// On receiving line n, ask for line m instead (not yet sent, or long gone).
    pub bogus_resend: BTreeMap<u64, u64>,
    /// On receiving this line, reboot (`start` banner, numbering lost).
    pub restart_at: Option<u64>,
    /// On executing this line, halt (`Error:Printer halted. kill() called!` / `!!`), then silence.
    pub kill_at: Option<u64>,
    /// From this line on, read nothing and answer nothing.
    pub silent_from: Option<u64>,
    /// After executing line n, print `//action:<text>`.
    pub actions: BTreeMap<u64, String>,
    /// Executing line n takes this many ms (busy keep-alives meanwhile).
    pub busy: BTreeMap<u64, u64>,
}

#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub personality: Personality,
    /// `ok N<last> P<planner free> B<buffer free>` instead of `ok`.
    pub advanced_ok: bool,
    /// Command queue length (Marlin `BUFSIZE`).
    pub bufsize: usize,
    /// Serial receive buffer; bytes beyond it are lost while the firmware is not reading.
    pub rx_capacity: usize,
    /// Bytes printed before the boot banner.
    pub boot_garbage: Vec<u8>,
    /// `echo:busy: ...` interval during long commands (`None`: no keep-alives).
    pub host_keepalive_ms: Option<u64>,
    /// Print `wait` after this much idle time.
    pub wait_when_idle_ms: Option<u64>,
    /// Report `Cap:AUTOREPORT_TEMP:1` in the M115 answer (`M155` works either way).
    pub autoreport_temp: bool,
    /// Simulated durations per command code, e.g. `("G28", 1500)`.
    pub delays: Vec<(String, u64)>,
    pub faults: Faults,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            personality: Personality::Marlin,
            advanced_ok: false,
            bufsize: 4,
            rx_capacity: 128,
            boot_garbage: Vec::new(),
            host_keepalive_ms: Some(2_000),
            wait_when_idle_ms: None,
            autoreport_temp: true,
            delays: [
                ("G28", 1_500),
                ("G29", 3_000),
                ("M600", 5_000),
                ("M0", 5_000),
            ]
            .iter()
            .map(|(c, ms)| (c.to_string(), *ms))
            .collect(),
            faults: Faults::default(),
        }
    }
}

/// One command the fake executed (`line` is the `N` it arrived with, if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub line: Option<u64>,
    pub command: String,
}
