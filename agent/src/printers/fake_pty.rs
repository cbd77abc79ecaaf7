//! Runs the pure `FakeMarlin` on the master end of a pseudo-terminal so that tests and benchmarks
//! drive the real serial transport through a real tty. Owns the pty, a symlink to its slave (the
//! port path the driver opens, like `/dev/serial/by-id/...`), the fake's clock (real time ×
//! `time_scale`) and unplug/replug. Like a USB Marlin board, the firmware boots (banner) each
//! time the host opens the port, and its numbering and buffers are lost when the host closes it.
//! Faults in the config apply to the first boot only. Test helper: never used with hardware.

use super::fake_marlin::{Executed, FakeConfig, FakeMarlin, Faults};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialStream};

#[derive(Debug, Clone)]
pub struct FakePtyConfig {
    pub marlin: FakeConfig,
    /// Simulated milliseconds per real millisecond (100: a 44 s heat-up takes 0.44 s).
    pub time_scale: f64,
    /// Keep every executed command (tests); otherwise only count them (benchmarks).
    pub record: bool,
    /// How often simulated time advances when nothing arrives.
    pub tick: Duration,
    /// Real time between the host opening the port and the boot banner.
    pub boot_delay: Duration,
}

impl Default for FakePtyConfig {
    fn default() -> Self {
        FakePtyConfig {
            marlin: FakeConfig::default(),
            time_scale: 1.0,
            record: true,
            tick: Duration::from_millis(5),
            boot_delay: Duration::from_millis(20),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// Commands executed over all boots.
    pub executed: u64,
    /// Times the firmware booted (once per host open).
    pub boots: u32,
    pub host_connected: bool,
    pub plugged: bool,
    pub bytes_received: u64,
}

#[derive(Default)]
struct Shared {
    executed: Vec<Executed>,
    stats: FakeStats,
}

enum Control {
    Unplug,
    Replug(oneshot::Sender<io::Result<()>>),
    Say(String),
}

pub struct FakePrinter {
    link: PathBuf,
    shared: Arc<Mutex<Shared>>,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh pty whose slave is reachable at `link`; the returned master is the "board".
fn plug(link: &Path) -> io::Result<SerialStream> {
    let (master, slave) = SerialStream::pair().map_err(io::Error::other)?;
    // The master must not leak into processes spawned later (e.g. a raft3d node under test):
    // an inherited copy would keep the pty alive after an unplug.
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor we own, setting only FD_CLOEXEC.
        unsafe {
            let fd = master.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    let name = slave
        .name()
        .ok_or_else(|| io::Error::other("the pty has no slave name"))?;
    drop(slave); // the host opens it by path, like a real port
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(".new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp)?;
    std::fs::rename(&tmp, link)?;
    Ok(master)
}

impl FakePrinter {
    /// Create the pty, point `link` at it and serve it. Must run inside a Tokio runtime.
    pub fn start(link: impl Into<PathBuf>, cfg: FakePtyConfig) -> io::Result<FakePrinter> {
        let link = link.into();
        let master = plug(&link)?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        lock(&shared).stats.plugged = true;
        let (control, rx) = mpsc::channel(8);
        let board = Board {
            cfg,
            link: link.clone(),
            shared: shared.clone(),
            rx,
            origin: Instant::now(),
        };
        let task = tokio::spawn(board.serve(master));
        Ok(FakePrinter {
            link,
            shared,
            control,
            task,
        })
    }

    /// The port path to give the driver.
    pub fn path(&self) -> &Path {
        &self.link
    }
    /// Every command executed so far, over all boots, in order (if `record`).
    pub fn executed(&self) -> Vec<Executed> {
        lock(&self.shared).executed.clone()
    }
    pub fn stats(&self) -> FakeStats {
        lock(&self.shared).stats.clone()
    }
    /// Pull the cable: the pty closes (the host reads EOF/EIO) and the port path disappears.
    pub async fn unplug(&self) {
        let _ = self.control.send(Control::Unplug).await;
    }
    /// Plug a new pty in at the same path; the firmware boots when the host opens it.
    pub async fn replug(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Replug(tx))
            .await
            .map_err(|_| io::Error::other("fake stopped"))?;
        rx.await.map_err(|_| io::Error::other("fake stopped"))?
    }
    /// Make the firmware print `line` (e.g. `//action:cancel`).
    pub async fn say(&self, line: &str) {
        let _ = self.control.send(Control::Say(line.to_string())).await;
    }
    /// Poll until `pred` holds (true) or `timeout` passes (false).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Executed], &FakeStats) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let shared = lock(&self.shared);
                if pred(&shared.executed, &shared.stats) {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for FakePrinter {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.link);
    }
}

enum Step {
    Read(io::Result<usize>),
    Tick,
    Control(Option<Control>),
}

struct Board {
    cfg: FakePtyConfig,
    link: PathBuf,
    shared: Arc<Mutex<Shared>>,
    rx: mpsc::Receiver<Control>,
    origin: Instant,
}

impl Board {
    fn now_ms(&self) -> u64 {
        (self.origin.elapsed().as_secs_f64() * 1000.0 * self.cfg.time_scale) as u64
    }

    fn boot(&mut self) -> FakeMarlin {
        let mut stats = lock(&self.shared);
        let mut cfg = self.cfg.marlin.clone();
        if stats.stats.boots > 0 {
            cfg.faults = Faults::default();
        }
        stats.stats.boots += 1;
        stats.stats.host_connected = true;
        FakeMarlin::new(cfg, self.now_ms())
    }

    fn collect(&self, fake: &mut FakeMarlin) {
        let executed = fake.take_executed();
        let mut shared = lock(&self.shared);
        shared.stats.executed += executed.len() as u64;
        if self.cfg.record {
            shared.executed.extend(executed);
        }
    }

    fn host_gone(&self) {
        lock(&self.shared).stats.host_connected = false;
    }

    async fn serve(mut self, master: SerialStream) {
        let mut master = Some(master);
        let mut fake: Option<FakeMarlin> = None;
        let mut buf = vec![0u8; 4096];
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(port) = master.as_mut() else {
                // unplugged: only a replug brings the board back
                match self.rx.recv().await {
                    None => return,
                    Some(Control::Replug(reply)) => {
                        let plugged = plug(&self.link);
                        let result = plugged.map(|m| master = Some(m));
                        lock(&self.shared).stats.plugged = result.is_ok();
                        let _ = reply.send(result);
                    }
                    Some(_) => {}
                }
                continue;
            };
            let Some(marlin) = fake.as_mut() else {
                // no host: master reads fail with EIO until the slave is opened
                match port.try_read(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        tokio::time::sleep(self.cfg.boot_delay).await;
                        fake = Some(self.boot());
                    }
                    Ok(n) if n > 0 => {
                        let mut booted = self.boot();
                        booted.receive(buf.get(..n).unwrap_or_default(), self.now_ms());
                        fake = Some(booted);
                    }
                    _ => {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                            c = self.rx.recv() => match c {
                                None => return,
                                Some(c) => self.control(c, &mut master, &mut fake),
                            },
                        }
                        continue;
                    }
                }
                continue;
            };
            let step = tokio::select! {
                r = port.read(&mut buf) => Step::Read(r),
                _ = tick.tick() => Step::Tick,
                c = self.rx.recv() => Step::Control(c),
            };
            match step {
                Step::Read(Ok(n)) if n > 0 => {
                    lock(&self.shared).stats.bytes_received += n as u64;
                    let now = self.now_ms();
                    marlin.receive(buf.get(..n).unwrap_or_default(), now);
                }
                Step::Read(_) => {
                    // the host closed the port: the board resets on the next open
                    self.collect(marlin);
                    fake = None;
                    self.host_gone();
                    continue;
                }
                Step::Tick => marlin.tick(self.now_ms()),
                Step::Control(None) => return,
                Step::Control(Some(c)) => {
                    self.control(c, &mut master, &mut fake);
                    continue;
                }
            }
            self.collect(marlin);
            let out = marlin.take_output();
            if !out.is_empty() && port.write_all(&out).await.is_err() {
                fake = None;
                self.host_gone();
            }
        }
    }

    fn control(
        &mut self,
        c: Control,
        master: &mut Option<SerialStream>,
        fake: &mut Option<FakeMarlin>,
    ) {
        match c {
            Control::Unplug => {
                if let Some(marlin) = fake.as_mut() {
                    self.collect(marlin);
                }
                *master = None;
                *fake = None;
                let _ = std::fs::remove_file(&self.link);
                let mut shared = lock(&self.shared);
                shared.stats.plugged = false;
                shared.stats.host_connected = false;
            }
            Control::Replug(reply) => {
                let _ = reply.send(Err(io::Error::other("already plugged in")));
            }
            Control::Say(line) => {
                if let Some(marlin) = fake.as_mut() {
                    marlin.say_line(&line);
                }
            }
        }
    }
}
