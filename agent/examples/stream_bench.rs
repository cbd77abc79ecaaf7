//! Streaming benchmark of the serial driver against the fake Marlin over an unthrottled pty.
//!
//! `cargo run -j 1 --release --example stream_bench [-- --lines N --big-mb M]`
//!
//! The fake runs in a child process (this binary with `--fake <link>`), so the figures below are
//! the driver's alone: wall time and lines per second, CPU time (user + system, from
//! `/proc/self/stat`) per 100k lines, and peak RSS (`VmHWM`, reset through `clear_refs`) while a
//! generated file of `--big-mb` MB streams.

use raft3d::printers::fake_marlin::FakeConfig;
use raft3d::printers::fake_pty::{FakePrinter, FakePtyConfig};
use raft3d::printers::{
    spawn_driver_with, ConnectionSpec, DriverCommand, DriverEvent, DriverOptions, PrintRequest,
};
use std::error::Error;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Res<T> = Result<T, Box<dyn Error>>;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Res<()> {
    if let Some(link) = arg("--fake") {
        return run_fake(
            PathBuf::from(link),
            std::env::args().any(|a| a == "--advanced-ok"),
        );
    }
    let lines: u64 = arg("--lines")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(100_000);
    let big_mb: u64 = arg("--big-mb")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(200);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(lines, big_mb))
}

/// Child process: serve the fake on a pty until stdin closes.
fn run_fake(link: PathBuf, advanced_ok: bool) -> Res<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let marlin = FakeConfig {
            advanced_ok,
            bufsize: if advanced_ok { 8 } else { 4 },
            host_keepalive_ms: None,
            delays: Vec::new(),
            ..FakeConfig::default()
        };
        let cfg = FakePtyConfig {
            marlin,
            record: false,
            tick: Duration::from_millis(50),
            ..FakePtyConfig::default()
        };
        let fake = FakePrinter::start(&link, cfg)?;
        // stdin EOF (parent gone) ends the child
        tokio::task::spawn_blocking(|| {
            let mut sink = [0u8; 64];
            while std::io::stdin()
                .read(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        })
        .await?;
        let stats = fake.stats();
        eprintln!(
            "fake: executed {} commands, received {} bytes",
            stats.executed, stats.bytes_received
        );
        Ok(())
    })
}

struct Fake {
    child: Child,
    link: PathBuf,
}

