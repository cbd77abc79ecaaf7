//! A real `raft3d` cluster driving network printers over MQTT: a simulated Klipper printer
//! behind Moonraker's MQTT API, and a simulated Bambu Lab printer behind TLS (a CA made at
//! test time, CN = the printer's serial, login `bblp` + access code). The broker and the
//! printers run in this test process on loopback; the agents are real processes. A print ends
//! `Done` with one deduction on every node, a cancel from the API reaches the printer, a cancel
//! on the printer cancels the job, the access code never leaves the agent, and when the agent
//! that supervises a network printer (Moonraker or Bambu) dies mid-print the leader takes the
//! printer over and the job still ends `Done` exactly once.

use std::time::Duration;

use raft3d::printers::fake_bambu::FakeBambu;
use raft3d::printers::fake_broker::{BrokerConfig, FakeBroker};
use raft3d::printers::fake_ftps::FakeFtps;
use raft3d::printers::fake_moonraker::FakeMoonraker;
use raft3d::printers::test_pki::TestPki;
use raft3d_tests::support::{get, post, post_raw, wait_for, Cluster};
use serde_json::{json, Value};

const SERIAL: &str = "01P00A391800123";
const CODE: &str = "34971823";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A quick failure detector: a member silent for 1 s fails a check every 0.5 s; after two
/// failed checks the leader takes over its network printers.
const FAST_HEALTH: &str =
    "[health]\ncheck_interval_ms = 500\ncontact_timeout_ms = 1000\nprinter_failover_checks = 2\n";

/// Three nodes; node `driver` (0-based) drives printer `id` with `connection` (TOML inline
/// table). Waits until the printer's state is known from another node, then adds spool f1.
fn farm(driver: usize, id: &str, connection: &str) -> Cluster {
    farm_with(driver, id, connection, "")
}

/// `farm` with `top` (top-level TOML keys) in the driving node's config.
fn farm_with(driver: usize, id: &str, connection: &str, top: &str) -> Cluster {
    let mut c = Cluster::new(3);
    for i in 0..3 {
        let printer = if i == driver {
            format!(
                "[[printers]]\nid = \"{id}\"\ncompany = \"Farm\"\nmodel = \"Networked\"\nconnection = {connection}\n"
            )
        } else {
            String::new()
        };
        let cfg = c.config_file(
            &format!("node{}.toml", i + 1),
            &format!(
                "{}{FAST_HEALTH}{printer}",
                if i == driver { top } else { "" }
            ),
        );
        c.nodes[i].extra = vec!["--config".into(), cfg];
    }
    c.boot();
    let other = (driver + 1) % 3;
    wait_for(&format!("{id} connected"), Duration::from_secs(40), || {
        let (code, t) = get(&c.nodes[other].url(&format!("/api/v1/printers/{id}/status"))).ok()?;
        (code == 200 && t["connection"] == "connected" && !t["printer_state"].is_null())
            .then_some(())
    });
    let (code, v) = post(
        &c.nodes[0].url("/api/v1/filaments"),
        &json!({"id": "f1", "type": "PLA", "color": "white", "total_weight_in_grams": 1000}),
    )
    .unwrap();
    assert_eq!(code, 201, "{v}");
    c
}

fn create_and_run(c: &Cluster, id: &str, printer: &str, grams: f64) {
    let (code, v) = post(
        &c.nodes[2].url("/api/v1/print_jobs"),
        &json!({"id": id, "printer_id": printer, "filament_id": "f1", "filepath": "cube.gcode", "print_weight_in_grams": grams}),
    )
    .unwrap();
    assert_eq!(code, 201, "{v}");
    let (code, v) = set(c, 0, id, "running");
    assert_eq!(code, 200, "{v}");
}

fn set(c: &Cluster, via: usize, id: &str, status: &str) -> (u16, Value) {
    post_raw(
        &c.nodes[via].url(&format!("/api/v1/print_jobs/{id}/status?status={status}")),
        "",
    )
    .unwrap()
}

