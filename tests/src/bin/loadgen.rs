//! Load generator: starts a 3-node Raft3D cluster on loopback (release binary, durable
//! storage), drives it with N concurrent HTTP clients doing realistic writes (job creation,
//! status changes) and reads, and prints throughput and latency percentiles per concurrency,
//! plus fsyncs and bytes written per acknowledged write. `--failover K` also measures how long
//! writes stop when the leader is killed with SIGKILL (K repetitions).
//!
//! Usage: cargo run --release -p raft3d-tests --bin loadgen -- [--clients 1,8,64,256]
//!        [--seconds 10] [--failover 20] [--out FILE]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft3d_tests::support::{get, post, wait_for, Cluster};
use serde_json::json;

struct Args {
    clients: Vec<usize>,
    seconds: u64,
    failover: usize,
    out: String,
    config: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        clients: vec![1, 8, 64, 256],
        seconds: 10,
        failover: 0,
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
            "--out" => a.out = val(),
            "--config" => a.config = Some(val()),
            other => panic!("unknown flag {other}; see the usage in the source header"),
        }
    }
    a
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn metric(c: &Cluster, i: usize, name: &str) -> f64 {
    let Ok((_, body)) = get(&c.nodes[i].url("/metrics")) else {
        return 0.0;
    };
    body.as_str()
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

struct Run {
    writes: u64,
    reads: u64,
    errors: u64,
    write_lat: Vec<Duration>,
    read_lat: Vec<Duration>,
    secs: f64,
}

async fn drive(urls: Vec<String>, clients: usize, seconds: u64, tag: &str) -> Run {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(512)
        .build()
        .expect("client");
    let seq = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let base = urls[c % urls.len()].clone();
        let seq = seq.clone();
        let errors = errors.clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut w = Vec::new();
            let mut r = Vec::new();
            while Instant::now() < deadline {
                let id = format!("{tag}-{}", seq.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                let ok = http
                    .post(format!("{base}/api/v1/print_jobs"))
                    .json(&json!({"id": id, "printer_id": "p1", "filament_id": "f1", "filepath": "cube.gcode", "print_weight_in_grams": 0.001}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 201);
                if !ok { errors.fetch_add(1, Ordering::Relaxed); continue; }
                w.push(t.elapsed());
                let t = Instant::now();
                let ok = http.get(format!("{base}/api/v1/print_jobs/{id}")).send().await.is_ok_and(|r| r.status() == 200);
                if ok { r.push(t.elapsed()) } else { errors.fetch_add(1, Ordering::Relaxed); }
                let t = Instant::now();
                let ok = http
                    .post(format!("{base}/api/v1/print_jobs/{id}/status?status=canceled"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok { w.push(t.elapsed()) } else { errors.fetch_add(1, Ordering::Relaxed); }
            }
            (w, r)
        }));
    }
    let mut run = Run {
        writes: 0,
        reads: 0,
        errors: 0,
        write_lat: Vec::new(),
        read_lat: Vec::new(),
        secs: 0.0,
    };
    for t in tasks {
        if let Ok((w, r)) = t.await {
            run.write_lat.extend(w);
            run.read_lat.extend(r);
        }
    }
    run.secs = started.elapsed().as_secs_f64();
    run.writes = run.write_lat.len() as u64;
    run.reads = run.read_lat.len() as u64;
    run.errors = errors.load(Ordering::Relaxed);
    run.write_lat.sort();
    run.read_lat.sort();
    run
}

fn main() {
    let a = args();
    let mut c = Cluster::new(3);
    if let Some(cfg) = &a.config {
        c = c.with_args(&["--config", cfg]);
    }
    c.boot();
    let leader = c.wait_leader(Duration::from_secs(10));
    assert_eq!(
        post(
            &c.nodes[leader].url("/api/v1/printers"),
            &json!({"id": "p1", "company": "Bench", "model": "B"})
        )
        .unwrap()
        .0,
        201
    );
    assert_eq!(
        post(
            &c.nodes[leader].url("/api/v1/filaments"),
            &json!({"id": "f1", "type": "PLA", "color": "red", "total_weight_in_grams": 1000000})
        )
        .unwrap()
        .0,
        201
    );
    let urls: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.http))
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut out = String::new();
    out.push_str("| clients | writes/s | write p50 ms | write p99 ms | write max ms | reads/s | read p50 ms | read p99 ms | errors | fsyncs/write | log bytes/write | elections |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    println!("{}", out.trim_end());
    for &n in &a.clients {
        let leader = c.wait_leader(Duration::from_secs(10));
        let f0 = metric(&c, leader, "raft3d_log_fsyncs_total");
        let b0 = metric(&c, leader, "raft3d_log_bytes_written_total");
        let t0 = metric(&c, leader, "raft3d_term");
        let run = rt.block_on(drive(urls.clone(), n, a.seconds, &format!("c{n}")));
        let f1 = metric(&c, leader, "raft3d_log_fsyncs_total");
        let b1 = metric(&c, leader, "raft3d_log_bytes_written_total");
        let after = c.wait_leader(Duration::from_secs(10));
        let t1 = metric(&c, after, "raft3d_term");
        let w = run.writes.max(1) as f64;
        let line = format!(
            "| {n} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {} | {:.3} | {:.0} | {} |",
            run.writes as f64 / run.secs,
            pct(&run.write_lat, 0.5),
            pct(&run.write_lat, 0.99),
            pct(&run.write_lat, 1.0),
            run.reads as f64 / run.secs,
            pct(&run.read_lat, 0.5),
            pct(&run.read_lat, 0.99),
            run.errors,
            (f1 - f0) / w,
            (b1 - b0) / w,
            t1 - t0,
        );
        println!("{line}");
        out.push_str(&line);
        out.push('\n');
    }
    if a.failover > 0 {
        let mut c = c;
        let mut times = Vec::new();
        for rep in 0..a.failover {
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
            c.wait_voters(3, Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(500));
        }
        times.sort();
        let line = format!(
            "\nfailover after kill -9 of the leader ({} runs): p50 {:.0} ms, max {:.0} ms",
            times.len(),
            pct(&times, 0.5),
            pct(&times, 1.0)
        );
        println!("{line}");
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(dir) = std::path::Path::new(&a.out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&a.out, &out).expect("write results");
    println!("\nresults written to {}", a.out);
}
