//! Crash torture: clients create jobs and move them through their life while nodes are killed
//! with SIGKILL (the leader every other cycle) and restarted. Every client operation is
//! recorded (invocation, answer, times; a lost answer as unknown) and afterwards:
//!
//! - every acknowledged job is on every node, no job appears that no client asked for, and all
//!   nodes hold the same state (`state_hash`);
//! - each job's history and the spool's history are linearizable (`raft3d_tests::linearizability`);
//! - the spool's remaining weight equals its start minus the jobs that ended `Done`: none
//!   deducted twice, none missing.
//!
//! The same workload and checks run under kill -9 of single nodes and under whole-farm power
//! cuts that also drop every write not yet fsynced.
//!
//! `RAFT3D_TORTURE_CYCLES` sets the number of kill/restart cycles (default 6, the short version
//! that CI runs; the power-cut test makes half as many cuts); `RAFT3D_TORTURE_CLIENTS` the
//! number of clients (default 4).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft3d_tests::linearizability::{
    check_keys, JobInput, JobModel, JobOutput, JobState, Operation, SpoolInput, SpoolModel,
    SpoolOutput,
};
use raft3d_tests::seeded::SeededRng as Rng;
use raft3d_tests::support::{wait_for, Cluster};
use serde_json::{json, Value};

const SPOOL_GRAMS: u64 = 100_000;
const BUDGET: u64 = 5_000_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a request came to.
enum Outcome {
    /// Nothing was sent (connection refused): the operation did not happen.
    NotSent,
    /// Sent, but the answer was lost or says the outcome is unknown.
    Unknown,
    /// Answered 503 `no_leader`: no leader took the write, so it did not happen.
    NoLeader,
    Answer(u16, Value),
}

fn client() -> reqwest::blocking::Client {
    raft3d_tests::support::http_client(Duration::from_secs(10))
}

fn send(req: reqwest::blocking::RequestBuilder) -> Outcome {
    match req.send() {
        Err(e) if e.is_connect() => Outcome::NotSent,
        Err(_) => Outcome::Unknown,
        Ok(r) => {
            let code = r.status().as_u16();
            match r.text() {
                Err(_) => Outcome::Unknown,
                // "no_leader" means no leader ever took the request; any other 503 (outcome
                // unknown, shutting down) may have been applied.
                Ok(t) if code == 503 => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if v["error"]["code"] == "no_leader" {
                        Outcome::NoLeader
                    } else {
                        Outcome::Unknown
                    }
                }
                Ok(t) => Outcome::Answer(code, serde_json::from_str(&t).unwrap_or(Value::Null)),
            }
        }
    }
}

fn job_output(code: u16, v: &Value) -> JobOutput {
    let err = v["error"]["code"].as_str().unwrap_or("");
    match (code, err) {
        (201, _) => JobOutput::Created,
        (200, _) => JobOutput::Status(
            v["status"]
                .as_str()
                .and_then(JobState::parse)
                .unwrap_or_else(|| panic!("unknown status in {v}")),
        ),
        (404, _) => JobOutput::NotFound,
        (409, "duplicate_id") => JobOutput::Duplicate,
        (409, "invalid_transition") => JobOutput::InvalidTransition,
        (409, "printer_busy") => JobOutput::PrinterBusy,
        _ => panic!("unexpected answer {code} {v}"),
    }
}

#[derive(Default)]
struct History {
    jobs: BTreeMap<String, Vec<Operation<JobInput, JobOutput>>>,
    spool: Vec<Operation<SpoolInput, SpoolOutput>>,
    /// Deductions of `Done` requests with unknown outcome, by job: one that did not end `Done`
    /// cannot have deducted, so only those of jobs that ended `Done` go to the spool history.
    unknown_deducts: Vec<(String, Operation<SpoolInput, SpoolOutput>)>,
    /// Ids some client tried to create.
    attempted: BTreeSet<String>,
    acknowledged: BTreeSet<String>,
    /// Which node answered each job operation, by (job, invoke time): for diagnosis.
    served_by: BTreeMap<(String, u64), usize>,
}

