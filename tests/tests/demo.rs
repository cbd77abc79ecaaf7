//! `raft3d demo`, the README's first command, as a user runs it: the farm comes up, the curl
//! steps it prints work (a spool, a job printed on a virtual printer, `Done` proposed by the
//! agent, 5.02 g gone on every node), a node killed with SIGKILL is reported with the command
//! that brings it back, Ctrl-C stops every node, and a second run brings the same farm back.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use raft3d_tests::support::{binary, get, post, post_raw, wait_for};
use serde_json::json;

/// A base port such that it and the next two are free, for HTTP and for peers.
fn free_ports() -> (u16, u16) {
    let free = |p: u16| (p..p + 3).all(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok());
    let mut seed = std::process::id() as u16;
    loop {
        seed = seed.wrapping_mul(31).wrapping_add(7);
        let http = 20_000 + seed % 20_000;
        let raft = http + 10_000;
        if free(http) && free(raft) {
            return (http, raft);
        }
    }
}

struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Demo {
    fn start(dir: &std::path::Path, http: u16, raft: u16) -> Demo {
        let mut child = Command::new(binary())
            .args([
                "demo",
                "--http-port",
                &http.to_string(),
                "--raft-port",
                &raft.to_string(),
            ])
            .arg("--data")
            .arg(dir)
            .args(["--speed", "400"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn demo");
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Demo { child, lines }
    }

    /// Waits for a printed line containing `text`; returns it.
    fn expect(&self, text: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(text) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!(
            "the demo never printed {text:?}; it printed:\n{}",
            seen.join("\n")
        );
    }

    fn interrupt(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the demo did not stop on Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.interrupt();
        }
    }
}

#[test]
fn the_demo_prints_a_job_stops_on_ctrl_c_and_comes_back_with_its_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("farm");
    let (http, raft) = free_ports();
    let url = |i: u16, path: &str| format!("http://127.0.0.1:{}{path}", http + i);
    let mut demo = Demo::start(&data, http, raft);
    demo.expect("demo farm is up", Duration::from_secs(90));

    // The steps the demo prints.
    let (code, v) = post(
        &url(1, "/api/v1/filaments"),
        &json!({"id":"f1","type":"PLA","color":"red","total_weight_in_grams":1000}),
    )
    .unwrap();
    assert_eq!(code, 201, "{v}");
    let (code, v) = post(&url(1, "/api/v1/print_jobs"), &json!({"id":"j1","printer_id":"virtual-2","filament_id":"f1","filepath":"cube.gcode","print_weight_in_grams":5.02})).unwrap();
    assert_eq!(code, 201, "{v}");
    let (code, v) = post_raw(&url(1, "/api/v1/print_jobs/j1/status?status=running"), "").unwrap();
    assert_eq!(code, 200, "{v}");
    wait_for("j1 Done", Duration::from_secs(120), || {
        let (_, j) = get(&url(1, "/api/v1/print_jobs/j1")).ok()?;
        (j["status"] == "Done").then_some(())
    });
    for i in 0..3 {
        let (_, f) = get(&url(i, "/api/v1/filaments/f1")).unwrap();
        assert_eq!(f["remaining_weight_in_grams"], 994.98, "node{}", i + 1);
    }

    // kill -9 of a node: the demo says so and how to restart it.
    let status = get(&url(2, "/cluster/status")).unwrap().1;
    assert_eq!(status["node_id"], "node3", "{status}");
    let line = demo.expect("  node3  http://", Duration::from_secs(1));
    let pid: u32 = line
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let restart = demo.expect("To bring it back", Duration::from_secs(10));
    assert!(restart.contains("node3 exited"), "{restart}");
    let command = demo.expect("-id node3", Duration::from_secs(2));
    assert!(
        command.contains(&format!("-http 127.0.0.1:{}", http + 2)),
        "{command}"
    );

    // Ctrl-C stops the farm; a second run has the same spool and job.
    demo.interrupt();
    assert!(
        get(&url(0, "/cluster/status")).is_err(),
        "no node may outlive the demo"
    );
    let again = Demo::start(&data, http, raft);
    again.expect("with the state of the last run", Duration::from_secs(90));
    let (_, j) = get(&url(0, "/api/v1/print_jobs/j1")).unwrap();
    assert_eq!(j["status"], "Done", "{j}");
    let (_, f) = get(&url(2, "/api/v1/filaments/f1")).unwrap();
    assert_eq!(f["remaining_weight_in_grams"], 994.98, "{f}");
}
