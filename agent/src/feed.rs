//! The farm event feed: job status changes and printer telemetry published to an MQTT broker
//! under `raft3d/<cluster>/...`, with a retained online/offline status and last will per node,
//! so Home Assistant and dashboards can follow the farm (optional, `[feed]` in the config).
//!
//! Topics (all retained, JSON unless noted):
//! - `raft3d/<cluster>/nodes/<node>/status`: `online` / `offline` (plain text; `offline` is
//!   also the node's last will, so a killed node turns `offline` when the broker notices);
//! - `raft3d/<cluster>/jobs/<job>`: the job as the API shows it, after each applied batch that
//!   changed it (a status that lasted less than one batch, e.g. `Queued` of a job started at
//!   once, may be skipped; the retained message is always the current state);
//! - `raft3d/<cluster>/printers/<printer>/telemetry`: the printer's live telemetry.
//!
//! Each node publishes for the printers it drives (their jobs and telemetry); the leader
//! publishes the jobs of printers no agent drives. A node that starts, or takes over a
//! printer, publishes the current state of its jobs once, so retained topics are right after
//! restarts and failovers. The feed never blocks the node: a broker that is down only delays
//! messages (rumqttc reconnects; what changed meanwhile is published on reconnect).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::cluster::node::Node;
use crate::domain::{FarmState, PrintJob};

/// `[feed]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// The broker, `host:port`.
    pub broker: String,
    /// The topic level after `raft3d/`, e.g. the farm's name.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Telemetry of a printer is published when its state changes, and at least this often
    /// while it prints.
    #[serde(default = "default_telemetry_ms")]
    pub telemetry_interval_ms: u64,
}

fn default_cluster() -> String {
    "farm".into()
}
fn default_telemetry_ms() -> u64 {
    10_000
}

impl FeedConfig {
    /// Problems as `feed.key: message`, reported with the rest of the config.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.broker.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => out.push(format!(
                "feed.broker: expected HOST:PORT of the MQTT broker, got {:?}",
                self.broker
            )),
        }
        let level_ok = !self.cluster.is_empty()
            && !self
                .cluster
                .chars()
                .any(|c| matches!(c, '/' | '+' | '#') || c.is_whitespace());
        if !level_ok {
            out.push(format!(
                "feed.cluster: must be one topic level without '/', '+', '#' or spaces, got {:?}",
                self.cluster
            ));
        }
        if self.telemetry_interval_ms < 500 {
            out.push("feed.telemetry_interval_ms: use at least 500".into());
        }
        if self.password.is_some() && self.username.is_none() {
            out.push("feed.password: given without feed.username".into());
        }
        out
    }
}

/// Topic names of one farm.
struct Topics {
    base: String,
}

impl Topics {
    fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}/status", self.base)
    }
    fn job(&self, job: &str) -> String {
        format!("{}/jobs/{job}", self.base)
    }
    fn telemetry(&self, printer: &str) -> String {
        format!("{}/printers/{printer}/telemetry", self.base)
    }
}

/// The jobs this node speaks for in `farm`: those of printers it drives, and, on the leader,
/// those of printers no agent drives.
fn my_jobs<'a>(
    farm: &'a FarmState,
    me: &'a str,
    leader: bool,
) -> impl Iterator<Item = &'a PrintJob> + 'a {
    farm.jobs().filter(move |j| {
        match farm
            .printer(&j.printer_id)
            .and_then(|p| p.node_id.as_deref())
        {
            Some(n) => n == me,
            None => leader,
        }
    })
}

/// What was last published for a job: its status and update time.
type Seen = HashMap<String, (String, String)>;