fn wait_final(c: &Cluster, via: usize, id: &str) -> Value {
    wait_for(&format!("{id} to end"), Duration::from_secs(60), || {
        let (code, v) = get(&c.nodes[via].url(&format!("/api/v1/print_jobs/{id}"))).ok()?;
        (code == 200 && v["status"] != "Running" && v["status"] != "Queued").then_some(v)
    })
}

fn remaining_everywhere(c: &Cluster) -> Vec<f64> {
    (0..3)
        .map(|i| {
            let (_, f) = get(&c.nodes[i].url("/api/v1/filaments/f1?consistency=stale")).unwrap();
            f["remaining_weight_in_grams"].as_f64().unwrap_or(-1.0)
        })
        .collect()
}

/// A broker and a simulated Klipper printer `voron` whose prints take `print_time`, and the
/// printer's connection as a TOML inline table. The runtime must outlive the test.
fn moonraker(print_time: Duration) -> (tokio::runtime::Runtime, FakeBroker, FakeMoonraker, String) {
    let rt = runtime();
    let (broker, fake) = rt.block_on(async {
        let b = FakeBroker::start(BrokerConfig::default())
            .await
            .expect("broker");
        let f = FakeMoonraker::start(b.plain_port, "voron", &["cube.gcode"], print_time);
        (b, f)
    });
    let conn = format!(
        "{{ kind = \"moonraker\", broker = \"127.0.0.1:{}\", instance = \"voron\" }}",
        broker.plain_port
    );
    (rt, broker, fake, conn)
}

#[test]
fn a_moonraker_print_ends_done_once_and_cancels_reach_both_ways() {
    let (_rt, broker, fake, conn) = moonraker(Duration::from_secs(2));
    let c = farm(1, "voron", &conn);

    create_and_run(&c, "m1", "voron", 5.02);
    let done = wait_final(&c, 0, "m1");
    assert_eq!(done["status"], "Done", "{done}\n{}", c.logs());
    wait_for(
        "the deduction on every node",
        Duration::from_secs(10),
        || (remaining_everywhere(&c) == vec![994.98; 3]).then_some(()),
    );
    let starts = fake
        .methods()
        .iter()
        .filter(|m| *m == "printer.print.start")
        .count();
    assert_eq!(starts, 1, "the file is started once");

    // Cancel through the API: the committed Canceled makes the agent cancel on the printer.
    create_and_run(&c, "m2", "voron", 5.0);
    wait_for("m2 printing", Duration::from_secs(20), || {
        (fake.state() == "printing").then_some(())
    });
    let (code, v) = set(&c, 2, "m2", "canceled");
    assert_eq!(code, 200, "{v}");
    wait_for("the printer to cancel", Duration::from_secs(20), || {
        (fake.state() == "cancelled").then_some(())
    });

    // Cancel on the printer: the agent proposes Canceled, nothing is deducted.
    create_and_run(&c, "m3", "voron", 5.0);
    wait_for("m3 printing", Duration::from_secs(20), || {
        (fake.state() == "printing").then_some(())
    });
    fake.cancel_on_printer();
    let end = wait_final(&c, 1, "m3");
    assert_eq!(end["status"], "Canceled", "{end}");
    assert_eq!(remaining_everywhere(&c), vec![994.98; 3]);
    drop(broker);
}

/// A simulated Bambu printer behind the broker's TLS port (certificate from a test CA for
/// its serial, login `bblp` + access code) whose prints take `print_time`, and its connection
/// as a TOML inline table. The runtime and the CA's temp dir must outlive the test.
fn bambu(
    print_time: Duration,
) -> (
    tokio::runtime::Runtime,
    tempfile::TempDir,
    FakeBroker,
    FakeBambu,
    String,
) {
    let (rt, dir, broker, fake, _ftps, conn) = bambu_with_ftps(print_time);
    (rt, dir, broker, fake, conn)
}