struct Worker {
    id: usize,
    urls: Vec<String>,
    t0: Instant,
    http: reqwest::blocking::Client,
    history: Arc<Mutex<History>>,
    next_node: usize,
}

impl Worker {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Sends `build(base_url)` to the nodes in turn until one takes it; `None`: every node
    /// refused the connection (nothing happened).
    fn call(
        &mut self,
        build: impl Fn(&reqwest::blocking::Client, &str) -> reqwest::blocking::RequestBuilder,
    ) -> Option<(u64, Outcome, u64, usize)> {
        for _ in 0..self.urls.len() {
            let node = self.next_node % self.urls.len();
            let url = self.urls[node].clone();
            self.next_node += 1;
            let invoke = self.now();
            let out = send(build(&self.http, &url));
            let done = self.now();
            if !matches!(out, Outcome::NotSent) {
                return Some((invoke, out, done, node));
            }
        }
        None
    }

    fn job_op(&mut self, job: &str, input: JobInput) -> Option<JobOutput> {
        let printer = format!("p{}", self.id);
        let body = json!({"id": job, "printer_id": printer, "filament_id": "f1",
            "filepath": "cube.gcode", "print_weight_in_grams": 1});
        let (invoke, out, done, node) = self.call(|http, base| match input {
            JobInput::Create => http.post(format!("{base}/api/v1/print_jobs")).json(&body),
            JobInput::SetStatus(to) => http.post(format!(
                "{base}/api/v1/print_jobs/{job}/status?status={}",
                to.as_query()
            )),
            JobInput::Read => http.get(format!("{base}/api/v1/print_jobs/{job}")),
        })?;
        let (op, output) = match out {
            Outcome::Answer(code, v) => {
                let o = job_output(code, &v);
                (Operation::known(self.id, invoke, done, input, o), Some(o))
            }
            Outcome::NoLeader => {
                // Nothing happened; the job may now not exist, which later answers show.
                let mut h = self.history.lock().unwrap();
                if input == JobInput::Create {
                    h.attempted.insert(job.to_string());
                }
                return None;
            }
            _ => (Operation::unknown(self.id, invoke, input), None),
        };
        let mut h = self.history.lock().unwrap();
        h.served_by.insert((job.to_string(), invoke), node);
        if input == JobInput::Create {
            h.attempted.insert(job.to_string());
            if output == Some(JobOutput::Created) {
                h.acknowledged.insert(job.to_string());
            }
        }
        // The spool's side of a `Done`: deducted when applied, maybe when unknown.
        if let JobInput::SetStatus(JobState::Done) = input {
            let deduct = SpoolInput::Deduct { milligrams: 1000 };
            match output {
                Some(JobOutput::Status(JobState::Done)) => h.spool.push(Operation::known(
                    self.id,
                    invoke,
                    done,
                    deduct,
                    SpoolOutput::Deducted,
                )),
                None => h
                    .unknown_deducts
                    .push((job.to_string(), Operation::unknown(self.id, invoke, deduct))),
                Some(_) => {}
            }
        }
        h.jobs.entry(job.to_string()).or_default().push(op);
        output
    }

    fn read_spool(&mut self) {
        let Some((invoke, out, done, _)) =
            self.call(|http, base| http.get(format!("{base}/api/v1/filaments/f1")))
        else {
            return;
        };
        if let Outcome::Answer(200, v) = out {
            let grams = v["remaining_weight_in_grams"].as_f64().expect("remaining");
            let op = Operation::known(
                self.id,
                invoke,
                done,
                SpoolInput::Read,
                SpoolOutput::Remaining {
                    milligrams: (grams * 1000.0).round() as u64,
                },
            );
            self.history.lock().unwrap().spool.push(op);
        }
    }

