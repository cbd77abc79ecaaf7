//! The client side: N concurrent HTTP clients, each looping "create a job, read it back,
//! change its status" against one node (client i talks to node i mod 3), with the same shape
//! for Raft3D and etcd. For etcd a job is a key `jobs/<id>` holding the job's JSON (the same
//! fields and size Raft3D stores); creation and status change are puts, the read is a
//! (linearizable) range request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::etcd::base64;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum System {
    Raft3d,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Raft3d => "raft3d",
            System::Etcd => "etcd",
        }
    }
}

/// When the clients stop.
#[derive(Clone, Copy)]
pub enum Stop {
    /// Run the create/read/status loop until the time is up.
    After(Duration),
    /// Only create jobs, this many in total (loading a large farm).
    Created(u64),
}

#[derive(Default)]
pub struct Run {
    pub writes: u64,
    pub reads: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub write_lat: Vec<Duration>,
    pub read_lat: Vec<Duration>,
    pub secs: f64,
}

fn job_json(id: &str, status: &str) -> String {
    // The fields and sizes of a Raft3D job as the API returns it.
    json!({
        "id": id, "printer_id": "p1", "filament_id": "f1", "filepath": "cube.gcode",
        "print_weight_in_grams": 0.001, "status": status,
        "created_at": "2025-01-01T12:00:00.000Z", "updated_at": "2025-01-01T12:00:00.000Z"
    })
    .to_string()
}

/// One request; `Err` carries what went wrong, for the report.
async fn op(
    http: &reqwest::Client,
    system: System,
    base: &str,
    kind: &str,
    id: &str,
) -> Result<(), String> {
    let (req, want) = match (system, kind) {
        (System::Raft3d, "create") => (
            http.post(format!("{base}/api/v1/print_jobs")).json(&json!({
                "id": id, "printer_id": "p1", "filament_id": "f1",
                "filepath": "cube.gcode", "print_weight_in_grams": 0.001
            })),
            201,
        ),
        (System::Raft3d, "read") => (http.get(format!("{base}/api/v1/print_jobs/{id}")), 200),
        (System::Raft3d, _) => (
            http.post(format!(
                "{base}/api/v1/print_jobs/{id}/status?status=canceled"
            )),
            200,
        ),
        (System::Etcd, "read") => (
            http.post(format!("{base}/v3/kv/range"))
                .json(&json!({"key": base64(format!("jobs/{id}").as_bytes())})),
            200,
        ),
        (System::Etcd, kind) => {
            let status = if kind == "create" {
                "Queued"
            } else {
                "Canceled"
            };
            (
                http.post(format!("{base}/v3/kv/put")).json(&json!({
                    "key": base64(format!("jobs/{id}").as_bytes()),
                    "value": base64(job_json(id, status).as_bytes()),
                })),
                200,
            )
        }
    };
    let resp = req.send().await.map_err(|e| format!("{kind}: {e}"))?;
    let code = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| format!("{kind}: {e}"))?;
    if code != want {
        return Err(format!("{kind}: {code} {}", String::from_utf8_lossy(&body)));
    }
    if system == System::Etcd && kind == "read" && !body.windows(6).any(|w| w == b"\"kvs\":") {
        return Err(format!(
            "read: key missing: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}

/// Runs `clients` concurrent clients against `urls` until `stop`.
pub async fn drive(system: System, urls: &[String], clients: usize, stop: Stop, tag: &str) -> Run {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let seq = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let base = urls[c % urls.len()].clone();
        let (seq, errors, first_error) = (seq.clone(), errors.clone(), first_error.clone());
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut w, mut r) = (Vec::new(), Vec::new());
            let fail = |e: String| {
                errors.fetch_add(1, Ordering::Relaxed);
                first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            };
            loop {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                match stop {
                    Stop::After(d) if started.elapsed() >= d => break,
                    Stop::Created(total) if n >= total => break,
                    _ => {}
                }
                let id = format!("{tag}-{n}");
                let t = Instant::now();
                match op(&http, system, &base, "create", &id).await {
                    Ok(()) => w.push(t.elapsed()),
                    Err(e) => {
                        fail(e);
                        continue;
                    }
                }
                if matches!(stop, Stop::Created(_)) {
                    continue;
                }
                let t = Instant::now();
                match op(&http, system, &base, "read", &id).await {
                    Ok(()) => r.push(t.elapsed()),
                    Err(e) => fail(e),
                }
                let t = Instant::now();
                match op(&http, system, &base, "status", &id).await {
                    Ok(()) => w.push(t.elapsed()),
                    Err(e) => fail(e),
                }
            }
            (w, r)
        }));
    }
    let mut run = Run::default();
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
    run.first_error = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    run.write_lat.sort();
    run.read_lat.sort();
    run
}

/// Percentile `p` (0..=1) of sorted latencies, in milliseconds.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}
