//! The cluster secret: with one configured, peer and membership requests without it get 401
//! and are logged; nodes that share it form a cluster; without one the node warns loudly.

use raft3d_tests::support;

use std::time::Duration;

use serde_json::json;
use support::{post, Cluster};

const CODE: &str = "87654321";

fn bambu_printer() -> serde_json::Value {
    json!({"id": "x1", "company": "Bambu Lab", "model": "X1C", "node_id": "spare-pi", "connection": {
        "kind": "bambu", "host": "127.0.0.1", "serial": "01S00A000000001", "access_code": CODE,
        "ca_file": "/etc/raft3d/bambu-ca.pem"}})
}

/// `GET /cluster/snapshot` with an optional secret header: (status, body bytes).
fn backup(c: &Cluster, secret: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = reqwest::blocking::Client::new().get(c.nodes[0].url("/cluster/snapshot"));
    if let Some(s) = secret {
        req = req.header("x-raft3d-secret", s);
    }
    let r = req.send().unwrap();
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

fn holds(bytes: &[u8], text: &str) -> bool {
    bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

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

    // A backup is an admin call: it needs the secret, and then holds the printer secrets a
    // restore needs.
    let (code, _) = post(&c.nodes[0].url("/api/v1/printers"), &bambu_printer()).unwrap();
    assert_eq!(code, 201);
    assert_eq!(backup(&c, None).0, 401);
    let (code, bytes) = backup(&c, Some("s3cret-farm-key"));
    assert_eq!(code, 200);
    assert!(holds(&bytes, CODE), "a full backup keeps the access code");
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

    // Without a secret anyone may take a backup, so it leaves the printer secrets out.
    let (code, v) = post(&c.nodes[0].url("/api/v1/printers"), &bambu_printer()).unwrap();
    assert_eq!(code, 201, "{v}");
    assert!(!v.to_string().contains(CODE), "{v}");
    let (code, bytes) = backup(&c, None);
    assert_eq!(code, 200);
    assert!(!holds(&bytes, CODE), "the backup leaks the access code");
    assert!(
        holds(&bytes, "01S00A000000001"),
        "the rest of the printer is there"
    );
}
