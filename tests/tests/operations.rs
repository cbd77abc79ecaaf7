//! Operating a farm's cluster against real processes: failure detection, safe membership
//! changes, leader transfer, backup and restore, node recovery, metrics and readiness.

use raft3d_tests::support;

use std::time::Duration;

use serde_json::json;
use support::{delete, get, post, post_raw, wait_for, Cluster};

const FAST_HEALTH: &str = "[health]\ncheck_interval_ms = 200\ncontact_timeout_ms = 600\n";

fn fast_cluster(n: usize, extra_toml: &str) -> Cluster {
    let mut c = Cluster::new(n);
    let cfg = c.config_file("ops.toml", &format!("{FAST_HEALTH}{extra_toml}"));
    c = c.with_args(&["--config", &cfg]);
    c.boot();
    c
}

fn seed(c: &Cluster, via: usize) {
    c.seed_printer_and_spool(via, 1000);
    let n = &c.nodes[via];
    for i in 0..5 {
        let (code, _) = post(&n.url("/api/v1/print_jobs"), &json!({"id": format!("j{i}"), "printer_id": "p1", "filament_id": "f1", "filepath": "a.gcode", "print_weight_in_grams": 5})).unwrap();
        assert_eq!(code, 201);
    }
}

fn hash(c: &Cluster, i: usize) -> Option<(u64, String)> {
    let s = c.status(i)?;
    Some((
        s["state_hash_index"].as_u64()?,
        s["state_hash"].as_str()?.to_string(),
    ))
}

/// Waits until every listed node reports the same state hash at the same index.
fn wait_same_state(c: &Cluster, nodes: &[usize]) -> String {
    wait_for(
        "all nodes to hold the same state",
        Duration::from_secs(20),
        || {
            let hashes: Vec<_> = nodes.iter().map(|i| hash(c, *i)).collect::<Option<_>>()?;
            hashes
                .windows(2)
                .all(|w| w[0] == w[1])
                .then(|| hashes[0].1.clone())
        },
    )
}

#[test]
fn an_unresponsive_member_is_detected_logged_and_shown() {
    let mut c = fast_cluster(3, "");
    let leader = c.wait_leader(Duration::from_secs(10));
    let victim = (leader + 1) % 3;
    let victim_id = c.nodes[victim].id.clone();
    // Only what the leader logs after the kill counts (a member still joining at start-up can
    // be reported unresponsive too).
    let logged_before = c.nodes[leader].log_text().len();
    c.node(victim).kill9();
    let line = format!("server {victim_id} is unresponsive (");
    wait_for(
        "the unresponsive line in the leader's log",
        Duration::from_secs(10),
        || {
            c.nodes[leader].log_text()[logged_before..]
                .contains(&line)
                .then_some(())
        },
    );
    let member = wait_for(
        "the failed checks in the status",
        Duration::from_secs(10),
        || {
            let s = c.status(leader)?;
            let m = s["members"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == victim_id.as_str())?
                .clone();
            (m["failed_checks"].as_u64()? >= 1).then_some(m)
        },
    );
    assert!(
        member["last_contact_ms"].as_u64().unwrap_or(u64::MAX) >= 600,
        "{member}"
    );
    let (_, text) = get(&c.nodes[leader].url("/metrics")).unwrap();
    let text = text.as_str().unwrap().to_string();
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "raft3d_member_failed_checks{{member=\"{victim_id}\"}}"
        )) && !l.ends_with(" 0")),
        "{text}"
    );
    // Contact again resets the count.
    c.node(victim).spawn(&[]);
    wait_for("failed checks to reset", Duration::from_secs(15), || {
        let s = c.status(leader)?;
        let m = s["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == victim_id.as_str())?
            .clone();
        (m["failed_checks"] == 0).then_some(())
    });
}

