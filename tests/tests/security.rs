//! The cluster secret: with one configured, peer and membership requests without it get 401
//! and are logged; nodes that share it form a cluster; without one the node warns loudly.

use raft3d_tests::support;

use std::time::Duration;

use serde_json::json;
use support::{post, Cluster};

#[test]
fn peers_and_membership_need_the_secret() {
    let c = Cluster::new(3).with_args(&["--cluster-secret", "s3cret-farm-key"]);
    let mut c = c;
    c.boot();
    let n = &c.nodes[0];
    let (code, _) = post(
        &n.url("/join"),
        &json!({"node_id": "intruder", "addr": "127.0.0.1:1"}),
    )
    .unwrap();
    assert_eq!(code, 401);
    let (code, _) = post(&format!("http://{}/raft/vote", n.raft), &json!({})).unwrap();
    assert_eq!(code, 401);
    let (code, _) = post(&format!("http://{}/internal/propose", n.raft), &json!({})).unwrap();
    assert_eq!(code, 401);
    let code = reqwest::blocking::Client::new()
        .delete(n.url("/cluster/servers?id=node2"))
        .send()
        .unwrap()
        .status();
    assert_eq!(code, 401);
    assert!(n
        .log_text()
        .contains("refused peer request without a valid cluster secret"));
    // Client API stays open; the cluster still works.
    let (code, _) = post(
        &c.nodes[1].url("/api/v1/printers"),
        &json!({"company": "A", "model": "B"}),
    )
    .unwrap();
    assert_eq!(code, 201);
    c.wait_voters(3, Duration::from_secs(5));
}

#[test]
fn without_a_secret_the_node_warns_and_old_commands_work() {
    let c = Cluster::start(2);
    assert!(c.nodes[0]
        .log_text()
        .contains("NO CLUSTER SECRET CONFIGURED"));
    let (code, _) = post(
        &c.nodes[1].url("/api/v1/printers"),
        &json!({"company": "A", "model": "B"}),
    )
    .unwrap();
    assert_eq!(code, 201);
}