    /// One job's life: create, run, then done or canceled, then a read; a job left `Running`
    /// by lost answers is canceled so the printer is free for the next one.
    fn run(&mut self, stop: &AtomicBool) {
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ (self.id as u64 + 1));
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let job = format!("c{}-{n}", self.id);
            self.job_op(&job, JobInput::Create);
            self.job_op(&job, JobInput::SetStatus(JobState::Running));
            let end = if rng.below(4) == 0 {
                JobState::Canceled
            } else {
                JobState::Done
            };
            self.job_op(&job, JobInput::SetStatus(end));
            if self.job_op(&job, JobInput::Read) == Some(JobOutput::Status(JobState::Running))
                || rng.below(8) == 0
            {
                self.job_op(&job, JobInput::SetStatus(JobState::Canceled));
            }
            if n % 4 == 0 {
                self.read_spool();
            }
        }
    }
}

/// Copies the node logs out of the temp dir (removed when the test ends); returns where.
fn keep_logs(c: &Cluster) -> String {
    let keep = std::env::temp_dir().join("raft3d-torture-logs");
    let _ = std::fs::create_dir_all(&keep);
    for n in &c.nodes {
        let _ = std::fs::write(keep.join(format!("{}.log", n.id)), n.log_text());
    }
    keep.display().to_string()
}

fn stale_json(c: &Cluster, i: usize, path: &str) -> Option<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (code, v) =
        raft3d_tests::support::get(&c.nodes[i].url(&format!("{path}{sep}consistency=stale")))
            .ok()?;
    (code == 200).then_some(v)
}