#[test]
fn auto_removal_shrinks_five_voters_but_never_three() {
    let auto = "[health]\nauto_remove = true\nfailure_threshold = 3\njoin_grace_ms = 0\ncheck_interval_ms = 200\ncontact_timeout_ms = 600\n";
    let mut c = Cluster::new(5);
    let cfg = c.config_file("auto.toml", auto);
    c = c.with_args(&["--config", &cfg]);
    c.boot();
    let leader = c.wait_leader(Duration::from_secs(10));
    let victim = (leader + 1) % 5;
    let victim_id = c.nodes[victim].id.clone();
    c.node(victim).kill9();
    wait_for(
        "the dead node to be removed from 5 voters",
        Duration::from_secs(20),
        || {
            let v = c.voters(leader)?;
            (v.len() == 4 && !v.contains(&victim_id)).then_some(())
        },
    );

    let mut c3 = Cluster::new(3);
    let cfg = c3.config_file("auto.toml", auto);
    c3 = c3.with_args(&["--config", &cfg]);
    c3.boot();
    let leader = c3.wait_leader(Duration::from_secs(10));
    let victim = (leader + 1) % 3;
    c3.node(victim).kill9();
    wait_for("the refusal line", Duration::from_secs(15), || {
        c3.nodes[leader]
            .log_text()
            .contains("not auto-removing")
            .then_some(())
    });
    assert_eq!(
        c3.voters(leader).unwrap().len(),
        3,
        "3 voters are never auto-shrunk"
    );
}

#[test]
fn membership_changes_that_lose_a_live_quorum_are_refused() {
    // A generous contact timeout so a live node starved of CPU on a busy test machine is not
    // mistaken for a dead one.
    let mut c = Cluster::new(3);
    let cfg = c.config_file(
        "quorum.toml",
        "[health]\ncheck_interval_ms = 200\ncontact_timeout_ms = 1500\n",
    );
    c = c.with_args(&["--config", &cfg]);
    c.boot();
    let leader = c.wait_leader(Duration::from_secs(10));
    let dead = (leader + 1) % 3;
    let live = (leader + 2) % 3;
    let dead_id = c.nodes[dead].id.clone();
    let live_id = c.nodes[live].id.clone();
    c.node(dead).kill9();
    std::thread::sleep(Duration::from_millis(2500));
    let (code, v) = delete(&c.nodes[live].url(&format!("/cluster/servers?id={live_id}"))).unwrap();
    assert_eq!(code, 409, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("quorum"),
        "{v}"
    );
    // Removing the dead one keeps two live voters: allowed.
    let (code, v) = delete(&c.nodes[live].url(&format!("/cluster/servers?id={dead_id}"))).unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(c.voters(leader).unwrap().len(), 2);
}

#[test]
fn leadership_moves_on_request_and_removing_the_leader_hands_it_over_first() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let target = c.nodes[(leader + 1) % 3].id.clone();
    let (code, v) = post_raw(
        &c.nodes[(leader + 2) % 3].url(&format!("/cluster/transfer-leader?to={target}")),
        "",
    )
    .unwrap();
    assert_eq!(
        (code, v["leader"].as_str()),
        (200, Some(target.as_str())),
        "{v}"
    );
    let new_leader = c.wait_leader(Duration::from_secs(5));
    assert_eq!(c.nodes[new_leader].id, target);
    let (code, v) = post_raw(&c.nodes[new_leader].url("/cluster/transfer-leader"), "").unwrap();
    assert_eq!(code, 200, "{v}");
    assert_ne!(
        v["leader"].as_str().unwrap(),
        target,
        "moved to another voter"
    );

    let leader = c.wait_leader(Duration::from_secs(5));
    let leader_id = c.nodes[leader].id.clone();
    let (code, v) =
        delete(&c.nodes[leader].url(&format!("/cluster/servers?id={leader_id}"))).unwrap();
    assert_eq!(code, 200, "{v}");
    let other = (leader + 1) % 3;
    wait_for(
        "two voters without the old leader",
        Duration::from_secs(10),
        || {
            let v = c.voters(other)?;
            (v.len() == 2 && !v.contains(&leader_id)).then_some(())
        },
    );
}

