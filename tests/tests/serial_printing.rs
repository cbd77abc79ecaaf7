//! A real `raft3d` cluster driving a USB-serial printer: the printer is the fake Marlin
//! firmware on a pty (its slave reached through a `/dev/serial/by-id`-style symlink) declared in
//! node 2's config. The print streams every command exactly once and in order and ends `Done`
//! with one deduction on every node; unplugging the printer mid-print fails the job with the
//! reason and deducts nothing.

use std::path::Path;
use std::time::Duration;

use raft3d::printers::codec::clean_line;
use raft3d::printers::fake_pty::{FakePrinter, FakePtyConfig};
use raft3d_tests::support::{get, post, post_raw, wait_for, Cluster};
use serde_json::json;

fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/gcode")
}

/// What the firmware must execute for `file`: `M110 N0`, every command once, `M400`.
fn expected(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("read sample");
    std::iter::once("M110 N0".to_string())
        .chain(
            text.lines()
                .filter_map(|l| clean_line(l).expect("clean line")),
        )
        .chain(std::iter::once("M400".to_string()))
        .collect()
}

/// Three nodes; node2 drives serial printer `mk4` at `port`.
fn farm(port: &Path) -> Cluster {
    let mut c = Cluster::new(3);
    let cfg = c.config_file(
        "node2.toml",
        &format!(
            "gcode_dir = {:?}\n[[printers]]\nid = \"mk4\"\ncompany = \"Prusa\"\nmodel = \"MK4\"\nconnection = {{ kind = \"serial\", port = {:?}, baud = 115200 }}\n",
            samples().display().to_string(),
            port.display().to_string()
        ),
    );
    c.nodes[1].extra = vec!["--config".into(), cfg];
    c.boot();
    wait_for("mk4 connected", Duration::from_secs(30), || {
        let (code, t) = get(&c.nodes[0].url("/api/v1/printers/mk4/status")).ok()?;
        (code == 200 && t["connection"] == "connected").then_some(())
    });
    let (code, _) = post(
        &c.nodes[0].url("/api/v1/filaments"),
        &json!({"id": "f1", "type": "PLA", "color": "red", "total_weight_in_grams": 1000}),
    )
    .unwrap();
    assert_eq!(code, 201);
    c
}

fn start_job(c: &Cluster, id: &str, file: &str, grams: f64) {
    let (code, v) = post(&c.nodes[2].url("/api/v1/print_jobs"), &json!({"id": id, "printer_id": "mk4", "filament_id": "f1", "filepath": file, "print_weight_in_grams": grams})).unwrap();
    assert_eq!(code, 201, "{v}");
    let (code, v) = post_raw(
        &c.nodes[0].url(&format!("/api/v1/print_jobs/{id}/status?status=running")),
        "",
    )
    .unwrap();
    assert_eq!(code, 200, "{v}");
}

fn job_status(c: &Cluster, i: usize, id: &str) -> Option<serde_json::Value> {
    let (code, v) = get(&c.nodes[i].url(&format!("/api/v1/print_jobs/{id}"))).ok()?;
    (code == 200).then_some(v)
}

/// A runtime for the fake firmware, the fake on a pty behind a by-id style link, and a farm
/// whose node2 drives it. The runtime and temp dir must outlive the test.
fn rig() -> (
    tokio::runtime::Runtime,
    tempfile::TempDir,
    FakePrinter,
    Cluster,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("usb-Fake_Marlin-if00");
    let cfg = FakePtyConfig {
        time_scale: 200.0,
        ..FakePtyConfig::default()
    };
    let fake = rt
        .block_on(async { FakePrinter::start(&link, cfg) })
        .expect("fake printer");
    let c = farm(&link);
    (rt, dir, fake, c)
}

#[test]
fn a_serial_print_streams_every_line_once_and_ends_done_everywhere() {
    let (_rt, _dir, fake, c) = rig();
    start_job(&c, "s1", "cube.gcode", 5.02);
    let done = wait_for("s1 Done", Duration::from_secs(120), || {
        let v = job_status(&c, 0, "s1")?;
        (v["status"] != "Running").then_some(v)
    });
    assert_eq!(done["status"], "Done", "{done}");
    for i in 0..3 {
        let (_, f) = get(&c.nodes[i].url("/api/v1/filaments/f1")).unwrap();
        assert_eq!(f["remaining_weight_in_grams"], 994.98, "node{}", i + 1);
    }
    let executed: Vec<String> = fake
        .executed()
        .into_iter()
        .filter(|e| e.line.is_some())
        .map(|e| e.command)
        .collect();
    assert_eq!(
        executed,
        expected(&samples().join("cube.gcode")),
        "every command exactly once, in order"
    );
}

#[test]
fn unplugging_the_printer_mid_print_fails_the_job_with_the_reason() {
    let (rt, _dir, fake, c) = rig();
    start_job(&c, "u1", "vase.gcode", 6.75);
    wait_for("printing", Duration::from_secs(30), || {
        (fake.stats().executed > 200).then_some(())
    });
    rt.block_on(fake.unplug());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let failed = loop {
        if let Some(v) = job_status(&c, 2, "u1").filter(|v| v["status"] == "Failed") {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "u1 did not fail; node2 log:\n{}",
            c.nodes[1].log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let reason = failed["reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        reason.contains("disconnect") || reason.contains("unplug") || reason.contains("closed"),
        "{failed}"
    );
    let (_, f) = get(&c.nodes[0].url("/api/v1/filaments/f1")).unwrap();
    assert_eq!(
        f["remaining_weight_in_grams"], 1000,
        "a failed print deducts nothing"
    );
}
