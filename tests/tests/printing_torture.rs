//! Printing under faults: real prints on three virtual printers (one per node) and a
//! fake-Marlin USB-serial printer (on node2) run job after job while the leader is killed with
//! SIGKILL, other nodes are killed or stopped with SIGTERM, and all of them are restarted.
//! Clients create jobs through any node, start them, sometimes cancel them mid-print, and wait
//! for each to end. Afterwards, on every node:
//!
//! - every job is in one final state (`Done`, `Canceled` or `Failed`), the one its client first
//!   saw: a final state never changes;
//! - the spool's remaining weight equals its start minus the weights of the jobs that ended
//!   `Done`: no double deduction, none missing;
//! - no printer is still printing.
//!
//! `RAFT3D_TORTURE_CYCLES` sets the number of fault cycles (default 6).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft3d::printers::fake_pty::{FakePrinter, FakePtyConfig};
use raft3d_tests::seeded::SeededRng as Rng;
use raft3d_tests::support::{wait_for, Cluster};
use serde_json::{json, Value};

const START_MG: u64 = 10_000_000;
/// Sample files and their slicer-reported filament weights, in milligrams.
const FILES: [(&str, u64); 3] = [
    ("bracket.gcode", 4_710),
    ("cube.gcode", 5_020),
    ("vase.gcode", 6_750),
];
const FINAL: [&str; 3] = ["Done", "Canceled", "Failed"];

fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/gcode")
}

fn http() -> reqwest::blocking::Client {
    raft3d_tests::support::http_client(Duration::from_secs(10))
}

/// `None` when the node could not answer (down, restarting, no leader, outcome unknown).
fn call(req: reqwest::blocking::RequestBuilder) -> Option<(u16, Value)> {
    let r = req.send().ok()?;
    let code = r.status().as_u16();
    let v = serde_json::from_str(&r.text().ok()?).unwrap_or(Value::Null);
    (code != 503).then_some((code, v))
}

#[derive(Debug, Clone)]
struct JobRecord {
    printer: String,
    milligrams: u64,
    /// The first final state the client read.
    seen_final: String,
    took: Duration,
}

struct Client {
    printer: String,
    urls: Vec<String>,
    http: reqwest::blocking::Client,
    rng: Rng,
    next: usize,
}

impl Client {
    fn url(&mut self) -> String {
        self.next += 1;
        self.urls[self.next % self.urls.len()].clone()
    }

