//! Prometheus text exposition for `GET /metrics`: raft health, replication, request counts and
//! latency histograms per route, apply and storage figures, and farm gauges. Request figures
//! are recorded by a middleware; everything else is read from live state at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use openraft::ServerState;

use crate::cluster::Node;
use crate::domain::JobStatus;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default, Clone)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Request counts and latencies per (method, route).
#[derive(Default)]
pub struct HttpMetrics {
    routes: Mutex<BTreeMap<(String, String), RouteStats>>,
}

impl HttpMetrics {
    fn record(&self, method: &str, route: &str, status: u16, secs: f64) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let r = routes
            .entry((method.to_string(), route.to_string()))
            .or_default();
        *r.by_status.entry(status).or_default() += 1;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                r.buckets[i] += 1;
            }
        }
        r.count += 1;
        r.sum += secs;
    }
}

/// Middleware: records each request under its route template (never the raw path, so ids do
/// not explode the series count).
pub async fn track(State(m): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    m.record(
        &method,
        &route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn val(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        if l.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
        }
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, kind, help);
        self.val(name, &[], v);
    }
}

/// Renders every series.
pub fn render(node: &Node, http: &HttpMetrics) -> String {
    let mut o = Out(String::new());
    let m = node.metrics();
    let is_leader = m.state == ServerState::Leader;
    o.one(
        "raft3d_is_leader",
        "gauge",
        "1 if this node is the leader",
        is_leader as u8,
    );
    o.one("raft3d_term", "gauge", "Current Raft term", m.current_term);
    o.one(
        "raft3d_leader_known",
        "gauge",
        "1 if this node knows a leader",
        m.current_leader.is_some() as u8,
    );
    o.one(
        "raft3d_leader_changes_total",
        "counter",
        "Leader changes seen by this node",
        node.counters.leader_changes.load(Ordering::Relaxed),
    );
    o.one(
        "raft3d_leaderless_seconds_total",
        "counter",
        "Time this node spent without a known leader",
        node.counters.leaderless_ms.load(Ordering::Relaxed) as f64 / 1000.0,
    );
    let idx = |l: &Option<crate::cluster::types::LogId>| l.as_ref().map(|l| l.index()).unwrap_or(0);
    o.one(
        "raft3d_commit_index",
        "gauge",
        "Committed log index",
        idx(&m.local_committed),
    );
    o.one(
        "raft3d_applied_index",
        "gauge",
        "Applied log index",
        idx(&m.last_applied),
    );
    o.one(
        "raft3d_last_log_index",
        "gauge",
        "Last log index",
        m.last_log_index.unwrap_or(0),
    );

    let last = m.last_log_index.unwrap_or(0);
    o.head(
        "raft3d_replication_lag_entries",
        "gauge",
        "Entries a member is behind the leader (leader only)",
    );
    if let Some(rep) = &m.replication {
        for (id, matched) in rep {
            o.val(
                "raft3d_replication_lag_entries",
                &[("member", &id.0)],
                last.saturating_sub(idx(matched)),
            );
        }
    }
    let health = node.health.snapshot();
    o.head(
        "raft3d_member_last_contact_seconds",
        "gauge",
        "Seconds since the leader last heard from a member",
    );
    for (id, h) in &health {
        if let Some(ms) = h.last_contact_ms {
            o.val(
                "raft3d_member_last_contact_seconds",
                &[("member", &id.0)],
                ms as f64 / 1000.0,
            );
        }
    }
    o.head(
        "raft3d_member_failed_checks",
        "gauge",
        "Consecutive failed health checks of a member",
    );
    for (id, h) in &health {
        o.val(
            "raft3d_member_failed_checks",
            &[("member", &id.0)],
            h.failed_checks,
        );
    }

    let apply = node.sm.stats();
    o.one(
        "raft3d_applied_entries_total",
        "counter",
        "Entries applied",
        apply.entries.load(Ordering::Relaxed),
    );
    o.one(
        "raft3d_apply_seconds_total",
        "counter",
        "Time spent applying entries",
        apply.apply_nanos.load(Ordering::Relaxed) as f64 / 1e9,
    );
    o.one(
        "raft3d_snapshots_built_total",
        "counter",
        "Snapshots built by this node",
        apply.snapshots_built.load(Ordering::Relaxed),
    );
    o.one(
        "raft3d_snapshot_bytes",
        "gauge",
        "Size of the last snapshot built",
        apply.last_snapshot_bytes.load(Ordering::Relaxed),
    );
    o.one(
        "raft3d_log_fsyncs_total",
        "counter",
        "Durable log commits (fsyncs)",
        node.log_stats.fsyncs.load(Ordering::Relaxed),
    );
    o.one(
        "raft3d_log_bytes_written_total",
        "counter",
        "Bytes written to the raft log",
        node.log_stats.bytes.load(Ordering::Relaxed),
    );

    {
        let r = node.sm.read();
        o.one(
            "raft3d_printers",
            "gauge",
            "Printers in the farm",
            r.farm.printers().count(),
        );
        o.head("raft3d_jobs", "gauge", "Print jobs by status");
        for st in JobStatus::ALL {
            let n = r.farm.jobs().filter(|j| j.status == st).count();
            o.val("raft3d_jobs", &[("status", st.as_str())], n);
        }
        o.head(
            "raft3d_filament_remaining_grams",
            "gauge",
            "Remaining filament per spool",
        );
        for f in r.farm.filaments() {
            o.val(
                "raft3d_filament_remaining_grams",
                &[
                    ("filament", &f.id),
                    ("type", &format!("{:?}", f.kind).to_uppercase()),
                ],
                f.remaining_weight_in_grams.as_f64(),
            );
        }
    }

    let routes = http
        .routes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    o.head(
        "raft3d_http_requests_total",
        "counter",
        "HTTP requests by route and status",
    );
    for ((method, route), r) in &routes {
        for (status, n) in &r.by_status {
            o.val(
                "raft3d_http_requests_total",
                &[
                    ("method", method),
                    ("route", route),
                    ("status", &status.to_string()),
                ],
                n,
            );
        }
    }
    o.head(
        "raft3d_http_request_duration_seconds",
        "histogram",
        "HTTP request latency by route",
    );
    for ((method, route), r) in &routes {
        let name = "raft3d_http_request_duration_seconds";
        for (i, b) in BUCKETS.iter().enumerate() {
            o.val(
                &format!("{name}_bucket"),
                &[("method", method), ("route", route), ("le", &b.to_string())],
                r.buckets[i],
            );
        }
        o.val(
            &format!("{name}_bucket"),
            &[("method", method), ("route", route), ("le", "+Inf")],
            r.count,
        );
        o.val(
            &format!("{name}_sum"),
            &[("method", method), ("route", route)],
            r.sum,
        );
        o.val(
            &format!("{name}_count"),
            &[("method", method), ("route", route)],
            r.count,
        );
    }
    o.0
}