/// `bambu` with the printer's FTPS side too (same certificate and access code).
fn bambu_with_ftps(
    print_time: Duration,
) -> (
    tokio::runtime::Runtime,
    tempfile::TempDir,
    FakeBroker,
    FakeBambu,
    FakeFtps,
    String,
) {
    let rt = runtime();
    let pki = TestPki::new("Raft3D test Bambu CA");
    let ca_dir = tempfile::tempdir().expect("temp dir");
    let ca_file = ca_dir.path().join("bambu-ca.pem");
    std::fs::write(&ca_file, pki.ca_pem()).expect("write CA");
    let (broker, fake, ftps) = rt.block_on(async {
        let tls = pki.server_config(SERIAL);
        let b = FakeBroker::start(BrokerConfig {
            tls: Some(tls.clone()),
            login: Some(("bblp".into(), CODE.into())),
        })
        .await
        .expect("broker");
        let f = FakeBambu::start(b.plain_port, SERIAL, Duration::from_millis(300), print_time);
        let ftps = FakeFtps::start(tls, CODE).await.expect("ftps");
        (b, f, ftps)
    });
    let conn = format!(
        "{{ kind = \"bambu\", host = \"127.0.0.1\", port = {}, serial = \"{SERIAL}\", access_code = \"{CODE}\", ca_file = {:?}, ftps_port = {} }}",
        broker.port,
        ca_file.display().to_string(),
        ftps.port
    );
    (rt, ca_dir, broker, fake, ftps, conn)
}

#[test]
fn a_bambu_print_over_tls_ends_done_and_the_access_code_stays_secret() {
    let (_rt, _ca, broker, fake, conn) = bambu(Duration::from_secs(2));
    let c = farm(2, "p1s", &conn);

    // Telemetry served by a node that does not drive the printer, AMS trays included.
    let (code, t) = get(&c.nodes[0].url("/api/v1/printers/p1s/status")).unwrap();
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["ams"].as_array().map(Vec::len), Some(4), "{t}");
    for i in 0..3 {
        let (_, p) = get(&c.nodes[i].url("/api/v1/printers/p1s")).unwrap();
        assert!(
            !p.to_string().contains(CODE),
            "node{} leaks the code: {p}",
            i + 1
        );
        assert_eq!(p["connection"]["serial"], SERIAL, "{p}");
    }

    create_and_run(&c, "b1", "p1s", 5.02);
    let done = wait_final(&c, 1, "b1");
    assert_eq!(done["status"], "Done", "{done}\n{}", c.logs());
    wait_for(
        "the deduction on every node",
        Duration::from_secs(10),
        || (remaining_everywhere(&c) == vec![994.98; 3]).then_some(()),
    );
    assert_eq!(
        fake.commands()
            .iter()
            .filter(|c| *c == "gcode_file")
            .count(),
        1,
        "{:?}",
        fake.commands()
    );
    drop(broker);
}

