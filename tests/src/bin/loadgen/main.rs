//! Load generator: starts a 3-node Raft3D cluster on loopback (release binary, durable
//! storage), drives it with N concurrent HTTP clients doing realistic writes (job creation,
//! status changes) and reads, and prints throughput and latency percentiles per concurrency,
//! plus fsyncs, disk bytes and CPU time per acknowledged write and the elections in each phase.
//!
//! - `--vs-etcd`: also starts a 3-member etcd cluster (Debian's etcd 3.4, default fsync
//!   behaviour) and drives it with the same clients in the same run, phase by phase
//!   alternating with Raft3D, then prints both side by side with the ratio per concurrency.
//! - `--restart-jobs N`: loads N more jobs, then times a follower's restart after SIGTERM and
//!   after kill -9 (to `/readyz` and to caught up).
//! - `--failover K`: times how long writes stop when the leader is killed with SIGKILL.
//! - `--steady SECONDS`: one long phase at 64 clients (the target: zero elections in 300 s).
//!
//! Usage: cargo run --release -p raft3d-tests --bin loadgen -- [--clients 1,8,64,256]
//!        [--seconds 10] [--vs-etcd] [--restart-jobs 100000] [--failover 20] [--steady 300] [--out FILE]
//!        [--config NODE.toml]

mod etcd;
mod proc_stats;
mod restart;
mod workload;

use std::time::{Duration, Instant};

use raft3d_tests::support::{get, post, wait_for, Cluster};
use serde_json::json;

use etcd::EtcdCluster;
use proc_stats::{load_average, total, ProcSample};
use workload::{drive, pct, Run, Stop, System};

struct Args {
    clients: Vec<usize>,
    seconds: u64,
    failover: usize,
    vs_etcd: bool,
    restart_jobs: u64,
    steady: u64,
    out: String,
    config: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        clients: vec![1, 8, 64, 256],
        seconds: 10,
        failover: 0,
        vs_etcd: false,
        restart_jobs: 0,
        steady: 0,
        out: "target/loadgen-results.md".into(),
        config: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--clients" => {
                a.clients = val()
                    .split(',')
                    .map(|s| s.trim().parse().expect("client count"))
                    .collect()
            }
            "--seconds" => a.seconds = val().parse().expect("seconds"),
            "--failover" => a.failover = val().parse().expect("repetitions"),
            "--vs-etcd" => a.vs_etcd = true,
            "--restart-jobs" => a.restart_jobs = val().parse().expect("job count"),
            "--steady" => a.steady = val().parse().expect("seconds"),
            "--out" => a.out = val(),
            "--config" => a.config = Some(val()),
            other => panic!("unknown flag {other}; see the usage in the source header"),
        }
    }
    a
}

/// The value of an unlabelled series `name` in Prometheus text, or the sum of its labelled
/// series; 0 when absent.
pub fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metric(c: &Cluster, i: usize, name: &str) -> f64 {
    match get(&c.nodes[i].url("/metrics")) {
        Ok((_, body)) => metric_in(body.as_str().unwrap_or_default(), name),
        Err(_) => 0.0,
    }
}

/// Counters of one cluster at one moment, read from its leader and from /proc.
struct Probe {
    leader: usize,
    fsyncs: f64,
    log_bytes: f64,
    procs: Vec<ProcSample>,
}