#[test]
fn backup_restores_into_a_new_cluster_with_the_same_state_and_bad_backups_are_refused() {
    let c = Cluster::start(3);
    seed(&c, 1);
    let resp = reqwest::blocking::get(c.nodes[2].url("/cluster/snapshot")).unwrap();
    assert_eq!(resp.status(), 200);
    let backup = resp.bytes().unwrap().to_vec();
    let original = wait_same_state(&c, &[0, 1, 2]);

    let mut fresh = Cluster::new(2);
    let file = fresh.dir.path().join("farm.snap");
    std::fs::write(&file, &backup).unwrap();
    // Corrupted and truncated backups are refused and write nothing.
    for (name, bytes) in [
        ("flipped", {
            let mut b = backup.clone();
            let n = b.len() - 10;
            b[n] ^= 0x20;
            b
        }),
        ("short", backup[..backup.len() / 2].to_vec()),
    ] {
        let bad = fresh.dir.path().join(format!("{name}.snap"));
        std::fs::write(&bad, bytes).unwrap();
        let out = std::process::Command::new(support::binary())
            .args([
                "restore",
                "--from",
                bad.to_str().unwrap(),
                "-id",
                "x1",
                "-raft",
                "127.0.0.1:1",
                "-data",
            ])
            .arg(fresh.dir.path().join("bad-data"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("nothing was written"), "{err}");
        assert!(!fresh.dir.path().join("bad-data").exists());
    }
    let n0 = &fresh.nodes[0];
    let out = std::process::Command::new(support::binary())
        .args([
            "restore",
            "--from",
            file.to_str().unwrap(),
            "-id",
            &n0.id,
            "-http",
            &n0.http,
            "-raft",
            &n0.raft,
            "-data",
        ])
        .arg(&n0.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fresh.node(0).spawn(&[]);
    fresh.wait_leader(Duration::from_secs(15));
    let join = fresh.nodes[0].http.clone();
    fresh.node(1).spawn(&["-join".into(), join]);
    fresh.wait_voters(2, Duration::from_secs(20));
    let restored = wait_same_state(&fresh, &[0, 1]);
    assert_eq!(restored, original, "restored farm hashes like the original");
    let (code, _) = post(&fresh.nodes[1].url("/api/v1/print_jobs"), &json!({"printer_id": "p1", "filament_id": "f1", "filepath": "a", "print_weight_in_grams": 1})).unwrap();
    assert_eq!(code, 201, "the restored cluster takes writes");
}

#[test]
fn a_removed_node_needs_wiped_data_to_rejoin_and_a_dead_node_can_be_replaced() {
    let mut c = fast_cluster(3, "");
    seed(&c, 0);
    let leader = c.wait_leader(Duration::from_secs(10));
    let victim = (leader + 1) % 3;
    let victim_id = c.nodes[victim].id.clone();
    let join = c.nodes[leader].http.clone();
    c.node(victim).kill9();
    let (code, v) =
        delete(&c.nodes[leader].url(&format!("/cluster/servers?id={victim_id}"))).unwrap();
    assert_eq!(code, 200, "{v}");

    // Old data cannot silently come back.
    c.node(victim).spawn(&["-join".into(), join.clone()]);
    wait_for("the refusal of stale data", Duration::from_secs(15), || {
        c.nodes[victim]
            .log_text()
            .contains("was removed from this cluster")
            .then_some(())
    });
    assert_eq!(c.voters(leader).unwrap().len(), 2);
    c.node(victim).kill9();

    // Wiped (-clean) it joins again and catches up.
    c.node(victim)
        .spawn(&["-clean".into(), "-join".into(), join.clone()]);
    c.wait_voters(3, Duration::from_secs(20));
    let others: Vec<usize> = (0..3).collect();
    wait_same_state(&c, &others);

    // Replace a dead node with a brand-new one.
    let dead = (leader + 2) % 3;
    let dead_id = c.nodes[dead].id.clone();
    c.node(dead).kill9();
    let (code, v) =
        delete(&c.nodes[leader].url(&format!("/cluster/servers?id={dead_id}"))).unwrap();
    assert_eq!(code, 200, "{v}");
    let n4 = c.add_node("node4");
    c.node(n4).spawn(&["-join".into(), join]);
    wait_for("node4 to be a voter", Duration::from_secs(20), || {
        let v = c.voters(leader)?;
        (v.len() == 3 && v.contains(&"node4".to_string())).then_some(())
    });
    wait_same_state(&c, &[leader, victim, n4]);
}

#[test]
fn metrics_expose_the_key_series_and_readyz_follows_elections() {
    let mut c = Cluster::start(3);
    seed(&c, 0);
    let leader = c.wait_leader(Duration::from_secs(10));
    let (code, body) = get(&c.nodes[leader].url("/metrics")).unwrap();
    assert_eq!(code, 200);
    let text = body.as_str().unwrap().to_string();
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    assert_eq!(value("raft3d_is_leader "), 1.0);
    assert!(value("raft3d_term ") >= 1.0);
    assert!(value("raft3d_commit_index ") >= 7.0);
    assert_eq!(value("raft3d_jobs{status=\"Queued\"}"), 5.0);
    assert_eq!(
        value("raft3d_filament_remaining_grams{filament=\"f1\",type=\"PLA\"}"),
        1000.0
    );
    assert!(value("raft3d_http_requests_total{method=\"POST\",route=\"/api/v1/print_jobs\",status=\"201\"}") >= 5.0);
    assert!(text.contains("raft3d_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/v1/print_jobs\",le=\"+Inf\"}"));
    assert!(text.contains("raft3d_replication_lag_entries{member="));
    assert!(value("raft3d_log_fsyncs_total ") >= 1.0);
    for n in 0..3 {
        assert_eq!(get(&c.nodes[n].url("/readyz")).unwrap().0, 200);
        assert_eq!(get(&c.nodes[n].url("/healthz")).unwrap().0, 200);
    }
    // Without a quorum there is no leader: not ready. With it back: ready again.
    let a = (leader + 1) % 3;
    let b = (leader + 2) % 3;
    c.node(leader).kill9();
    c.node(a).kill9();
    wait_for("readyz to turn false", Duration::from_secs(10), || {
        (get(&c.nodes[b].url("/readyz")).ok()?.0 == 503).then_some(())
    });
    c.node(a).spawn(&[]);
    wait_for("readyz to turn true", Duration::from_secs(15), || {
        (get(&c.nodes[b].url("/readyz")).ok()?.0 == 200).then_some(())
    });
}

#[test]
fn a_full_reset_starts_an_empty_farm() {
    let mut c = Cluster::start(1);
    seed(&c, 0);
    c.node(0).terminate();
    c.node(0).spawn(&["-clean".into(), "-bootstrap".into()]);
    c.wait_leader(Duration::from_secs(15));
    let (code, jobs) = get(&c.nodes[0].url("/api/v1/print_jobs")).unwrap();
    assert_eq!((code, jobs), (200, json!([])));
}

#[test]
fn a_leader_that_lost_its_quorum_is_not_ready() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(20));
    let (code, s) = get(&c.nodes[leader].url("/cluster/status")).unwrap();
    assert_eq!((code, s["has_quorum"].clone()), (200, json!(true)), "{s}");
    for i in (0..3).filter(|i| *i != leader) {
        c.node(i).kill9();
    }
    // Within the contact timeout (3 s by default) the leader knows it is alone.
    let why = wait_for(
        "the leader to report no quorum",
        Duration::from_secs(15),
        || {
            let (code, v) = get(&c.nodes[leader].url("/readyz")).ok()?;
            (code == 503).then_some(v)
        },
    );
    assert!(why.to_string().contains("no quorum"), "{why}");
    let (_, s) = get(&c.nodes[leader].url("/cluster/status")).unwrap();
    assert_eq!(s["has_quorum"], false, "{s}");
}

#[test]
fn a_join_with_an_address_nobody_answers_is_refused_and_changes_nothing() {
    let c = Cluster::start(3);
    let (code, v) = post(
        &c.nodes[1].url("/join"),
        &json!({"node_id": "node4", "addr": format!("127.0.0.1:{}", support::free_port())}),
    )
    .unwrap();
    assert_eq!(code, 409, "{v}");
    assert!(v.to_string().contains("did not answer"), "{v}");
    let members = wait_for(
        "the learner to be taken out",
        Duration::from_secs(10),
        || {
            let s = c.status(0)?;
            let m = s["members"].as_array()?.clone();
            (m.len() == 3).then_some(m)
        },
    );
    assert!(members.iter().all(|m| m["role"] == "voter"), "{members:?}");
    // Unknown members are a 404, like every other unknown id.
    let (code, v) = delete(&c.nodes[0].url("/cluster/servers?id=node9")).unwrap();
    assert_eq!(
        (code, v["error"]["code"].clone()),
        (404, json!("unknown_member")),
        "{v}"
    );
    let (code, v) = post_raw(&c.nodes[2].url("/cluster/transfer-leader?to=node9"), "").unwrap();
    assert_eq!(code, 404, "{v}");
}