#[test]
fn a_dead_supervisor_hands_its_printer_over_and_the_job_still_ends_done_once() {
    let (_rt, broker, fake, conn) = moonraker(Duration::from_secs(8));
    let mut c = farm(1, "voron", &conn);

    create_and_run(&c, "t1", "voron", 5.02);
    wait_for("t1 printing", Duration::from_secs(20), || {
        (fake.state() == "printing").then_some(())
    });
    c.node(1).kill9();

    // The leader (node1 or node3) notices and takes over; the printer keeps printing.
    let moved = wait_for("the printer to move", Duration::from_secs(30), || {
        let (code, p) = get(&c.nodes[0].url("/api/v1/printers/voron")).ok()?;
        (code == 200 && p["node_id"] != "node2").then_some(p)
    });
    assert!(
        moved["node_id"] == "node1" || moved["node_id"] == "node3",
        "{moved}"
    );
    assert_eq!(
        fake.state(),
        "printing",
        "the takeover must not disturb the print"
    );
    let done = wait_final(&c, 0, "t1");
    assert_eq!(done["status"], "Done", "{done}\n{}", c.logs());
    let (_, f) = get(&c.nodes[2].url("/api/v1/filaments/f1")).unwrap();
    assert_eq!(f["remaining_weight_in_grams"], 994.98, "{f}");
    let starts = fake
        .methods()
        .iter()
        .filter(|m| *m == "printer.print.start")
        .count();
    assert_eq!(starts, 1, "the print is never started again");
    assert!(
        c.logs().contains("taking over a print started earlier"),
        "the new supervisor re-attached:\n{}",
        c.logs()
    );

    // The old supervisor comes back: it leaves the printer alone and changes nothing.
    c.node(1).spawn(&[]);
    wait_for("node2 caught up", Duration::from_secs(30), || {
        let (code, j) = get(&c.nodes[1].url("/api/v1/print_jobs/t1?consistency=stale")).ok()?;
        (code == 200 && j["status"] == "Done").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let (_, p) = get(&c.nodes[1].url("/api/v1/printers/voron")).unwrap();
    assert_eq!(p["node_id"], moved["node_id"], "{p}");
    assert_eq!(remaining_everywhere(&c), vec![994.98; 3]);
    assert_eq!(
        fake.methods()
            .iter()
            .filter(|m| *m == "printer.print.start")
            .count(),
        1
    );
    drop(broker);
}

#[test]
fn a_dead_bambu_supervisor_hands_its_printer_over_and_the_job_still_ends_done_once() {
    let (_rt, _ca, broker, fake, conn) = bambu(Duration::from_secs(8));
    let mut c = farm(1, "p1s", &conn);

    create_and_run(&c, "bt", "p1s", 5.02);
    wait_for("bt printing", Duration::from_secs(20), || {
        (fake.state() == "RUNNING").then_some(())
    });
    c.node(1).kill9();

    // The leader takes over over TLS with the replicated access code; the print goes on.
    let moved = wait_for("the printer to move", Duration::from_secs(30), || {
        let (code, p) = get(&c.nodes[0].url("/api/v1/printers/p1s")).ok()?;
        (code == 200 && p["node_id"] != "node2").then_some(p)
    });
    assert!(
        moved["node_id"] == "node1" || moved["node_id"] == "node3",
        "{moved}"
    );
    let done = wait_final(&c, 0, "bt");
    assert_eq!(done["status"], "Done", "{done}\n{}", c.logs());
    wait_for(
        "one deduction on every live node",
        Duration::from_secs(10),
        || {
            let r: Vec<f64> = [0, 2]
                .iter()
                .map(|&i| {
                    get(&c.nodes[i].url("/api/v1/filaments/f1?consistency=stale"))
                        .ok()
                        .and_then(|(_, f)| f["remaining_weight_in_grams"].as_f64())
                        .unwrap_or(-1.0)
                })
                .collect();
            (r == vec![994.98; 2]).then_some(())
        },
    );
    let starts = fake
        .commands()
        .iter()
        .filter(|c| *c == "gcode_file")
        .count();
    assert_eq!(
        starts,
        1,
        "the print is never started again: {:?}",
        fake.commands()
    );
    drop(broker);
}

#[test]
fn a_bambu_job_whose_file_is_in_gcode_dir_is_uploaded_then_printed() {
    let (_rt, _ca, broker, fake, ftps, conn) = bambu_with_ftps(Duration::from_secs(2));
    // node2 drives the printer and holds the file under its gcode_dir.
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/gcode");
    let top = format!("gcode_dir = {:?}\n", samples.display().to_string());
    let c = farm_with(1, "x1c", &conn, &top);
    let (code, v) = post(
        &c.nodes[2].url("/api/v1/print_jobs"),
        &json!({"id": "up", "printer_id": "x1c", "filament_id": "f1", "filepath": "vase.gcode", "print_weight_in_grams": 6.75}),
    )
    .unwrap();
    assert_eq!(code, 201, "{v}");
    assert_eq!(set(&c, 0, "up", "running").0, 200);
    let done = wait_final(&c, 0, "up");
    assert_eq!(done["status"], "Done", "{done}\n{}", c.logs());
    let want = std::fs::read(samples.join("vase.gcode")).unwrap();
    assert!(
        ftps.files().get("vase.gcode") == Some(&want),
        "the file went to the printer whole"
    );
    assert_eq!(
        fake.commands()
            .iter()
            .filter(|c| *c == "gcode_file")
            .count(),
        1
    );
    let (_, t) = get(&c.nodes[0].url("/api/v1/printers/x1c/status")).unwrap();
    assert_eq!(t["upload_percent"], 100.0, "{t}");
    drop(broker);
}