/// The two systems under test, seen the same way by a phase.
enum Target<'a> {
    Raft3d(&'a Cluster),
    Etcd(&'a EtcdCluster),
}

impl Target<'_> {
    fn system(&self) -> System {
        match self {
            Target::Raft3d(_) => System::Raft3d,
            Target::Etcd(_) => System::Etcd,
        }
    }

    fn urls(&self) -> Vec<String> {
        match self {
            Target::Raft3d(c) => c
                .nodes
                .iter()
                .map(|n| format!("http://{}", n.http))
                .collect(),
            Target::Etcd(e) => e
                .members
                .iter()
                .map(|m| format!("http://{}", m.client))
                .collect(),
        }
    }

    fn leader(&self) -> usize {
        match self {
            Target::Raft3d(c) => c.wait_leader(Duration::from_secs(30)),
            Target::Etcd(e) => e.wait_leader(Duration::from_secs(30)),
        }
    }

    fn term(&self, i: usize) -> f64 {
        match self {
            Target::Raft3d(c) => metric(c, i, "raft3d_term"),
            Target::Etcd(e) => e.term(i),
        }
    }

    fn probe(&self, leader: usize) -> Probe {
        match self {
            Target::Raft3d(c) => Probe {
                leader,
                fsyncs: metric(c, leader, "raft3d_log_fsyncs_total"),
                log_bytes: metric(c, leader, "raft3d_log_bytes_written_total"),
                procs: c.nodes.iter().map(|n| ProcSample::read(n.pid())).collect(),
            },
            Target::Etcd(e) => {
                let (wal, backend) = e.fsyncs(leader);
                Probe {
                    leader,
                    fsyncs: wal + 2.0 * backend,
                    log_bytes: f64::NAN,
                    procs: e
                        .members
                        .iter()
                        .map(|m| ProcSample::read(m.pid()))
                        .collect(),
                }
            }
        }
    }
}

/// One measured phase of one system.
struct Row {
    system: System,
    clients: usize,
    run: Run,
    fsyncs: f64,
    log_bytes: f64,
    leader_disk: f64,
    cpu_ms: f64,
    elections: f64,
    load: String,
}

impl Row {
    fn writes_per_sec(&self) -> f64 {
        self.run.writes as f64 / self.run.secs.max(1e-9)
    }

    fn line(&self) -> String {
        let r = &self.run;
        let log = if self.log_bytes.is_nan() {
            "-".to_string()
        } else {
            format!("{:.0}", self.log_bytes)
        };
        format!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {} | {:.3} | {:.0} | {} | {:.2} | {} | {} |",
            self.system.name(),
            self.clients,
            self.writes_per_sec(),
            pct(&r.write_lat, 0.5),
            pct(&r.write_lat, 0.99),
            pct(&r.write_lat, 1.0),
            r.reads as f64 / r.secs.max(1e-9),
            pct(&r.read_lat, 0.5),
            pct(&r.read_lat, 0.99),
            r.errors,
            self.fsyncs,
            self.leader_disk,
            log,
            self.cpu_ms,
            self.elections,
            self.load,
        )
    }
}

const HEADER: &str = "| system | clients | writes/s | write p50 ms | write p99 ms | write max ms | reads/s | read p50 ms | read p99 ms | errors | fsyncs/write | disk B/write | log B/write | cpu ms/write | elections | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

fn phase(rt: &tokio::runtime::Runtime, t: &Target, clients: usize, stop: Stop, tag: &str) -> Row {
    let leader = t.leader();
    let term0 = t.term(leader);
    let p0 = t.probe(leader);
    let run = rt.block_on(drive(t.system(), &t.urls(), clients, stop, tag));
    let p1 = t.probe(p0.leader);
    let term1 = t.term(t.leader());
    let w = run.writes.max(1) as f64;
    let used: Vec<ProcSample> = p1
        .procs
        .iter()
        .zip(&p0.procs)
        .map(|(a, b)| a.since(*b))
        .collect();
    if let Some(e) = &run.first_error {
        eprintln!(
            "{} at {clients} clients: first error: {e}",
            t.system().name()
        );
    }
    Row {
        system: t.system(),
        clients,
        fsyncs: (p1.fsyncs - p0.fsyncs) / w,
        log_bytes: (p1.log_bytes - p0.log_bytes) / w,
        leader_disk: used.get(leader).map(|s| s.write_bytes).unwrap_or(0.0) / w,
        cpu_ms: total(&used).cpu_secs * 1000.0 / w,
        elections: term1 - term0,
        load: load_average(),
        run,
    }
}

