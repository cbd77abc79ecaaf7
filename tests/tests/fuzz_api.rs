//! Bad input, at random: a seeded fuzz run over the HTTP API of a real node — random methods,
//! paths and ids, queries, JSON bodies with the API's field names and values at the edges,
//! invalid UTF-8, oversized bodies. Properties: no answer is a 5xx other than 503, the node
//! never panics or stops, every error has the documented shape, and a rejected request leaves
//! the farm's state (`state_hash`) exactly as it was.
//!
//! `RAFT3D_FUZZ_REQUESTS` sets the number of requests (default 600); `RAFT3D_FUZZ_SEED` the
//! seed (default fixed, so a failure can be replayed).

use std::time::Duration;

use raft3d_tests::seeded::SeededRng as Rng;
use raft3d_tests::support::Cluster;
use serde_json::{json, Value};

const IDS: &[&str] = &[
    "p1",
    "f1",
    "j1",
    "nope",
    "",
    "%00",
    "..%2F..%2Fetc",
    "%E2%82%AC",
    "0",
    "-1",
    "18446744073709551616",
    "a%20b",
    "x%ZZ",
];
const FIELDS: &[&str] = &[
    "id",
    "company",
    "model",
    "node_id",
    "connection",
    "type",
    "color",
    "total_weight_in_grams",
    "remaining_weight_in_grams",
    "printer_id",
    "filament_id",
    "filepath",
    "print_weight_in_grams",
    "status",
    "kind",
    "extra",
];

fn value(rng: &mut Rng, depth: u32) -> Value {
    match rng.index(if depth > 2 { 10 } else { 13 }) {
        0 => Value::Null,
        1 => json!(rng.index(2) == 0),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(1e308),
        5 => json!(-0.000001),
        6 => json!(u64::MAX),
        7 => json!(*rng.pick(&[
            "PLA",
            "pla",
            "wood",
            "Cancelled",
            "running",
            "RUNNING",
            "Failed"
        ])),
        8 => json!("x".repeat(rng.index(3) * 200)),
        9 => json!(*rng.pick(IDS)),
        10 => Value::Array((0..rng.index(3)).map(|_| value(rng, depth + 1)).collect()),
        11 => {
            json!({"kind": *rng.pick(&["serial", "virtual", "bambu", "moonraker", "telnet"]),
                   "speed": value(rng, depth + 1), "port": value(rng, depth + 1)})
        }
        _ => object(rng, depth + 1),
    }
}

fn object(rng: &mut Rng, depth: u32) -> Value {
    let mut m = serde_json::Map::new();
    for _ in 0..rng.index(7) {
        m.insert(rng.pick(FIELDS).to_string(), value(rng, depth + 1));
    }
    Value::Object(m)
}

fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.index(8) {
        0 => Vec::new(),
        1 => vec![0xff, 0xfe, b'{', 0xc3, 0x28, b'}'],
        2 => vec![b'['; 70 * 1024],
        3 => b"{\"company\": \"A\",".to_vec(),
        4 => value(rng, 0).to_string().into_bytes(),
        _ => object(rng, 0).to_string().into_bytes(),
    }
}

fn path(rng: &mut Rng) -> String {
    let id = rng.pick(IDS);
    let p = match rng.index(14) {
        0 => "/api/v1/printers".to_string(),
        1 => format!("/api/v1/printers/{id}"),
        2 => format!("/api/v1/printers/{id}/status"),
        3 => "/api/v1/filaments".to_string(),
        4 => format!("/api/v1/filaments/{id}"),
        5 => "/api/v1/print_jobs".to_string(),
        6 => format!("/api/v1/print_jobs/{id}"),
        7 => format!("/api/v1/print_jobs/{id}/status"),
        8 => format!(
            "/api/v1/print_jobs/{id}/{}",
            rng.pick(&["pause", "resume", "x"])
        ),
        9 => format!("/cluster/servers?id={id}"),
        10 => "/cluster/status".to_string(),
        11 => format!("/{id}/{id}"),
        12 => "/cluster/transfer-leader".to_string(),
        _ => "/api/v2/printers".to_string(),
    };
    match rng.index(5) {
        0 => format!(
            "{p}?status={}",
            rng.pick(&["queued", "\"running\"", "done", "bogus", "", "%FF"])
        ),
        1 => format!(
            "{p}?consistency={}",
            rng.pick(&["stale", "linearizable", "maybe"])
        ),
        _ => p,
    }
}

fn state_hash(base: &str, http: &reqwest::blocking::Client) -> String {
    let v: Value = http
        .get(format!("{base}/cluster/status"))
        .send()
        .expect("status")
        .json()
        .expect("status JSON");
    v["state_hash"].as_str().expect("state_hash").to_string()
}

#[test]
fn random_requests_get_clean_errors_and_rejected_ones_change_nothing() {
    let requests: usize = std::env::var("RAFT3D_FUZZ_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let seed: u64 = std::env::var("RAFT3D_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d_d00d_beef);
    let mut c = Cluster::start(1);
    let base = c.nodes[0].url("");
    // No pooled connections: a server that closes a connection after refusing an oversized
    // body must not make the next request fail on the client side.
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    for (path, body) in [
        (
            "/api/v1/printers",
            json!({"id": "p1", "company": "Prusa", "model": "MK4"}),
        ),
        (
            "/api/v1/filaments",
            json!({"id": "f1", "type": "PLA", "color": "red", "total_weight_in_grams": 100}),
        ),
        (
            "/api/v1/print_jobs",
            json!({"id": "j1", "printer_id": "p1", "filament_id": "f1", "filepath": "cube.gcode", "print_weight_in_grams": 5}),
        ),
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .expect("seed");
        assert_eq!(r.status().as_u16(), 201);
    }

    let mut rng = Rng::new(seed);
    let mut hash = state_hash(&base, &http);
    let (mut rejected, mut accepted) = (0, 0);
    for i in 0..requests {
        let method = *rng.pick(&["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH"]);
        let path = path(&mut rng);
        let body = body(&mut rng);
        let url = format!("{base}{path}");
        let req = http
            .request(method.parse().expect("method"), &url)
            .header("content-type", "application/json")
            .body(body.clone());
        let resp = req.send().unwrap_or_else(|e| {
            panic!(
                "request {i} {method} {path} failed: {e}\n{}",
                c.nodes[0].log_text()
            )
        });
        let code = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        assert!(
            code < 500 || code == 503,
            "request {i}: {method} {path} {shown} -> {code} {text}"
        );
        let now = state_hash(&base, &http);
        if code >= 400 {
            rejected += 1;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert!(
                v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                "request {i}: {method} {path} -> {code} without the error shape: {text}"
            );
            assert_eq!(
                now, hash,
                "request {i}: rejected {method} {path} {shown} ({code} {text}) changed the state"
            );
        } else {
            accepted += 1;
            hash = now;
        }
    }
    assert!(c.node(0).is_running(), "the node stopped");
    assert!(
        !c.nodes[0].log_text().contains("panicked"),
        "a panic was logged"
    );
    println!("fuzz: {requests} requests, {rejected} rejected with clean errors, {accepted} accepted; seed {seed}");
    assert!(
        rejected > requests / 2,
        "the run mostly exercised bad input"
    );
}
