//! The farm event feed against an MQTT broker that runs in this test process: every node says
//! `online` (retained, so a late subscriber sees it), a job's status changes are published
//! in order and once each by the node that drives its printer, the printer's telemetry is published while
//! it prints, a node killed with SIGKILL turns `offline` through its last will, and one
//! stopped with SIGTERM says `offline` itself.

use std::time::Duration;

use raft3d::printers::fake_broker::{BrokerConfig, FakeBroker};
use raft3d_tests::support::{get, post, post_raw, wait_for, Cluster};
use serde_json::{json, Value};

/// Subscribes to `filter` and collects what arrives (topic, payload, retained) for `for_`.
async fn listen(port: u16, filter: &str, for_: Duration) -> Vec<(String, String, bool)> {
    let mut opts = rumqttc::MqttOptions::new("feed-test-subscriber", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    client
        .subscribe(filter, rumqttc::QoS::AtMostOnce)
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + for_;
    while let Ok(event) = tokio::time::timeout_at(deadline, events.poll()).await {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = event {
            got.push((
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.retain,
            ));
        }
    }
    let _ = client.disconnect().await;
    got
}

fn statuses(broker: &FakeBroker, job: &str) -> Vec<String> {
    broker
        .published()
        .into_iter()
        .filter(|(t, _)| t == &format!("raft3d/testfarm/jobs/{job}"))
        .filter_map(|(_, body)| {
            let v: Value = serde_json::from_str(&body).ok()?;
            Some(v["status"].as_str()?.to_string())
        })
        .collect()
}

fn last_status_of_node(broker: &FakeBroker, node: &str) -> Option<String> {
    broker
        .published()
        .into_iter()
        .rev()
        .find(|(t, _)| t == &format!("raft3d/testfarm/nodes/{node}/status"))
        .map(|(_, body)| body)
}

#[test]
fn the_feed_shows_nodes_jobs_and_telemetry_and_a_dead_node_turns_offline() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let broker = rt
        .block_on(FakeBroker::start(BrokerConfig::default()))
        .expect("broker");
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/gcode");
    let mut c = Cluster::new(3);
    for i in 0..3 {
        let cfg = c.config_file(
            &format!("node{}.toml", i + 1),
            &format!(
                "gcode_dir = {:?}\n[feed]\nbroker = \"127.0.0.1:{}\"\ncluster = \"testfarm\"\ntelemetry_interval_ms = 500\n\
                 [[printers]]\nid = \"virtual-{}\"\ncompany = \"Raft3D\"\nmodel = \"Virtual\"\nconnection = {{ kind = \"virtual\", speed = 100 }}\n",
                samples.display().to_string(),
                broker.port,
                i + 1
            ),
        );
        c.nodes[i].extra = vec!["--config".into(), cfg];
    }
    c.boot();

    // Every node online, retained for whoever subscribes later.
    let got = wait_for("three nodes online", Duration::from_secs(30), || {
        let got = rt.block_on(listen(
            broker.port,
            "raft3d/testfarm/nodes/+/status",
            Duration::from_millis(500),
        ));
        (got.iter()
            .filter(|(_, body, retained)| body == "online" && *retained)
            .count()
            == 3)
            .then_some(got)
    });
    assert!(
        got.iter()
            .all(|(t, _, _)| t.starts_with("raft3d/testfarm/nodes/node")),
        "{got:?}"
    );

    // A job printed on node2's printer: each status published once, by node2 alone.
    let (code, v) = post(
        &c.nodes[0].url("/api/v1/filaments"),
        &json!({"id": "f1", "type": "PLA", "color": "red", "total_weight_in_grams": 1000}),
    )
    .unwrap();
    assert_eq!(code, 201, "{v}");
    wait_for("the printers registered", Duration::from_secs(20), || {
        let (_, v) = get(&c.nodes[0].url("/api/v1/printers")).ok()?;
        (v.as_array()?.len() == 3).then_some(())
    });
    let (code, v) = post(&c.nodes[2].url("/api/v1/print_jobs"), &json!({"id": "j1", "printer_id": "virtual-2", "filament_id": "f1", "filepath": "bracket.gcode", "print_weight_in_grams": 4.71})).unwrap();
    assert_eq!(code, 201, "{v}");
    let (code, v) = post_raw(
        &c.nodes[0].url("/api/v1/print_jobs/j1/status?status=running"),
        "",
    )
    .unwrap();
    assert_eq!(code, 200, "{v}");
    wait_for("j1 Done in the feed", Duration::from_secs(60), || {
        statuses(&broker, "j1")
            .contains(&"Done".to_string())
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    // In order, each at most once (a `Queued` that lasted only until the start may be
    // folded into `Running`), and `Done` exactly once: only node2 speaks for its printer.
    let seen = statuses(&broker, "j1");
    let order = ["Queued", "Running", "Done"];
    let positions: Vec<usize> = seen
        .iter()
        .map(|s| order.iter().position(|o| o == s).expect("a known status"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order, once each: {seen:?}"
    );
    assert!(
        seen.ends_with(&["Running".to_string(), "Done".to_string()]),
        "{seen:?}"
    );
    let printing = broker.published().into_iter().any(|(t, body)| {
        t == "raft3d/testfarm/printers/virtual-2/telemetry" && body.contains("\"printing\"")
    });
    assert!(
        printing,
        "telemetry while printing: {:?}",
        broker.published()
    );

    // kill -9: the broker publishes node3's last will.
    c.node(2).kill9();
    wait_for("node3 offline by its will", Duration::from_secs(30), || {
        (last_status_of_node(&broker, "node3").as_deref() == Some("offline")).then_some(())
    });
    // SIGTERM: node1 says goodbye itself; back again, it is online.
    c.node(0).terminate();
    assert_eq!(
        last_status_of_node(&broker, "node1").as_deref(),
        Some("offline")
    );
    c.node(0).spawn(&[]);
    wait_for("node1 online again", Duration::from_secs(30), || {
        (last_status_of_node(&broker, "node1").as_deref() == Some("online")).then_some(())
    });
    drop(broker);
}