/// Clients running job lives against a cluster, recording every operation.
struct Workload {
    clients: usize,
    t0: Instant,
    wall0: Duration,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Workload {
    /// Creates one printer per client and the spool through node1, then starts the clients.
    fn start(c: &Cluster, clients: usize) -> Workload {
        let http = client();
        let base = c.nodes[0].url("");
        for i in 0..clients {
            let r = http
                .post(format!("{base}/api/v1/printers"))
                .json(&json!({"id": format!("p{i}"), "company": "Prusa", "model": "MK4"}))
                .send()
                .expect("create printer");
            assert_eq!(r.status().as_u16(), 201);
        }
        let r = http
            .post(format!("{base}/api/v1/filaments"))
            .json(&json!({"id": "f1", "type": "PLA", "color": "grey", "total_weight_in_grams": SPOOL_GRAMS}))
            .send()
            .expect("create spool");
        assert_eq!(r.status().as_u16(), 201);

        let t0 = Instant::now();
        let wall0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let history = Arc::new(Mutex::new(History::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let urls: Vec<String> = c.nodes.iter().map(|n| n.url("")).collect();
        let workers = (0..clients)
            .map(|id| {
                let mut w = Worker {
                    id,
                    urls: urls.clone(),
                    t0,
                    http: client(),
                    history: history.clone(),
                    next_node: id,
                };
                let stop = stop.clone();
                std::thread::spawn(move || w.run(&stop))
            })
            .collect();
        Workload {
            clients,
            t0,
            wall0,
            history,
            stop,
            workers,
        }
    }

    /// Stops the clients, waits for every node to converge and checks the history: no
    /// acknowledged job lost, none invented, spool = start − Done jobs on every node, and
    /// linearizable job and spool histories. `faults` says what was done, for the summary.
    fn finish_and_check(self, c: &Cluster, faults: &str) {
        std::thread::sleep(Duration::from_millis(500));
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.join().expect("worker panicked");
        }
        let took = self.t0.elapsed();
        let n = c.nodes.len();

        // Every node converges on one state.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s: Vec<Option<Value>> = (0..n).map(|i| c.status(i)).collect();
            let applied: BTreeSet<u64> = s
                .iter()
                .flatten()
                .filter_map(|s| s["applied_index"].as_u64())
                .collect();
            let hashes: BTreeSet<&str> = s
                .iter()
                .flatten()
                .filter_map(|s| s["state_hash"].as_str())
                .collect();
            if s.iter().all(Option::is_some) && applied.len() == 1 && hashes.len() == 1 {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "the nodes did not converge within 60 s: {s:?}\nlogs copied to {}",
                    keep_logs(c)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }

        let h = self.history.lock().unwrap();
        for i in 0..n {
            let jobs = stale_json(c, i, "/api/v1/print_jobs").expect("list jobs");
            let stored: BTreeSet<String> = jobs
                .as_array()
                .expect("array")
                .iter()
                .filter_map(|j| j["id"].as_str().map(String::from))
                .collect();
            let missing: Vec<_> = h.acknowledged.difference(&stored).collect();
            assert!(
                missing.is_empty(),
                "node{}: acknowledged jobs lost: {missing:?}; logs copied to {}",
                i + 1,
                keep_logs(c)
            );
            let invented: Vec<_> = stored.difference(&h.attempted).collect();
            assert!(
                invented.is_empty(),
                "node{}: jobs nobody created: {invented:?}",
                i + 1
            );

            // Remaining = start − the jobs that ended Done, on every node.
            let done = jobs
                .as_array()
                .expect("array")
                .iter()
                .filter(|j| j["status"] == "Done")
                .count() as u64;
            let spool = stale_json(c, i, "/api/v1/filaments/f1").expect("spool");
            assert_eq!(
                spool["remaining_weight_in_grams"].as_u64(),
                Some(SPOOL_GRAMS - done),
                "node{}: {done} jobs Done",
                i + 1
            );
        }

        let jobs = check_keys(h.jobs.clone(), |_| JobModel, BUDGET);
        let ended_done: BTreeSet<String> = stale_json(c, 0, "/api/v1/print_jobs")
            .expect("list jobs")
            .as_array()
            .expect("array")
            .iter()
            .filter(|j| j["status"] == "Done")
            .filter_map(|j| j["id"].as_str().map(String::from))
            .collect();
        let mut spool_ops = h.spool.clone();
        spool_ops.extend(
            h.unknown_deducts
                .iter()
                .filter(|(job, _)| ended_done.contains(job))
                .map(|(_, op)| op.clone()),
        );
        let mut spool_keys = BTreeMap::new();
        spool_keys.insert("f1".to_string(), spool_ops);
        let spool = check_keys(
            spool_keys,
            |_| SpoolModel {
                start_milligrams: SPOOL_GRAMS * 1000,
            },
            BUDGET,
        );
        println!(
            "torture: {faults} in {took:.1?} with {} clients; {} job ops on {} jobs ({} with unknown outcome), \
             {} spool ops ({} unknown); {} acknowledged jobs on every node; violations: {} jobs, {} spool; \
             inconclusive: {} jobs, {} spool",
            self.clients,
            jobs.operations,
            jobs.keys,
            jobs.unknown,
            spool.operations,
            spool.unknown,
            h.acknowledged.len(),
            jobs.violations.len(),
            spool.violations.len(),
            jobs.inconclusive.len(),
            spool.inconclusive.len()
        );
        if !jobs.violations.is_empty() {
            let finals: Vec<String> = jobs
                .violations
                .iter()
                .flat_map(|(id, _)| (0..n).map(move |i| (i, id.clone())))
                .map(|(i, id)| {
                    let j = stale_json(c, i, &format!("/api/v1/print_jobs/{id}"));
                    format!("node{}: {id} = {j:?}", i + 1)
                })
                .collect();
            let served: Vec<String> = jobs
                .violations
                .iter()
                .flat_map(|(id, _)| h.served_by.range((id.clone(), 0)..=(id.clone(), u64::MAX)))
                .map(|((id, at), node)| {
                    format!(
                        "{id} op at {:.3}s served by node{}",
                        *at as f64 / 1e9,
                        node + 1
                    )
                })
                .collect();
            let keep = keep_logs(c);
            panic!(
                "{:?}\nfinal states:\n{}\n{}\nlogs copied to {} (operation times count from UNIX time {:.3} s)",
                jobs.violations,
                finals.join("\n"),
                served.join("\n"),
                keep,
                self.wall0.as_secs_f64()
            );
        }
        if let Some((_, why)) = spool.violations.first() {
            let tail: Vec<&str> = why.lines().rev().take(12).collect();
            panic!(
                "spool history is not linearizable; the last lines of the search:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        assert!(jobs.inconclusive.is_empty() && spool.inconclusive.is_empty());
        assert!(h.acknowledged.len() > 4, "the clients made progress");
    }
}

#[test]
fn kill9_cycles_lose_no_acknowledged_write_and_histories_are_linearizable() {
    let cycles = env_or("RAFT3D_TORTURE_CYCLES", 6);
    let clients = env_or("RAFT3D_TORTURE_CLIENTS", 4);
    let mut c = Cluster::start(3);
    let load = Workload::start(&c, clients);
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let mut kills = Vec::new();
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(400 + rng.below(600)));
        let victim = if cycle % 2 == 0 {
            c.wait_leader(Duration::from_secs(30))
        } else {
            rng.below(3) as usize
        };
        c.node(victim).kill9();
        kills.push(c.nodes[victim].id.clone());
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
        c.node(victim).spawn(&[]);
        wait_for(
            "the restarted node to serve",
            Duration::from_secs(30),
            || c.status(victim),
        );
    }
    load.finish_and_check(&c, &format!("{cycles} kill -9 cycles ({kills:?})"));
}

/// Sums the `undone_writes=N` the nodes logged when they reopened after a simulated cut.
fn undone_writes(c: &Cluster) -> u64 {
    c.nodes
        .iter()
        .flat_map(|n| {
            n.log_text()
                .lines()
                .filter_map(|l| {
                    let rest = l.split("undone_writes=").nth(1)?;
                    rest.split(|ch: char| !ch.is_ascii_digit())
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The whole farm loses power at once, several times, under load: every node is killed and
/// its Raft log rolled back to its last fsync (`RAFT3D_SIMULATE_POWER_LOSS`), as a disk would
/// be after a power cut. Acknowledged writes must survive, and the votes too (a node that
/// forgot its vote could elect two leaders in one term, which the checker would catch).
#[test]
fn whole_farm_power_cuts_lose_no_acknowledged_write() {
    let cuts = env_or("RAFT3D_TORTURE_CYCLES", 6).div_ceil(2);
    let clients = env_or("RAFT3D_TORTURE_CLIENTS", 4);
    let mut c = Cluster::new(3).with_env("RAFT3D_SIMULATE_POWER_LOSS", "1");
    c.boot();
    let undone_at_boot = undone_writes(&c);
    let load = Workload::start(&c, clients);
    let mut rng = Rng::new(0x5851_f42d_4c95_7f2d);
    for _ in 0..cuts {
        std::thread::sleep(Duration::from_millis(600 + rng.below(800)));
        for i in 0..3 {
            c.node(i).kill9();
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        for i in 0..3 {
            c.node(i).spawn(&[]);
        }
        c.wait_leader(Duration::from_secs(30));
    }
    let undone = undone_writes(&c) - undone_at_boot;
    load.finish_and_check(
        &c,
        &format!("{cuts} whole-farm power cuts ({undone} unsynced writes undone on reopen)"),
    );
    assert!(
        undone > 0,
        "no cut caught an unsynced write, so the simulation proved nothing; logs copied to {}",
        keep_logs(&c)
    );
}

/// Waits until a node other than `old` says it leads (the majority side elected a leader).
fn wait_new_leader(c: &Cluster, old: usize, among: &[usize], what: &str) -> usize {
    wait_for(what, Duration::from_secs(15), || {
        among
            .iter()
            .copied()
            .filter(|&i| i != old)
            .find(|&i| c.status(i).is_some_and(|s| s["is_leader"] == true))
    })
}

/// Partitions of a 3-node cluster under load, each for 2–3.5 s and then healed: the leader cut
/// off both ways, the leader muted one way (its requests lost, the others' reaching it), a
/// follower cut off, and every link slowed by 30 ms. While the leader is cut off or muted the
/// other two must elect a new one. Afterwards the same checks as the crash tests.
#[test]
fn partitions_of_three_nodes_lose_no_acknowledged_write_and_histories_are_linearizable() {
    let cycles = env_or("RAFT3D_TORTURE_CYCLES", 6).max(4);
    let clients = env_or("RAFT3D_TORTURE_CLIENTS", 4);
    let (mut c, net) = Cluster::new_behind_proxies(3);
    c.boot();
    let load = Workload::start(&c, clients);
    let mut rng = Rng::new(0x94d0_49bb_1331_11eb);
    let mut done = Vec::new();
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(300 + rng.below(500)));
        let leader = c.wait_leader(Duration::from_secs(30));
        let all = [0, 1, 2];
        let what = match cycle % 4 {
            0 => {
                net.isolate(leader);
                wait_new_leader(
                    &c,
                    leader,
                    &all,
                    "a new leader while the old one is cut off",
                );
                format!("node{} (leader) cut off", leader + 1)
            }
            1 => {
                net.mute(leader);
                wait_new_leader(&c, leader, &all, "a new leader while the old one is muted");
                format!("node{} (leader) muted one way", leader + 1)
            }
            2 => {
                let f = (leader + 1 + rng.below(2) as usize) % 3;
                net.isolate(f);
                format!("node{} (follower) cut off", f + 1)
            }
            _ => {
                net.delay_all(Duration::from_millis(30));
                "every link delayed 30 ms".to_string()
            }
        };
        std::thread::sleep(Duration::from_millis(2000 + rng.below(1500)));
        net.heal();
        done.push(what);
    }
    c.wait_leader(Duration::from_secs(30));
    load.finish_and_check(
        &c,
        &format!(
            "{} partitions ({}; {} connections cut)",
            done.len(),
            done.join(", "),
            net.dropped()
        ),
    );
}

/// Five nodes split 3/2 under load, the leader on the minority side (the majority must elect
/// a new one) and then on the majority side, healed after each; then the same checks.
#[test]
fn splits_of_five_nodes_lose_no_acknowledged_write_and_histories_are_linearizable() {
    let cycles = env_or("RAFT3D_TORTURE_CYCLES", 6).div_ceil(2).max(2);
    let clients = env_or("RAFT3D_TORTURE_CLIENTS", 4);
    let (mut c, net) = Cluster::new_behind_proxies(5);
    c.boot();
    let load = Workload::start(&c, clients);
    let mut rng = Rng::new(0xbf58_476d_1ce4_e5b9);
    let mut done = Vec::new();
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(300 + rng.below(500)));
        let leader = c.wait_leader(Duration::from_secs(30));
        let mut others: Vec<usize> = (0..5).filter(|&i| i != leader).collect();
        let k = rng.below(others.len() as u64) as usize;
        let buddy = others.remove(k);
        if cycle % 2 == 0 {
            // Leader and one more against three.
            net.split(&[&[leader, buddy], &others]);
            wait_new_leader(&c, leader, &others, "a leader on the 3-node side");
            done.push(format!(
                "node{}+node{} (with the leader) | 3",
                leader + 1,
                buddy + 1
            ));
        } else {
            // Leader and two more against two.
            let minority = [others[0], others[1]];
            let majority = [leader, buddy, others[2]];
            net.split(&[&majority, &minority]);
            done.push(format!(
                "3 (with the leader) | node{}+node{}",
                minority[0] + 1,
                minority[1] + 1
            ));
        }
        std::thread::sleep(Duration::from_millis(2000 + rng.below(1500)));
        net.heal();
    }
    c.wait_leader(Duration::from_secs(30));
    load.finish_and_check(
        &c,
        &format!(
            "{} 3/2 splits of 5 nodes ({}; {} connections cut)",
            done.len(),
            done.join(", "),
            net.dropped()
        ),
    );
}
