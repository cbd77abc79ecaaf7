//! A node's life cycle: open storage, start Raft, serve peers and clients, bootstrap or join,
//! then stop in a fixed order when the shutdown token fires or storage fails.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use openraft::type_config::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cluster::health::Health;
use crate::cluster::network::{Network, PeerClient};
use crate::cluster::node::Counters;
use crate::cluster::types::{Member, NodeId, Raft};
use crate::cluster::{ClusterError, JoinRequest, Node};
use crate::config::Settings;
use crate::domain::{Applied, Command, DomainError, NewPrinter};
use crate::store::{LogStore, StateMachine};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("storage under {dir}: {source}")]
    Storage { dir: String, source: std::io::Error },
    #[error("raft: {0}")]
    Raft(String),
}

/// Sets up logging: human-readable lines, or JSON lines for log shippers.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{level},openraft=warn,hyper=warn,reqwest=warn,h2=warn,tower=warn"
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The IP outgoing peer connections leave from: the peer listener's, unless it listens on all
/// interfaces (then the kernel picks by route).
fn peer_source_ip(bind: &str) -> Option<std::net::IpAddr> {
    let ip = bind.parse::<std::net::SocketAddr>().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

fn raft_config(s: &Settings) -> Result<openraft::Config, ServerError> {
    let t = &s.tuning;
    openraft::Config {
        cluster_name: "raft3d".into(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        // Snapshots cross slow Wi-Fi to Pis: allow minutes, not openraft's 200 ms.
        install_snapshot_timeout: 120_000,
        // Snapshots are triggered by `schedule_snapshots`, which also weighs the farm's size.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: t.log_kept_after_snapshot,
        // A leader killed and restarted before anyone noticed must win a new election, as in
        // standard Raft. Resuming its old term lost acknowledged writes and let replicas
        // diverge in the kill -9 torture test: entries a follower quorum had committed were
        // missing from the leader's own disk, and it wrote different ones under the same log
        // ids. The cost is one election (well under a second) after a leader restart.
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| ServerError::Raft(e.to_string()))
}

/// Triggers a snapshot once the log since the last one holds at least `threshold` entries and
/// at least as many bytes as that snapshot. A fixed entry count would rewrite a large farm
/// every few seconds under load (a 90 MB farm every 5,000 writes cost the disk 18 KB per write
/// and starved heartbeats into elections); this way snapshots never write more than the log.
async fn schedule_snapshots(node: Arc<Node>, threshold: u64, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (applied, snapshot) = {
            let rx = node.raft.metrics();
            let m = rx.borrow_watched();
            (
                m.last_applied.as_ref().map_or(0, |l| l.index()),
                m.snapshot.as_ref().map_or(0, |l| l.index()),
            )
        };
        let since = applied.saturating_sub(snapshot);
        if since < threshold {
            continue;
        }
        let log = &node.log_stats;
        let entries = log.entries.load(Ordering::Relaxed).max(1);
        let entry_bytes = (log.bytes.load(Ordering::Relaxed) / entries).max(1);
        let snapshot_bytes = node.sm.stats().last_snapshot_bytes.load(Ordering::Relaxed);
        if since.saturating_mul(entry_bytes) < snapshot_bytes {
            continue;
        }
        // Ignored by openraft while a snapshot is being built.
        if node.raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// Runs one node until `shutdown` is cancelled (or storage fails, which cancels it too).
pub async fn run(s: Settings, shutdown: CancellationToken) -> Result<(), ServerError> {
    tracing::info!(node = %s.id, phase = "start", "starting raft3d {}", env!("CARGO_PKG_VERSION"));
    if s.cluster_secret.is_none() {
        tracing::warn!(
            "NO CLUSTER SECRET CONFIGURED: peer and membership traffic is unauthenticated; \
             anyone on the network can join or remove nodes. Set cluster_secret or --cluster-secret."
        );
    }
    let dir = s.node_dir();
    let storage = |source| ServerError::Storage {
        dir: dir.display().to_string(),
        source,
    };
    if s.clean {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::warn!(dir = %dir.display(), "-clean: deleted this node's data"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(storage(e)),
        }
    }
    std::fs::create_dir_all(&dir).map_err(storage)?;

    let raft_listener =
        TcpListener::bind(&s.raft_bind)
            .await
            .map_err(|source| ServerError::Bind {
                what: "peer (raft) traffic",
                addr: s.raft_bind.clone(),
                source,
            })?;
    let http_listener =
        TcpListener::bind(&s.http_bind)
            .await
            .map_err(|source| ServerError::Bind {
                what: "the HTTP API",
                addr: s.http_bind.clone(),
                source,
            })?;
    let me = Member {
        raft_addr: s.raft.clone(),
        http_addr: s.http_advertise.clone(),
    };

    tracing::info!(phase = "storage", dir = %dir.display(), "opening storage");
    let log = LogStore::open(&dir).map_err(storage)?;
    let log_stats = log.stats();
    let sm = StateMachine::open(dir.clone(), s.tuning.snapshots_kept).map_err(storage)?;
    let peers = PeerClient::new(s.cluster_secret.clone(), peer_source_ip(&s.raft_bind));
    let raft = Raft::new(
        NodeId(s.id.clone()),
        Arc::new(raft_config(&s)?),
        Network {
            client: peers.clone(),
        },
        log,
        sm.clone(),
    )
    .await
    .map_err(|e| ServerError::Raft(e.to_string()))?;
    let node = Arc::new(Node {
        id: NodeId(s.id.clone()),
        me: me.clone(),
        raft: raft.clone(),
        sm,
        log_stats,
        peers,
        request_timeout: Duration::from_millis(s.tuning.request_timeout_ms),
        health: Arc::new(Health::new(s.health.clone())),
        counters: Counters::default(),
        recovered: std::sync::atomic::AtomicBool::new(false),
        dispatch: std::sync::OnceLock::new(),
    });

    tokio::spawn(schedule_snapshots(
        node.clone(),
        s.tuning.snapshot_threshold,
        shutdown.clone(),
    ));

    let secret: Option<Arc<str>> = s.cluster_secret.as_deref().map(Arc::from);
    let peer_app = crate::cluster::peer_api::router(node.clone(), secret.clone());
    let http_app = crate::api::router(node.clone(), secret);
    let stop = shutdown.clone();
    let peer_server = tokio::spawn(async move {
        let listener = raft_listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, peer_app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    let stop = shutdown.clone();
    let http_server = tokio::spawn(async move {
        let listener = http_listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, http_app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    tracing::info!(phase = "serving", http = %s.http_bind, raft = %s.raft_bind, raft_advertised = %s.raft, "serving HTTP API and peer traffic");

    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    if s.bootstrap {
        if initialized {
            tracing::info!("-bootstrap ignored: this node already has cluster state");
        } else {
            tracing::info!(
                phase = "bootstrap",
                "initializing a new single-node cluster"
            );
            raft.initialize(BTreeMap::from([(NodeId(s.id.clone()), me.clone())]))
                .await
                .map_err(|e| ServerError::Raft(e.to_string()))?;
        }
    }
    if !s.join.is_empty() {
        let fresh = !initialized;
        tokio::spawn(join_cluster(
            node.clone(),
            s.join.clone(),
            fresh,
            shutdown.clone(),
        ));
    }
    tokio::spawn(crate::cluster::health::run(node.clone(), shutdown.clone()));
    tokio::spawn(mark_recovered(node.clone(), shutdown.clone()));
    let dispatcher = crate::dispatch::start(node.clone(), s.gcode_dir.clone(), shutdown.clone());
    let _ = node.dispatch.set(dispatcher);
    if !s.printers.is_empty() {
        tokio::spawn(register_printers(node.clone(), s.clone(), shutdown.clone()));
    }
    let feed_stop = CancellationToken::new();
    let feed = s.feed.clone().map(|cfg| {
        tracing::info!(broker = %cfg.broker, topics = %format!("raft3d/{}/#", cfg.cluster), "event feed on");
        tokio::spawn(crate::feed::run(cfg, node.clone(), feed_stop.clone()))
    });
    let fatal = tokio::spawn(watch_raft(node.clone(), shutdown.clone()));

    shutdown.cancelled().await;
    tracing::info!(
        phase = "stop",
        "stopping: no new requests, shutting down raft"
    );
    let fatal = if fatal.is_finished() {
        fatal.await.ok().flatten()
    } else {
        fatal.abort();
        None
    };
    if tokio::time::timeout(Duration::from_secs(5), raft.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("raft did not stop within 5 s");
    }
    if let Some(feed) = feed {
        feed_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), feed).await;
    }
    for server in [peer_server, http_server] {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    tracing::info!(phase = "stopped", "raft3d stopped");
    match fatal {
        Some(e) => Err(ServerError::Raft(e)),
        None => Ok(()),
    }
}

/// Logs leader changes; on a fatal raft error (e.g. storage failure) stops the node.
async fn watch_raft(node: Arc<Node>, shutdown: CancellationToken) -> Option<String> {
    use std::sync::atomic::Ordering;
    let mut rx = node.raft.metrics();
    let mut leader: Option<NodeId> = None;
    let mut leaderless_since = Some(std::time::Instant::now());
    loop {
        let (now_leader, term, stopped) = {
            let m = rx.borrow_watched();
            (
                m.current_leader.clone(),
                m.current_term,
                m.running_state.as_ref().err().map(|e| e.to_string()),
            )
        };
        if let Some(e) = stopped {
            if !shutdown.is_cancelled() {
                tracing::error!(error = %e, "raft stopped with an error; this node stops so it serves no wrong answers");
                shutdown.cancel();
                return Some(e);
            }
            return None;
        }
        if now_leader != leader {
            let show = |l: &Option<NodeId>| {
                l.as_ref()
                    .map(|n| n.0.clone())
                    .unwrap_or_else(|| "none".into())
            };
            tracing::info!(
                "leader changed from {} to {}, term {}",
                show(&leader),
                show(&now_leader),
                term
            );
            node.counters.leader_changes.fetch_add(1, Ordering::Relaxed);
            match (&now_leader, leaderless_since) {
                (Some(_), Some(since)) => {
                    let ms = since.elapsed().as_millis() as u64;
                    node.counters.leaderless_ms.fetch_add(ms, Ordering::Relaxed);
                    leaderless_since = None;
                }
                (None, None) => leaderless_since = Some(std::time::Instant::now()),
                _ => {}
            }
            leader = now_leader;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = rx.changed() => if r.is_err() { return None },
        }
    }
}

/// Asks a member of an existing cluster to add this node, retrying until it answers.
async fn join_cluster(
    node: Arc<Node>,
    targets: Vec<String>,
    fresh: bool,
    shutdown: CancellationToken,
) {
    let req = JoinRequest {
        node_id: node.id.0.clone(),
        addr: node.me.raft_addr.clone(),
        http_addr: Some(node.me.http_addr.clone()),
        fresh: Some(fresh),
    };
    let mut delay = Duration::from_millis(200);
    loop {
        for target in &targets {
            match node
                .peers
                .call::<_, serde_json::Value>(target, "/join", &req, Duration::from_secs(60))
                .await
            {
                Ok(_) => {
                    tracing::info!(via = %target, phase = "joined", "joined the cluster as a voter");
                    return;
                }
                Err(e) => {
                    tracing::warn!(via = %target, error = %e, "join attempt failed; will retry")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Registers the printers declared in this node's config into the replicated farm.
async fn register_printers(node: Arc<Node>, s: Settings, shutdown: CancellationToken) {
    for decl in &s.printers {
        let new = NewPrinter {
            id: Some(crate::domain::RawId::Text(decl.id.clone())),
            company: decl.company.clone(),
            model: decl.model.clone(),
            node_id: Some(crate::domain::RawId::Text(s.id.clone())),
            connection: Some(decl.connection.clone()),
        };
        let printer = match new.into_printer(decl.id.clone(), &crate::cluster::node::now_rfc3339())
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(printer = %decl.id, error = %e, "declared printer is invalid");
                continue;
            }
        };
        loop {
            match node.propose(Command::CreatePrinter(printer.clone())).await {
                Ok(Ok(Applied::Printer(_))) => {
                    tracing::info!(printer = %decl.id, "registered printer from config");
                    break;
                }
                Ok(Err(DomainError::DuplicateId { .. })) | Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::error!(printer = %decl.id, error = %e, "could not register printer");
                    break;
                }
                Err(ClusterError::ShuttingDown) => return,
                Err(e) => tracing::debug!(error = %e, "printer registration waits for a leader"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Waits until the state machine has applied everything the cluster had committed for this
/// node's log before the restart, then allows local (stale) reads.
async fn mark_recovered(node: Arc<Node>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = node.raft.wait_for_recovery(Some(Duration::from_secs(5))) => {
                match r {
                    Ok(_) => {
                        node.recovered.store(true, std::sync::atomic::Ordering::Release);
                        tracing::info!(phase = "recovered", "state recovered; local reads allowed");
                        return;
                    }
                    Err(openraft::metrics::WaitError::ShuttingDown) => return,
                    Err(_) => {}
                }
            }
        }
    }
}