/// Runs the feed until `stop`; logs and carries on through broker outages.
pub async fn run(cfg: FeedConfig, node: Arc<Node>, stop: CancellationToken) {
    let me = node.id.0.clone();
    let topics = Topics {
        base: format!("raft3d/{}", cfg.cluster),
    };
    let Some((host, port)) = cfg
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
    else {
        return;
    };
    let mut opts = MqttOptions::new(format!("raft3d-{}-{me}", cfg.cluster), host, port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_last_will(LastWill::new(
        topics.node(&me),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &cfg.username {
        opts.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    let (client, mut events) = AsyncClient::new(opts, 256);
    let connected = Arc::new(tokio::sync::Notify::new());
    let on_connect = connected.clone();
    let broker = cfg.broker.clone();
    let loop_stop = stop.clone();
    tokio::spawn(async move {
        let mut down_since: Option<Instant> = None;
        loop {
            let event = tokio::select! {
                _ = loop_stop.cancelled() => return,
                e = events.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(%broker, "event feed connected");
                    down_since = None;
                    on_connect.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    if down_since.is_none() {
                        tracing::warn!(%broker, error = %e, "event feed: broker unreachable; retrying (check feed.broker and the broker's login)");
                        down_since = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });

    let mut applied = node.sm.subscribe_applied();
    let mut seen: Seen = HashMap::new();
    let mut telemetry: HashMap<String, (String, Instant)> = HashMap::new();
    let interval = Duration::from_millis(cfg.telemetry_interval_ms);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut republish = false;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = connected.notified() => {
                // (Re)connected: say we are here and publish the current state afresh.
                let _ = client.publish(topics.node(&me), QoS::AtLeastOnce, true, "online").await;
                republish = true;
            }
            r = applied.changed() => if r.is_err() { break },
            _ = tick.tick() => {}
        }
        if republish {
            seen.clear();
            telemetry.clear();
        }
        let leader = node.metrics().current_leader.as_ref() == Some(&node.id);
        let changes: Vec<(String, Vec<u8>)> = {
            let replica = node.sm.read();
            my_jobs(&replica.farm, &me, leader)
                .filter(|j| {
                    let now = (j.status.to_string(), j.updated_at.clone());
                    seen.get(&j.id) != Some(&now)
                })
                .filter_map(|j| Some((j.id.clone(), serde_json::to_vec(j).ok()?)))
                .collect()
        };
        for (id, body) in changes {
            if client
                .try_publish(topics.job(&id), QoS::AtLeastOnce, true, body)
                .is_err()
            {
                // Queue full (broker away): keep `seen` as is and try again later.
                break;
            }
            let replica = node.sm.read();
            if let Some(j) = replica.farm.job(&id) {
                seen.insert(id, (j.status.to_string(), j.updated_at.clone()));
            }
        }
        publish_telemetry(&node, &client, &topics, &me, interval, &mut telemetry);
    }
    // A clean stop: retract our presence before the connection goes.
    let _ = client
        .publish(topics.node(&me), QoS::AtLeastOnce, true, "offline")
        .await;
    let _ = tokio::time::timeout(Duration::from_millis(500), client.disconnect()).await;
}

/// Publishes the telemetry of every printer driven here whose state or job changed, or that
/// prints and was last published `interval` ago.
fn publish_telemetry(
    node: &Node,
    client: &AsyncClient,
    topics: &Topics,
    me: &str,
    interval: Duration,
    last: &mut HashMap<String, (String, Instant)>,
) {
    let Some(dispatch) = node.dispatch.get() else {
        return;
    };
    let printers: Vec<String> = {
        let replica = node.sm.read();
        replica
            .farm
            .printers()
            .filter(|p| p.node_id.as_deref() == Some(me))
            .map(|p| p.id.clone())
            .collect()
    };
    for id in printers {
        let Ok(t) = dispatch.telemetry(&id) else {
            continue;
        };
        let key = format!(
            "{}|{}|{:?}|{:?}",
            t.connection, t.state, t.job_id, t.last_error
        );
        let due = match last.get(&id) {
            None => true,
            Some((k, at)) => *k != key || (t.state == "printing" && at.elapsed() >= interval),
        };
        if !due {
            continue;
        }
        let Ok(body) = serde_json::to_vec(&t) else {
            continue;
        };
        if client
            .try_publish(topics.telemetry(&id), QoS::AtMostOnce, true, body)
            .is_ok()
        {
            last.insert(id, (key, Instant::now()));
        }
    }
}
