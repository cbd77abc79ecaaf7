//! Printing through the cluster with the agents' virtual printers: a committed `Running`
//! starts the print on the agent that drives the printer, the agent proposes `Done`, and the
//! filament is deducted exactly once on every node — through cancel, pause, an agent killed
//! mid-print, and a leader killed while the printer finishes.

use std::path::Path;
use std::time::Duration;

use raft3d_tests::support::{get, post, post_raw, wait_for, Cluster};
use serde_json::{json, Value};

/// A 3-node cluster where node i drives virtual printer `virtual-i` at `speed`.
fn farm(speed: f64) -> Cluster {
    let mut c = Cluster::new(3);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/gcode");
    for i in 0..3 {
        let cfg = c.config_file(
            &format!("node{}.toml", i + 1),
            &format!(
                "gcode_dir = {:?}\n[[printers]]\nid = \"virtual-{}\"\ncompany = \"Raft3D\"\nmodel = \"Virtual\"\nconnection = {{ kind = \"virtual\", speed = {speed} }}\n",
                samples.display().to_string(),
                i + 1
            ),
        );
        c.nodes[i].extra = vec!["--config".into(), cfg];
    }
    c.boot();
    wait_for(
        "the printers to be registered",
        Duration::from_secs(20),
        || {
            let (_, v) = get(&c.nodes[0].url("/api/v1/printers")).ok()?;
            (v.as_array()?.len() == 3).then_some(())
        },
    );
    let (code, _) = post(
        &c.nodes[0].url("/api/v1/filaments"),
        &json!({"id": "f1", "type": "PLA", "color": "red", "total_weight_in_grams": 1000}),
    )
    .unwrap();
    assert_eq!(code, 201);
    c
}

fn job(c: &Cluster, via: usize, id: &str, printer: &str, file: &str, grams: f64) {
    let (code, v) = post(&c.nodes[via].url("/api/v1/print_jobs"), &json!({"id": id, "printer_id": printer, "filament_id": "f1", "filepath": file, "print_weight_in_grams": grams})).unwrap();
    assert_eq!(code, 201, "{v}");
}

fn set(c: &Cluster, via: usize, id: &str, status: &str) -> (u16, Value) {
    post_raw(
        &c.nodes[via].url(&format!("/api/v1/print_jobs/{id}/status?status={status}")),
        "",
    )
    .unwrap()
}

fn status_of(c: &Cluster, via: usize, id: &str) -> Option<Value> {
    let (code, v) = get(&c.nodes[via].url(&format!("/api/v1/print_jobs/{id}"))).ok()?;
    (code == 200).then_some(v)
}

fn wait_status(c: &Cluster, via: usize, id: &str, want: &str, limit: Duration) -> Value {
    wait_for(&format!("job {id} to be {want}"), limit, || {
        let v = status_of(c, via, id)?;
        (v["status"] == want).then_some(v)
    })
}

fn remaining(c: &Cluster, via: usize) -> f64 {
    let (_, f) = get(&c.nodes[via].url("/api/v1/filaments/f1")).unwrap();
    f["remaining_weight_in_grams"].as_f64().unwrap()
}

fn telemetry(c: &Cluster, via: usize, printer: &str) -> Option<Value> {
    let (code, v) = get(&c.nodes[via].url(&format!("/api/v1/printers/{printer}/status"))).ok()?;
    (code == 200).then_some(v)
}

#[test]
fn a_job_on_node2s_printer_prints_and_deducts_on_every_node() {
    let c = farm(400.0);
    job(&c, 0, "j1", "virtual-2", "cube.gcode", 5.02);
    let (code, v) = set(&c, 2, "j1", "running");
    assert_eq!(code, 200, "{v}");
    // Telemetry is served from any node (forwarded to node2, which drives the printer).
    let t = wait_for("progress on virtual-2", Duration::from_secs(20), || {
        let t = telemetry(&c, 0, "virtual-2")?;
        (t["job_id"] == "j1" && t["progress_percent"].as_f64()? > 0.0).then_some(t)
    });
    assert_eq!(t["node_id"], "node2");
    let done = wait_status(&c, 0, "j1", "Done", Duration::from_secs(60));
    assert!(done["reason"].is_null());
    for i in 0..3 {
        assert_eq!(remaining(&c, i), 994.98, "deducted once on node{}", i + 1);
    }
}

