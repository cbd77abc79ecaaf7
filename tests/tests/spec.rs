//! The product brief's scenario end to end against three real `raft3d` processes: any node
//! answers, writes to followers are forwarded, rules hold, and every node sees the result.

use raft3d_tests::support;

use serde_json::json;
use support::{get, post, post_raw, Cluster};

#[test]
fn spec_scenario_through_every_node() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(std::time::Duration::from_secs(10));
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let f = &c.nodes[follower];
    let o = &c.nodes[other];

    // Writes through followers are forwarded by the server itself.
    let (code, p) = post(
        &f.url("/api/v1/printers"),
        &json!({"id": 1, "company": "Prusa", "model": "MK4"}),
    )
    .unwrap();
    assert_eq!(code, 201, "{p}");
    assert_eq!(p["id"], "1", "integer ids come back as strings");
    let (code, fil) = post(
        &o.url("/api/v1/filaments"),
        &json!({"id": "f1", "type": "pla", "color": "red", "total_weight_in_grams": 10}),
    )
    .unwrap();
    assert_eq!(code, 201, "{fil}");
    assert_eq!(fil["type"], "PLA");
    assert_eq!(fil["remaining_weight_in_grams"], 10);

    // Server-assigned id when the client sends none.
    let (code, job) = post(&f.url("/api/v1/print_jobs"), &json!({"printer_id": "1", "filament_id": "f1", "filepath": "/prints/cube.gcode", "print_weight_in_grams": 5.02})).unwrap();
    assert_eq!(code, 201, "{job}");
    assert_eq!(job["status"], "Queued");
    let job_id = job["id"].as_str().unwrap().to_string();

    // Reservation: 10 - 5.02 = 4.98 left; 4.99 is refused with 422, 4.98 fits exactly.
    let (code, err) = post(&o.url("/api/v1/print_jobs"), &json!({"id": "big", "printer_id": "1", "filament_id": "f1", "filepath": "x.gcode", "print_weight_in_grams": 4.99})).unwrap();
    assert_eq!(code, 422, "{err}");
    assert_eq!(err["error"]["code"], "insufficient_filament");
    let (code, _) = post(&o.url("/api/v1/print_jobs"), &json!({"id": "fits", "printer_id": "1", "filament_id": "f1", "filepath": "x.gcode", "print_weight_in_grams": 4.98})).unwrap();
    assert_eq!(code, 201);

    // Duplicate id is a conflict, not an overwrite.
    let (code, err) = post(
        &f.url("/api/v1/printers"),
        &json!({"id": "1", "company": "Other", "model": "X"}),
    )
    .unwrap();
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (409, Some("duplicate_id"))
    );

    // A create asking for another status is rejected.
    let (code, _) = post(&f.url("/api/v1/print_jobs"), &json!({"printer_id": "1", "filament_id": "f1", "filepath": "x", "print_weight_in_grams": 0.01, "status": "Running"})).unwrap();
    assert_eq!(code, 400);

    // Queued -> Running (quoted value), Done through a body; Done twice is refused.
    let (code, j) = post_raw(
        &f.url(&format!(
            "/api/v1/print_jobs/{job_id}/status?status=%22RUNNING%22"
        )),
        "",
    )
    .unwrap();
    assert_eq!((code, j["status"].as_str()), (200, Some("Running")), "{j}");
    let (code, err) =
        post_raw(&o.url("/api/v1/print_jobs/fits/status?status=running"), "").unwrap();
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (409, Some("printer_busy"))
    );
    let (code, j) = post(
        &o.url(&format!("/api/v1/print_jobs/{job_id}/status")),
        &json!({"status": "done"}),
    )
    .unwrap();
    assert_eq!((code, j["status"].as_str()), (200, Some("Done")), "{j}");
    let (code, _) = post_raw(
        &f.url(&format!("/api/v1/print_jobs/{job_id}/status?status=done")),
        "",
    )
    .unwrap();
    assert_eq!(code, 409);
    let (code, err) = post_raw(&f.url("/api/v1/print_jobs/fits/status?status=failed"), "").unwrap();
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (409, Some("failed_reserved_for_agent"))
    );
    let (code, j) = post_raw(
        &f.url("/api/v1/print_jobs/fits/status?status=Cancelled"),
        "",
    )
    .unwrap();
    assert_eq!((code, j["status"].as_str()), (200, Some("Canceled")));

    // The deduction is visible on every node, linearizable by default and stale on request.
    for n in &c.nodes {
        let (code, f1) = get(&n.url("/api/v1/filaments/f1")).unwrap();
        assert_eq!(code, 200);
        assert_eq!(f1["remaining_weight_in_grams"], 4.98, "on {}", n.id);
        let (_, done) = get(&n.url("/api/v1/print_jobs?status=done")).unwrap();
        assert_eq!(done.as_array().unwrap().len(), 1, "on {}", n.id);
        let (_, stale) = get(&n.url("/api/v1/filaments/f1?consistency=stale")).unwrap();
        assert!(
            stale["remaining_weight_in_grams"] == 4.98 || stale["remaining_weight_in_grams"] == 10
        );
    }
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let c = Cluster::start(1);
    let n = &c.nodes[0];
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/api/v1/printers", "{\"company\": \"A\", \"model\": 3}", 400, "model"),
        ("/api/v1/printers", "{\"company\": \"A\", \"model\": \"B\", \"extra\": 1}", 400, "extra"),
        ("/api/v1/printers", "{\"company\": \"A\",", 400, "malformed JSON"),
        ("/api/v1/printers", "", 400, "empty"),
        ("/api/v1/filaments", "{\"type\": \"wood\", \"color\": \"x\", \"total_weight_in_grams\": 5}", 400, "type"),
        ("/api/v1/filaments", "{\"type\": \"PLA\", \"color\": \"x\", \"total_weight_in_grams\": -5}", 400, "total_weight_in_grams"),
        ("/api/v1/filaments", "{\"type\": \"PLA\", \"color\": \"x\", \"total_weight_in_grams\": 5, \"remaining_weight_in_grams\": 6}", 400, "remaining_weight_in_grams"),
        ("/api/v1/print_jobs", "{\"printer_id\": \"nope\", \"filament_id\": \"f\", \"filepath\": \"a\", \"print_weight_in_grams\": 1}", 404, "printer 'nope'"),
        ("/api/v1/print_jobs", "{\"printer_id\": \"p\", \"filament_id\": \"f\", \"filepath\": \"a\", \"print_weight_in_grams\": 0}", 400, "greater than 0"),
        ("/api/v1/printers", "{\"id\": \"bad id/..\", \"company\": \"A\", \"model\": \"B\"}", 400, "id"),
        ("/api/v1/printers", "{\"id\": 4.5, \"company\": \"A\", \"model\": \"B\"}", 400, "id: must be a string or a whole number"),
    ];
    for (path, body, want, needle) in cases {
        let (code, v) = post_raw(&n.url(path), body.to_string()).unwrap();
        assert_eq!(code, *want, "{path} {body} -> {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            v["error"]["code"].is_string(),
            "stable shape for {body}: {v}"
        );
        assert!(
            msg.contains(needle),
            "message {msg:?} should mention {needle:?}"
        );
        // Written for a person: no serde type names, no field named twice.
        assert!(!msg.contains("enum"), "{msg}");
        assert!(!msg.contains(&format!("{needle}: {needle}:")), "{msg}");
    }
    let (code, v) = post_raw(&n.url("/api/v1/printers"), vec![b'x'; 100_000]).unwrap();
    assert_eq!(code, 413, "{v}");
    let (code, v) = get(&n.url("/api/v1/print_jobs/nope")).unwrap();
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (code, _) = get(&n.url("/api/v1/print_jobs?status=weird")).unwrap();
    assert_eq!(code, 400);
    let (code, _) = get(&n.url("/api/v1/printers?consistency=sometimes")).unwrap();
    assert_eq!(code, 400);
    for path in [
        "/api/v1/printers",
        "/api/v1/filaments",
        "/api/v1/print_jobs",
    ] {
        let (code, v) = get(&n.url(path)).unwrap();
        assert_eq!(
            (code, v),
            (200, serde_json::json!([])),
            "rejected requests stored nothing"
        );
    }
}