fn seed(c: &Cluster) {
    let leader = c.wait_leader(Duration::from_secs(10));
    let printer = json!({"id": "p1", "company": "Bench", "model": "B"});
    let (code, v) = post(&c.nodes[leader].url("/api/v1/printers"), &printer).expect("printer");
    assert_eq!(code, 201, "{v}");
    let spool =
        json!({"id": "f1", "type": "PLA", "color": "red", "total_weight_in_grams": 1000000});
    let (code, v) = post(&c.nodes[leader].url("/api/v1/filaments"), &spool).expect("filament");
    assert_eq!(code, 201, "{v}");
}

/// Prints a line and keeps it for the results file.
fn emit(out: &mut String, line: &str) {
    println!("{line}");
    out.push_str(line);
    out.push('\n');
}

fn compare(out: &mut String, rows: &[Row]) {
    emit(out, "\n| clients | raft3d writes/s | etcd writes/s | raft3d/etcd | raft3d write p99 ms | etcd write p99 ms | p99 raft3d/etcd | target (64: >=1.5x, p99 <=) |\n|---|---|---|---|---|---|---|---|");
    for r in rows.iter().filter(|r| r.system == System::Raft3d) {
        let Some(e) = rows
            .iter()
            .find(|e| e.system == System::Etcd && e.clients == r.clients)
        else {
            continue;
        };
        let ratio = r.writes_per_sec() / e.writes_per_sec().max(1e-9);
        let (p99r, p99e) = (pct(&r.run.write_lat, 0.99), pct(&e.run.write_lat, 0.99));
        let target = match r.clients {
            64 if ratio >= 1.5 && p99r <= p99e => "met",
            64 => "MISSED",
            _ => "",
        };
        let line = format!(
            "| {} | {:.0} | {:.0} | {:.2}x | {:.1} | {:.1} | {:.2} | {target} |",
            r.clients,
            r.writes_per_sec(),
            e.writes_per_sec(),
            ratio,
            p99r,
            p99e,
            p99r / p99e.max(1e-9),
        );
        emit(out, &line);
    }
}

fn restart_phase(rt: &tokio::runtime::Runtime, c: &mut Cluster, jobs: u64, out: &mut String) {
    let load = phase(rt, &Target::Raft3d(c), 64, Stop::Created(jobs), "load");
    let leader = c.wait_leader(Duration::from_secs(30));
    let held = metric(c, leader, "raft3d_jobs");
    emit(out, &format!(
        "\nloaded {} jobs with 64 clients in {:.1} s ({:.0} jobs/s, write p99 {:.1} ms, {} errors, {} elections); the farm holds {held} jobs",
        load.run.writes, load.run.secs, load.writes_per_sec(), pct(&load.run.write_lat, 0.99), load.run.errors, load.elections
    ));
    let follower = (leader + 1) % c.nodes.len();
    let dir = c.nodes[follower].data.join(&c.nodes[follower].id);
    let snaps = restart::dir_bytes(&dir.join("snapshots"));
    let total = restart::dir_bytes(&dir);
    emit(
        out,
        &format!(
            "restart of follower {} (data dir {:.1} MB, of which snapshots {:.1} MB):",
            c.nodes[follower].id,
            total as f64 / 1e6,
            snaps as f64 / 1e6
        ),
    );
    let term0 = metric(c, leader, "raft3d_term");
    for graceful in [true, false] {
        let r = restart::restart(c, follower, graceful);
        emit(
            out,
            &format!(
                "  {}: stopped in {:.0} ms; start to /readyz {:.0} ms; start to caught up {:.0} ms",
                r.how,
                r.stop.as_secs_f64() * 1000.0,
                r.ready.as_secs_f64() * 1000.0,
                r.caught_up.as_secs_f64() * 1000.0
            ),
        );
    }
    let after = c.wait_leader(Duration::from_secs(30));
    emit(
        out,
        &format!(
            "  elections during the restarts: {}",
            metric(c, after, "raft3d_term") - term0
        ),
    );
}

