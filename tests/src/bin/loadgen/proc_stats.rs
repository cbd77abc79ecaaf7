//! What the kernel says a server process did: bytes it sent to the block layer
//! (`/proc/<pid>/io` `write_bytes`, counted when a page is dirtied, so a page rewritten and
//! fsynced again counts again) and CPU time (`/proc/<pid>/stat` utime + stime, all threads).
//! Measured the same way for Raft3D and etcd. Also the panic hook that kills every child
//! process: the release profile aborts on panic, so no `Drop` would run.

/// Disk and CPU use of one process at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcSample {
    pub write_bytes: f64,
    pub cpu_secs: f64,
}

impl ProcSample {
    pub fn read(pid: Option<u32>) -> ProcSample {
        let Some(pid) = pid else {
            return ProcSample::default();
        };
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let write_bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at field 3 (state);
        // utime and stime are fields 14 and 15, in clock ticks of 1/100 s on Linux.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
        ProcSample {
            write_bytes,
            cpu_secs: (ticks(11) + ticks(12)) / 100.0,
        }
    }

    pub fn since(self, before: ProcSample) -> ProcSample {
        ProcSample {
            write_bytes: (self.write_bytes - before.write_bytes).max(0.0),
            cpu_secs: (self.cpu_secs - before.cpu_secs).max(0.0),
        }
    }
}

/// Sums samples of several processes.
pub fn total(samples: &[ProcSample]) -> ProcSample {
    samples
        .iter()
        .fold(ProcSample::default(), |a, s| ProcSample {
            write_bytes: a.write_bytes + s.write_bytes,
            cpu_secs: a.cpu_secs + s.cpu_secs,
        })
}

/// The 1-minute load average, to show how busy the machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// Kills this process's children (server processes) when the load generator panics.
pub fn kill_children_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let me = std::process::id().to_string();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1));
            if ppid == Some(me.as_str()) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &name])
                    .status();
            }
        }
    }));
}