#[test]
fn cancel_and_pause_reach_the_printer() {
    let c = farm(30.0);
    job(&c, 0, "slow", "virtual-1", "vase.gcode", 6.75);
    assert_eq!(set(&c, 1, "slow", "running").0, 200);
    wait_for("printing", Duration::from_secs(20), || {
        (telemetry(&c, 2, "virtual-1")?["state"] == "printing").then_some(())
    });
    // Pause: the feed stops; resume: it goes on.
    let (code, v) = post_raw(&c.nodes[2].url("/api/v1/print_jobs/slow/pause"), "").unwrap();
    assert_eq!(code, 200, "{v}");
    wait_for("paused", Duration::from_secs(10), || {
        (telemetry(&c, 0, "virtual-1")?["state"] == "paused").then_some(())
    });
    let before = telemetry(&c, 0, "virtual-1").unwrap()["bytes_sent"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let after = telemetry(&c, 0, "virtual-1").unwrap()["bytes_sent"]
        .as_u64()
        .unwrap();
    assert_eq!(before, after, "nothing is fed while paused");
    let (code, _) = post_raw(&c.nodes[1].url("/api/v1/print_jobs/slow/resume"), "").unwrap();
    assert_eq!(code, 200);
    wait_for("printing again", Duration::from_secs(10), || {
        let t = telemetry(&c, 0, "virtual-1")?;
        (t["state"] == "printing" && t["bytes_sent"].as_u64()? > after).then_some(())
    });
    // Cancel: the print stops, nothing is deducted, the printer takes the next job.
    assert_eq!(set(&c, 2, "slow", "cancelled").0, 200);
    wait_for("the printer to stop", Duration::from_secs(15), || {
        let s = telemetry(&c, 0, "virtual-1")?["state"]
            .as_str()?
            .to_string();
        (s == "idle").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status_of(&c, 0, "slow").unwrap()["status"], "Canceled");
    assert_eq!(remaining(&c, 0), 1000.0);
    let (code, _) = post_raw(&c.nodes[0].url("/api/v1/print_jobs/slow/pause"), "").unwrap();
    assert_eq!(code, 409, "a canceled job cannot be paused");
}

#[test]
fn a_client_done_mid_print_stops_the_printer_and_frees_it_for_the_next_job() {
    let c = farm(5.0);
    job(&c, 0, "early", "virtual-2", "vase.gcode", 6.75);
    assert_eq!(set(&c, 0, "early", "running").0, 200);
    wait_for("printing", Duration::from_secs(20), || {
        (telemetry(&c, 1, "virtual-2")?["state"] == "printing").then_some(())
    });
    // The operator takes the part off early and marks it done: the spool pays for it and
    // the printer stops feeding it.
    assert_eq!(set(&c, 2, "early", "done").0, 200);
    wait_for("the printer to stop", Duration::from_secs(15), || {
        (telemetry(&c, 0, "virtual-2")?["state"] == "idle").then_some(())
    });
    assert_eq!(remaining(&c, 1), 993.25);
    job(&c, 1, "next", "virtual-2", "cube.gcode", 5.02);
    assert_eq!(set(&c, 1, "next", "running").0, 200);
    wait_for("the next job printing", Duration::from_secs(20), || {
        let t = telemetry(&c, 0, "virtual-2")?;
        (t["state"] == "printing" && t["job_id"] == "next").then_some(())
    });
    assert_eq!(status_of(&c, 0, "next").unwrap()["status"], "Running");
}

#[test]
fn an_agent_killed_mid_print_fails_the_job_and_never_restarts_it() {
    let mut c = farm(20.0);
    job(&c, 0, "k1", "virtual-3", "vase.gcode", 6.75);
    assert_eq!(set(&c, 0, "k1", "running").0, 200);
    wait_for("printing", Duration::from_secs(20), || {
        (telemetry(&c, 0, "virtual-3")?["state"] == "printing").then_some(())
    });
    c.node(2).kill9();
    c.node(2).spawn(&[]);
    let failed = wait_status(&c, 0, "k1", "Failed", Duration::from_secs(30));
    assert!(
        failed["reason"].as_str().unwrap().contains("restarted"),
        "{failed}"
    );
    let t = wait_for("telemetry after restart", Duration::from_secs(20), || {
        telemetry(&c, 0, "virtual-3")
    });
    assert_ne!(t["state"], "printing", "the print was not restarted: {t}");
    assert_ne!(t["job_id"], "k1");
    assert_eq!(remaining(&c, 1), 1000.0, "a failed job deducts nothing");
}

#[test]
fn the_leader_killed_while_the_printer_finishes_still_gives_exactly_one_done() {
    let mut c = farm(300.0);
    let leader = c.wait_leader(Duration::from_secs(10));
    let printer_node = (leader + 1) % 3;
    let printer = format!("virtual-{}", printer_node + 1);
    job(&c, printer_node, "lk", &printer, "bracket.gcode", 4.71);
    assert_eq!(set(&c, printer_node, "lk", "running").0, 200);
    c.node(leader).kill9();
    let done = wait_status(&c, printer_node, "lk", "Done", Duration::from_secs(60));
    assert_eq!(done["status"], "Done");
    c.node(leader).spawn(&[]);
    for i in 0..3 {
        wait_for(
            &format!("node{} to see one deduction", i + 1),
            Duration::from_secs(20),
            || {
                (get(&c.nodes[i].url("/api/v1/filaments/f1")).ok()?.1["remaining_weight_in_grams"]
                    == 995.29)
                    .then_some(())
            },
        );
    }
}