fn failover_phase(c: &mut Cluster, reps: usize, out: &mut String) {
    let mut times = Vec::new();
    for rep in 0..reps {
        let leader = c.wait_leader(Duration::from_secs(15));
        let survivor = (leader + 1) % 3;
        c.node(leader).kill9();
        let killed = Instant::now();
        let url = c.nodes[survivor].url("/api/v1/print_jobs");
        wait_for("a write after failover", Duration::from_secs(30), || {
            let body = json!({"id": format!("fo-{rep}"), "printer_id": "p1", "filament_id": "f1", "filepath": "a", "print_weight_in_grams": 0.001});
            matches!(post(&url, &body), Ok((201, _))).then_some(())
        });
        times.push(killed.elapsed());
        c.node(leader).spawn(&[]);
        c.wait_voters(3, Duration::from_secs(60));
        let back = c.nodes[leader].url("/readyz");
        wait_for(
            "the old leader ready again",
            Duration::from_secs(120),
            || matches!(get(&back), Ok((200, _))).then_some(()),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    times.sort();
    emit(
        out,
        &format!(
            "\nfailover after kill -9 of the leader ({} runs): p50 {:.0} ms, max {:.0} ms",
            times.len(),
            pct(&times, 0.5),
            pct(&times, 1.0)
        ),
    );
}

fn main() {
    proc_stats::kill_children_on_panic();
    let a = args();
    let mut c = Cluster::new(3);
    if let Some(cfg) = &a.config {
        c = c.with_args(&["--config", cfg]);
    }
    c.boot();
    seed(&c);
    let etcd = a
        .vs_etcd
        .then(|| EtcdCluster::start(3).unwrap_or_else(|e| panic!("{e}")));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    emit(&mut out, &format!(
        "loadgen: 3-node clusters on loopback, {cores} cores, {} s per phase, load average {} at start{}",
        a.seconds,
        load_average(),
        etcd.as_ref().map(|e| format!("; {}", e.version)).unwrap_or_default()
    ));
    emit(&mut out, "fsyncs and disk bytes: the leader's, per acknowledged write; cpu: all three server processes; elections: term growth during the phase\n");
    emit(&mut out, HEADER);
    let mut rows = Vec::new();
    for &n in &a.clients {
        let mut targets = vec![Target::Raft3d(&c)];
        targets.extend(etcd.as_ref().map(Target::Etcd));
        for t in &targets {
            let row = phase(
                &rt,
                t,
                n,
                Stop::After(Duration::from_secs(a.seconds)),
                &format!("c{n}"),
            );
            emit(&mut out, &row.line());
            rows.push(row);
        }
    }
    if etcd.is_some() {
        compare(&mut out, &rows);
    }
    drop(etcd);
    if a.steady > 0 {
        let row = phase(
            &rt,
            &Target::Raft3d(&c),
            64,
            Stop::After(Duration::from_secs(a.steady)),
            "steady",
        );
        emit(
            &mut out,
            &format!("\nsteady run, {} s at 64 clients:\n{HEADER}", a.steady),
        );
        emit(&mut out, &row.line());
        emit(
            &mut out,
            &format!(
                "elections during the steady run: {} (target 0: {})",
                row.elections,
                if row.elections == 0.0 {
                    "met"
                } else {
                    "MISSED"
                }
            ),
        );
    }
    if a.restart_jobs > 0 {
        restart_phase(&rt, &mut c, a.restart_jobs, &mut out);
    }
    if a.failover > 0 {
        failover_phase(&mut c, a.failover, &mut out);
    }
    if let Some(dir) = std::path::Path::new(&a.out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&a.out, &out).expect("write results");
    // The node logs, for explaining an election or an error in the table.
    let logs = std::path::Path::new(&a.out).with_extension("logs");
    let _ = std::fs::create_dir_all(&logs);
    for n in &c.nodes {
        let _ = std::fs::write(logs.join(format!("{}.log", n.id)), n.log_text());
    }
    println!(
        "\nresults written to {}, node logs to {}",
        a.out,
        logs.display()
    );
}