    /// Retries `build` on every node until one gives an answer, for at most `limit`.
    fn retry(
        &mut self,
        what: &str,
        limit: Duration,
        build: impl Fn(&reqwest::blocking::Client, &str) -> reqwest::blocking::RequestBuilder,
    ) -> (u16, Value) {
        let deadline = Instant::now() + limit;
        loop {
            let base = self.url();
            if let Some(answer) = call(build(&self.http, &base)) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no answer to {what} within {limit:?}",
                self.printer
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status(&mut self, job: &str) -> Option<Value> {
        let (code, v) = self.retry("a job read", Duration::from_secs(60), |h, b| {
            h.get(format!("{b}/api/v1/print_jobs/{job}"))
        });
        (code == 200).then_some(v)
    }

    /// One job: create, start, maybe cancel mid-print, wait for its final state.
    fn one_job(&mut self, n: usize) -> (String, JobRecord) {
        let job = format!("{}-{n}", self.printer);
        let (file, milligrams) = FILES[self.rng.below(FILES.len() as u64) as usize];
        let body = json!({"id": job, "printer_id": self.printer, "filament_id": "f1",
            "filepath": file, "print_weight_in_grams": milligrams as f64 / 1000.0});
        let (code, v) = self.retry("a job creation", Duration::from_secs(60), |h, b| {
            h.post(format!("{b}/api/v1/print_jobs")).json(&body)
        });
        // 409 duplicate_id: an earlier try whose answer was lost created it.
        assert!(
            code == 201 || (code == 409 && v["error"]["code"] == "duplicate_id"),
            "{job}: {code} {v}"
        );
        let started = Instant::now();
        loop {
            let (code, v) = self.retry("a start", Duration::from_secs(60), |h, b| {
                h.post(format!("{b}/api/v1/print_jobs/{job}/status?status=running"))
            });
            match (code, v["error"]["code"].as_str()) {
                (200, _) | (409, Some("invalid_transition")) => break,
                // The previous job's printer is still being released by a restarted agent.
                (409, Some("printer_busy")) => std::thread::sleep(Duration::from_millis(200)),
                _ => panic!("{job}: starting it answered {code} {v}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{job}: printer stayed busy"
            );
        }
        let cancel_after =
            (self.rng.below(5) == 0).then(|| Duration::from_millis(200 + self.rng.below(1500)));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(v) = self.status(&job) {
                let s = v["status"].as_str().unwrap_or_default().to_string();
                if FINAL.contains(&s.as_str()) {
                    let record = JobRecord {
                        printer: self.printer.clone(),
                        milligrams,
                        seen_final: s,
                        took: started.elapsed(),
                    };
                    return (job, record);
                }
            }
            if cancel_after.is_some_and(|d| started.elapsed() > d) {
                let (code, v) = self.retry("a cancel", Duration::from_secs(60), |h, b| {
                    h.post(format!(
                        "{b}/api/v1/print_jobs/{job}/status?status=canceled"
                    ))
                });
                assert!(
                    code == 200 || (code == 409 && v["error"]["code"] == "invalid_transition"),
                    "{job}: cancel answered {code} {v}"
                );
            }
            assert!(Instant::now() < deadline, "{job} did not end within 120 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn farm(serial_link: &Path) -> Cluster {
    let mut c = Cluster::new(3);
    for i in 0..3 {
        let mut text = format!(
            "gcode_dir = {:?}\n[[printers]]\nid = \"virtual-{}\"\ncompany = \"Raft3D\"\nmodel = \"Virtual\"\nconnection = {{ kind = \"virtual\", speed = 200 }}\n",
            samples().display().to_string(),
            i + 1
        );
        if i == 1 {
            text.push_str(&format!(
                "[[printers]]\nid = \"mk4\"\ncompany = \"Prusa\"\nmodel = \"MK4\"\nconnection = {{ kind = \"serial\", port = {:?}, baud = 115200 }}\n",
                serial_link.display().to_string()
            ));
        }
        let cfg = c.config_file(&format!("node{}.toml", i + 1), &text);
        c.nodes[i].extra = vec!["--config".into(), cfg];
    }
    c.boot();
    wait_for(
        "the printers to be registered",
        Duration::from_secs(30),
        || {
            let (_, v) = raft3d_tests::support::get(&c.nodes[0].url("/api/v1/printers")).ok()?;
            (v.as_array()?.len() == 4).then_some(())
        },
    );
    let (code, v) = raft3d_tests::support::post(
        &c.nodes[0].url("/api/v1/filaments"),
        &json!({"id": "f1", "type": "PLA", "color": "red", "total_weight_in_grams": START_MG / 1000}),
    )
    .expect("create spool");
    assert_eq!(code, 201, "{v}");
    c
}

fn stale(c: &Cluster, i: usize, path: &str) -> Option<Value> {
    let (code, v) =
        raft3d_tests::support::get(&c.nodes[i].url(&format!("{path}?consistency=stale"))).ok()?;
    (code == 200).then_some(v)
}

#[test]
fn jobs_printing_through_leader_kills_and_restarts_end_once_and_deduct_once() {
    let cycles: usize = std::env::var("RAFT3D_TORTURE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("usb-Fake_Marlin-if00");
    let fake = rt
        .block_on(async {
            FakePrinter::start(
                &link,
                FakePtyConfig {
                    time_scale: 400.0,
                    record: false,
                    ..FakePtyConfig::default()
                },
            )
        })
        .expect("fake printer");
    let mut c = farm(&link);
    let urls: Vec<String> = c.nodes.iter().map(|n| n.url("")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let jobs = Arc::new(Mutex::new(BTreeMap::new()));
    let printers = ["virtual-1", "virtual-2", "virtual-3", "mk4"];
    let clients: Vec<_> = printers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut client = Client {
                printer: p.to_string(),
                urls: urls.clone(),
                http: http(),
                rng: Rng::new(0x853c_49e6_748f_ea9b ^ i as u64),
                next: i,
            };
            let (stop, jobs) = (stop.clone(), jobs.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (id, record) = client.one_job(n);
                    jobs.lock().unwrap().insert(id, record);
                }
            })
        })
        .collect();

    let mut rng = Rng::new(0xd1b5_4a32_d192_ed03);
    let mut faults = Vec::new();
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(1500)));
        let leader = c.wait_leader(Duration::from_secs(30));
        let victim = if cycle % 2 == 0 {
            leader
        } else {
            rng.below(3) as usize
        };
        let role = if victim == leader {
            "leader"
        } else {
            "follower"
        };
        if cycle % 3 == 2 {
            c.node(victim).terminate();
            faults.push(format!("SIGTERM node{} ({role})", victim + 1));
        } else {
            c.node(victim).kill9();
            faults.push(format!("kill -9 node{} ({role})", victim + 1));
        }
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
        c.node(victim).spawn(&[]);
        wait_for(
            "the restarted node to serve",
            Duration::from_secs(30),
            || c.status(victim),
        );
    }
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().expect("client panicked");
    }

    wait_for("every node to converge", Duration::from_secs(60), || {
        let s: Vec<Value> = (0..3).map(|i| c.status(i)).collect::<Option<_>>()?;
        let same = s.windows(2).all(|w| {
            w[0]["applied_index"] == w[1]["applied_index"]
                && w[0]["state_hash"] == w[1]["state_hash"]
        });
        same.then_some(())
    });
    let jobs = jobs.lock().unwrap();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut done_mg = 0;
    for (id, r) in jobs.iter() {
        *counts.entry(r.seen_final.as_str()).or_default() += 1;
        if r.seen_final == "Done" {
            done_mg += r.milligrams;
        }
        let _ = id;
    }
    for i in 0..3 {
        let listed = stale(&c, i, "/api/v1/print_jobs").expect("list jobs");
        let stored: BTreeMap<String, String> = listed
            .as_array()
            .expect("array")
            .iter()
            .map(|j| {
                (
                    j["id"].as_str().unwrap_or_default().to_string(),
                    j["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        for (id, r) in jobs.iter() {
            assert_eq!(
                stored.get(id),
                Some(&r.seen_final),
                "node{}: job {id} on {} was first seen {} and must stay so",
                i + 1,
                r.printer,
                r.seen_final
            );
        }
        assert_eq!(
            stored.len(),
            jobs.len(),
            "node{}: jobs nobody finished: {stored:?}",
            i + 1
        );
        let spool = stale(&c, i, "/api/v1/filaments/f1").expect("spool");
        let remaining_mg = (spool["remaining_weight_in_grams"]
            .as_f64()
            .expect("remaining")
            * 1000.0)
            .round() as u64;
        assert_eq!(
            remaining_mg,
            START_MG - done_mg,
            "node{}: the spool must lose exactly the weight of the {} Done jobs",
            i + 1,
            counts.get("Done").unwrap_or(&0)
        );
    }
    for p in printers {
        wait_for(
            &format!("{p} to stop printing"),
            Duration::from_secs(30),
            || {
                let (code, t) = raft3d_tests::support::get(
                    &c.nodes[0].url(&format!("/api/v1/printers/{p}/status")),
                )
                .ok()?;
                (code == 200 && t["state"] != "printing").then_some(())
            },
        );
    }
    let per_printer: BTreeMap<&str, usize> = jobs.values().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.printer.as_str()).or_default() += 1;
        m
    });
    let longest = jobs.values().map(|r| r.took).max().unwrap_or_default();
    println!(
        "printing torture: {} jobs ({per_printer:?}) ended {counts:?} through {} faults ({}); \
         {} g deducted = the Done jobs' weights on every node; longest job {longest:.1?}; \
         serial printer executed {} commands",
        jobs.len(),
        faults.len(),
        faults.join(", "),
        done_mg as f64 / 1000.0,
        fake.stats().executed
    );
    assert!(
        counts.get("Done").copied().unwrap_or(0) > 0,
        "some jobs must finish"
    );
}