impl Fake {
    fn spawn(dir: &Path, advanced_ok: bool) -> Res<Fake> {
        let link = dir.join(if advanced_ok { "ttyADV" } else { "ttyONE" });
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--fake").arg(&link).stdin(Stdio::piped());
        if advanced_ok {
            cmd.arg("--advanced-ok");
        }
        let child = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::symlink_metadata(&link).is_err() {
            if Instant::now() > deadline {
                return Err("the fake printer did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Fake { child, link })
    }
    fn cpu_s(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<f64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0.0) + fields.get(12).copied().unwrap_or(0.0);
    ticks / clock_ticks()
}

fn status_kb(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A G-code file of plausible print moves, about `bytes` long or `lines` lines.
fn generate(path: &Path, lines: Option<u64>, bytes: Option<u64>) -> Res<(u64, u64)> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let (mut n, mut size) = (0u64, 0u64);
    w.write_all(b"; generated by stream_bench\nG28\nG90\nM82\nG92 E0\n")?;
    n += 4;
    loop {
        if lines.is_some_and(|l| n >= l) || bytes.is_some_and(|b| size >= b) {
            break;
        }
        let i = n as f64;
        let line = format!(
            "G1 X{:.3} Y{:.3} E{:.5} F1800\n",
            50.0 + (i * 0.37) % 100.0,
            50.0 + (i * 0.73) % 100.0,
            i * 0.01
        );
        w.write_all(line.as_bytes())?;
        size += line.len() as u64;
        n += 1;
    }
    w.flush()?;
    Ok((n, std::fs::metadata(path)?.len()))
}

fn options() -> DriverOptions {
    DriverOptions {
        banner_timeout: Duration::from_millis(500),
        banner_settle: Duration::from_millis(50),
        ..DriverOptions::default()
    }
}

struct Run {
    wall: Duration,
    cpu: f64,
    fake_cpu: f64,
    lines: u64,
    peak_sampled_kb: u64,
}

async fn stream(fake: &Fake, file: &Path, job: &str) -> Res<Run> {
    let (tx, mut events) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let spec = ConnectionSpec::Serial {
        port: fake.link.display().to_string(),
        baud: 250_000,
    };
    let mut handle = spawn_driver_with("bench".into(), spec, options(), tx, shutdown.clone());
    tokio::time::timeout(
        Duration::from_secs(10),
        handle.telemetry.wait_for(|t| t.connection == "connected"),
    )
    .await??;
    let (cpu0, fake0, t0) = (cpu_seconds("/proc/self/stat"), fake.cpu_s(), Instant::now());
    let req = PrintRequest {
        job_id: job.into(),
        attempt: 1,
        file: file.to_path_buf(),
        upload: None,
    };
    handle.commands.send(DriverCommand::Start(req)).await?;
    let mut peak = 0;
    let mut sample = tokio::time::interval(Duration::from_millis(100));
    let outcome = loop {
        tokio::select! {
            ev = events.recv() => break ev,
            _ = sample.tick() => peak = peak.max(status_kb("VmRSS:")),
        }
    };
    let wall = t0.elapsed();
    let (cpu, fake_cpu) = (cpu_seconds("/proc/self/stat") - cpu0, fake.cpu_s() - fake0);
    let lines = handle.telemetry.borrow().lines_sent;
    shutdown.cancel();
    match outcome {
        Some(DriverEvent::Finished { .. }) => Ok(Run {
            wall,
            cpu,
            fake_cpu,
            lines,
            peak_sampled_kb: peak,
        }),
        other => Err(format!("job did not finish: {other:?}").into()),
    }
}

fn report(label: &str, r: &Run) {
    let per_100k = |s: f64| s / r.lines.max(1) as f64 * 100_000.0;
    println!(
        "{label}: {} lines in {:.2} s = {:.0} lines/s; driver CPU {:.2} s per 100k lines (fake: {:.2} s)",
        r.lines,
        r.wall.as_secs_f64(),
        r.lines as f64 / r.wall.as_secs_f64(),
        per_100k(r.cpu),
        per_100k(r.fake_cpu)
    );
}

async fn bench(lines: u64, big_mb: u64) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let small = dir.path().join("small.gcode");
    let (n, size) = generate(&small, Some(lines), None)?;
    println!("generated {n} lines ({size} bytes)");
    for advanced_ok in [false, true] {
        let fake = Fake::spawn(dir.path(), advanced_ok)?;
        let run = stream(&fake, &small, "small").await?;
        let label = if advanced_ok {
            "windowed (ADVANCED_OK, window 4)"
        } else {
            "one line in flight"
        };
        report(label, &run);
        fake.stop();
    }
    if big_mb == 0 {
        return Ok(());
    }
    let big = dir.path().join("big.gcode");
    let (n, size) = generate(&big, None, Some(big_mb * 1_000_000))?;
    println!("generated {n} lines ({:.1} MB)", size as f64 / 1e6);
    let fake = Fake::spawn(dir.path(), true)?;
    let base_rss = status_kb("VmRSS:");
    let hwm_before = status_kb("VmHWM:");
    std::fs::write("/proc/self/clear_refs", "5")?; // reset VmHWM to the current RSS
    let run = stream(&fake, &big, "big").await?;
    report("big file, windowed", &run);
    println!(
        "RSS before streaming {base_rss} kB (peak so far {hwm_before} kB); peak RSS while streaming: \
         VmHWM {} kB, sampled VmRSS max {} kB",
        status_kb("VmHWM:"),
        run.peak_sampled_kb
    );
    fake.stop();
    Ok(())
}
