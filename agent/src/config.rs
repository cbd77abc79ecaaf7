//! Command line and TOML configuration, merged (flags win) and validated before anything binds
//! a port or opens a file. Every problem is reported at once as `key: message`.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::cluster::health::HealthConfig;
use crate::domain::{parse_id, Connection};

/// Long options that may also be written with one dash (`-id node1`), as the original tool did.
const SINGLE_DASH_LONG: &[&str] = &[
    "id",
    "http",
    "raft",
    "raft-advertise",
    "data",
    "bootstrap",
    "join",
    "config",
    "cluster-secret",
    "clean",
    "log-level",
    "log-json",
    "from",
];

#[derive(Debug, Parser)]
#[command(
    name = "raft3d",
    version,
    about = "Raft3D agent: one per Raspberry Pi; together they run the print farm",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Sub>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Start a local 3-node farm on loopback (separate processes) and print curl lines to try.
    Demo(DemoArgs),
    /// Check a node config file and report every problem in it.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Seed a new single-node cluster from a backup (GET /cluster/snapshot); others then join.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        node: RunArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// First HTTP port; nodes use this port and the next two.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// First peer (Raft) port; nodes use this port and the next two.
    #[arg(long, default_value_t = 7000)]
    pub raft_port: u16,
    /// Where the nodes keep their data.
    #[arg(long, default_value = "./raft3d-demo")]
    pub data: PathBuf,
    /// G-code files the virtual printers print (default: the repository's samples/gcode).
    #[arg(long)]
    pub samples: Option<PathBuf>,
    /// Speed factor of the virtual printers (1 = real time).
    #[arg(long, default_value_t = 20.0)]
    pub speed: f64,
}

#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// This node's id, e.g. node1 (data lives under <data>/<id>/).
    #[arg(long)]
    pub id: Option<String>,
    /// HTTP API address, e.g. :8080 or 127.0.0.1:8080.
    #[arg(long)]
    pub http: Option<String>,
    /// Peer (Raft) address other nodes use to reach this one, e.g. 192.168.1.11:7000.
    #[arg(long)]
    pub raft: Option<String>,
    /// Peer address to tell other nodes when it differs from -raft (NAT, port forward, proxy);
    /// -raft is then only the address to listen on.
    #[arg(long)]
    pub raft_advertise: Option<String>,
    /// Data directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Start a new single-node cluster if this node has no state yet.
    #[arg(long)]
    pub bootstrap: bool,
    /// HTTP address of any node of an existing cluster to join (HOST:PORT; comma-separated list allowed).
    #[arg(long)]
    pub join: Option<String>,
    /// TOML config file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Shared secret for peer and membership traffic.
    #[arg(long, env = "RAFT3D_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Delete this node's data before starting.
    #[arg(long)]
    pub clean: bool,
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log as JSON lines (for log shippers).
    #[arg(long)]
    pub log_json: bool,
}

/// Rewrites `-id` style long options to `--id` so clap parses both spellings.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 || a.starts_with("--") || !a.starts_with('-') {
                return a;
            }
            let name = a[1..].split('=').next().unwrap_or("");
            if SINGLE_DASH_LONG.contains(&name) {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

/// Raft timing and snapshot settings (`[raft]` in TOML). Defaults suit Pis on a LAN.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// A follower waits a random time in [min, max] without heartbeats before an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after at least this many entries since the last one, and once the log
    /// since then is at least as large as that snapshot.
    pub snapshot_threshold: u64,
    /// Snapshot files kept under <data>/<id>/snapshots/.
    pub snapshots_kept: usize,
    /// Log entries kept behind the newest snapshot, so a follower a little behind catches up
    /// from the log instead of a whole snapshot.
    pub log_kept_after_snapshot: u64,
    /// How long a client request may wait for a leader before 503.
    pub request_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 80,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_threshold: 5000,
            snapshots_kept: 3,
            log_kept_after_snapshot: 1000,
            request_timeout_ms: 5000,
        }
    }
}

/// A printer declared in a node's config, registered into the farm at start-up and driven by
/// this node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrinterDecl {
    pub id: String,
    pub company: String,
    pub model: String,
    pub connection: Connection,
}

/// The TOML file: everything the flags carry, and more.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<String>,
    pub http: Option<String>,
    pub raft: Option<String>,
    pub raft_advertise: Option<String>,
    pub data: Option<PathBuf>,
    #[serde(default)]
    pub bootstrap: bool,
    #[serde(default)]
    pub join: Vec<String>,
    pub cluster_secret: Option<String>,
    pub log_level: Option<String>,
    #[serde(default)]
    pub log_json: bool,
    #[serde(default, rename = "raft_tuning")]
    pub tuning: RaftTuning,
    #[serde(default)]
    pub health: HealthConfig,
    /// Publish job and printer events to an MQTT broker (`[feed]`).
    pub feed: Option<crate::feed::FeedConfig>,
    /// Directory that relative job `filepath`s are resolved against (default: working dir).
    pub gcode_dir: Option<PathBuf>,
    #[serde(default)]
    pub printers: Vec<PrinterDecl>,
}

/// Validated settings of one node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub id: String,
    /// Address the HTTP API binds.
    pub http_bind: String,
    /// Address other nodes and clients are told to use for this node's HTTP API.
    pub http_advertise: String,
    /// Address the peer (Raft) listener binds; outgoing peer connections leave from its IP.
    pub raft_bind: String,
    /// Peer address other nodes are told to use.
    pub raft: String,
    pub data: PathBuf,
    pub bootstrap: bool,
    pub join: Vec<String>,
    pub cluster_secret: Option<String>,
    pub clean: bool,
    pub log_level: String,
    pub log_json: bool,
    pub tuning: RaftTuning,
    pub health: HealthConfig,
    pub feed: Option<crate::feed::FeedConfig>,
    pub gcode_dir: PathBuf,
    pub printers: Vec<PrinterDecl>,
}

impl Settings {
    /// This node's own directory: `<data>/<id>/`.
    pub fn node_dir(&self) -> PathBuf {
        self.data.join(&self.id)
    }
}

/// Reads a TOML config file; syntax and unknown keys are errors naming the line and key.
pub fn read_file(path: &Path) -> Result<FileConfig, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    toml::from_str(&text).map_err(|e| vec![format!("{}: {}", path.display(), e.to_string().trim())])
}

fn host_port(key: &str, value: &str, problems: &mut Vec<String>) -> Option<(String, u16)> {
    let Some((host, port)) = value.rsplit_once(':') else {
        problems.push(format!("{key}: expected HOST:PORT or :PORT, got {value:?}"));
        return None;
    };
    match port.parse::<u16>() {
        Ok(p) => Some((host.to_string(), p)),
        Err(_) => {
            problems.push(format!(
                "{key}: port must be a number 0-65535, got {port:?}"
            ));
            None
        }
    }
}

/// Merges flags over the file and validates the result.
pub fn settings(args: &RunArgs) -> Result<Settings, Vec<String>> {
    let file = match &args.config {
        Some(p) => read_file(p)?,
        None => FileConfig::default(),
    };
    let mut problems = Vec::new();
    let id = args.id.clone().or(file.id.clone());
    let id = match id {
        Some(id) => match parse_id("id", &id) {
            Ok(id) => id,
            Err(e) => {
                problems.push(e.to_string());
                String::new()
            }
        },
        None => {
            problems.push("id: required; give each node a unique name, e.g. -id node1".into());
            String::new()
        }
    };
    let raft = args
        .raft
        .clone()
        .or(file.raft.clone())
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let advertise = args.raft_advertise.clone().or(file.raft_advertise.clone());
    let unreachable = |h: &str| h.is_empty() || h == "0.0.0.0" || h == "[::]";
    let bind_host = host_port("raft", &raft, &mut problems).map(|(h, _)| h);
    let raft_host = match &advertise {
        Some(a) => host_port("raft_advertise", a, &mut problems).map(|(h, _)| h),
        None => bind_host.clone(),
    };
    if let Some(h) = &raft_host {
        if unreachable(h) {
            let key = if advertise.is_some() {
                "raft_advertise"
            } else {
                "raft"
            };
            let value = advertise.as_ref().unwrap_or(&raft);
            problems.push(format!(
                "{key}: {value:?} is not an address other nodes can reach; use this Pi's LAN address, e.g. 192.168.1.11:7000"
            ));
        }
    }
    let raft_bind = match bind_host.as_deref() {
        Some("") => format!("0.0.0.0{raft}"),
        _ => raft.clone(),
    };
    let raft = advertise.unwrap_or(raft);
    let http = args
        .http
        .clone()
        .or(file.http.clone())
        .unwrap_or_else(|| ":8080".into());
    let (http_bind, http_advertise) = match host_port("http", &http, &mut problems) {
        Some((host, port)) => {
            let bind_host = if host.is_empty() {
                "0.0.0.0".to_string()
            } else {
                host.clone()
            };
            let adv_host = if host.is_empty() || host == "0.0.0.0" || host == "[::]" {
                raft_host.clone().unwrap_or_else(|| "127.0.0.1".into())
            } else {
                host
            };
            (format!("{bind_host}:{port}"), format!("{adv_host}:{port}"))
        }
        None => (String::new(), String::new()),
    };
    let mut join: Vec<String> = match &args.join {
        Some(j) => j
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => file.join.clone(),
    };
    join.retain(|j| !j.is_empty());
    for j in &join {
        host_port("join", j, &mut problems);
    }
    let bootstrap = args.bootstrap || file.bootstrap;
    if bootstrap && !join.is_empty() {
        problems.push(
            "bootstrap: use either -bootstrap (first node) or -join (every other node), not both"
                .into(),
        );
    }
    let t = &file.tuning;
    if t.heartbeat_ms == 0 {
        problems.push("raft_tuning.heartbeat_ms: must be positive".into());
    }
    if t.election_timeout_min_ms <= t.heartbeat_ms * 2 {
        problems.push(format!(
            "raft_tuning.election_timeout_min_ms: must exceed twice heartbeat_ms ({}), got {}",
            t.heartbeat_ms * 2,
            t.election_timeout_min_ms
        ));
    }
    if t.election_timeout_max_ms <= t.election_timeout_min_ms {
        problems.push(
            "raft_tuning.election_timeout_max_ms: must be greater than election_timeout_min_ms"
                .into(),
        );
    }
    if t.snapshot_threshold == 0 {
        problems.push("raft_tuning.snapshot_threshold: must be positive".into());
    }
    if t.snapshots_kept == 0 {
        problems.push("raft_tuning.snapshots_kept: keep at least 1".into());
    }
    if t.request_timeout_ms < 100 {
        problems.push("raft_tuning.request_timeout_ms: must be at least 100".into());
    }
    let h = &file.health;
    if h.check_interval_ms < 100 {
        problems.push("health.check_interval_ms: must be at least 100".into());
    }
    if h.contact_timeout_ms <= t.heartbeat_ms {
        problems.push("health.contact_timeout_ms: must exceed raft_tuning.heartbeat_ms".into());
    }
    if h.failure_threshold == 0 {
        problems.push("health.failure_threshold: must be at least 1".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in file.printers.iter().enumerate() {
        if let Err(e) = parse_id(&format!("printers[{i}].id"), &p.id) {
            problems.push(e.to_string());
        }
        if !seen.insert(p.id.clone()) {
            problems.push(format!("printers[{i}].id: {:?} is declared twice", p.id));
        }
        // The same checks the state machine makes when the printer is registered.
        let new = crate::domain::NewPrinter {
            id: Some(crate::domain::RawId::Text(p.id.clone())),
            company: p.company.clone(),
            model: p.model.clone(),
            node_id: Some(crate::domain::RawId::Text("check".into())),
            connection: Some(p.connection.clone()),
        };
        if let Err(e) = new.into_printer(p.id.clone(), "1970-01-01T00:00:00Z") {
            problems.push(format!("printers[{i}] ({}): {e}", p.id));
        }
    }
    if let Some(feed) = &file.feed {
        problems.extend(feed.problems());
    }
    let secret = args.cluster_secret.clone().or(file.cluster_secret.clone());
    if secret.as_deref().is_some_and(|s| s.len() < 8) {
        problems.push("cluster_secret: use at least 8 characters".into());
    }
    let log_level = args
        .log_level
        .clone()
        .or(file.log_level.clone())
        .unwrap_or_else(|| "info".into());
    // A bare word must be a level: any other word parses as a target filter and silences
    // every log line, which is never what was meant.
    let bare_word_not_a_level = !log_level.contains(['=', ',', ':'])
        && !["error", "warn", "info", "debug", "trace", "off"]
            .contains(&log_level.to_ascii_lowercase().as_str());
    if bare_word_not_a_level || tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        problems.push(format!(
            "log_level: {log_level:?} is not a level (error, warn, info, debug, trace)"
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Settings {
        id,
        http_bind,
        http_advertise,
        raft_bind,
        raft,
        data: args
            .data
            .clone()
            .or(file.data.clone())
            .unwrap_or_else(|| PathBuf::from("./data")),
        bootstrap,
        join,
        cluster_secret: secret,
        clean: args.clean,
        log_level,
        log_json: args.log_json || file.log_json,
        tuning: file.tuning.clone(),
        health: file.health.clone(),
        feed: file.feed.clone(),
        gcode_dir: file.gcode_dir.clone().unwrap_or_else(|| PathBuf::from(".")),
        printers: file.printers.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::parse_from(normalize_args(args.iter().map(|s| s.to_string())))
    }

    #[test]
    fn single_and_double_dash_spellings_both_work() {
        let cli = parse(&[
            "raft3d",
            "-id",
            "node1",
            "-http",
            ":8080",
            "-raft",
            "127.0.0.1:7000",
            "-data",
            "./data",
            "-bootstrap",
        ]);
        let s = settings(&cli.run).unwrap();
        assert_eq!(s.id, "node1");
        assert_eq!(s.http_bind, "0.0.0.0:8080");
        assert_eq!(s.http_advertise, "127.0.0.1:8080");
        assert!(s.bootstrap);
        let cli = parse(&["raft3d", "--id", "node2", "--join", "127.0.0.1:8080"]);
        let s = settings(&cli.run).unwrap();
        assert_eq!(s.join, vec!["127.0.0.1:8080".to_string()]);
    }

    #[test]
    fn an_advertised_peer_address_is_told_to_others_and_the_listener_binds_raft() {
        let cli = parse(&[
            "raft3d",
            "-id",
            "node1",
            "-raft",
            ":7000",
            "-raft-advertise",
            "192.168.1.11:17000",
        ]);
        let s = settings(&cli.run).unwrap();
        assert_eq!(s.raft_bind, "0.0.0.0:7000");
        assert_eq!(s.raft, "192.168.1.11:17000");
        assert_eq!(s.http_advertise, "192.168.1.11:8080");
        // Without an advertised address, -raft must be reachable itself.
        let cli = parse(&["raft3d", "-id", "node1", "-raft", ":7000"]);
        let text = settings(&cli.run).unwrap_err().join("\n");
        assert!(text.contains("raft: \":7000\" is not an address"), "{text}");
        let cli = parse(&["raft3d", "-id", "n", "-raft-advertise", "0.0.0.0:7000"]);
        let text = settings(&cli.run).unwrap_err().join("\n");
        assert!(text.contains("raft_advertise: "), "{text}");
    }

    #[test]
    fn a_bad_feed_section_is_reported_with_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(
            &p,
            "id = \"node1\"\n[feed]\nbroker = \"mqtt.local\"\ncluster = \"my/farm\"\npassword = \"x\"\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        let text = settings(&args).unwrap_err().join("\n");
        for key in [
            "feed.broker: expected HOST:PORT",
            "feed.cluster:",
            "feed.password:",
        ] {
            assert!(text.contains(key), "missing {key} in {text}");
        }
        std::fs::write(&p, "id = \"node1\"\n[feed]\nbroker = \"10.0.0.2:1883\"\n").unwrap();
        let s = settings(&args).unwrap();
        let feed = s.feed.unwrap();
        assert_eq!(
            (feed.cluster.as_str(), feed.telemetry_interval_ms),
            ("farm", 10_000)
        );
    }

    #[test]
    fn a_log_level_that_is_not_a_level_is_refused() {
        for bad in ["verbose", "infos"] {
            let cli = parse(&["raft3d", "-id", "n1", "--log-level", bad]);
            let text = settings(&cli.run).unwrap_err().join("\n");
            assert!(text.contains("log_level:"), "{bad}: {text}");
        }
        for good in ["INFO", "debug", "raft3d=debug,openraft=warn"] {
            let cli = parse(&["raft3d", "-id", "n1", "--log-level", good]);
            assert!(settings(&cli.run).is_ok(), "{good}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let args = RunArgs {
            raft: Some("0.0.0.0:notaport".into()),
            http: Some("8080".into()),
            bootstrap: true,
            join: Some("x:1".into()),
            ..Default::default()
        };
        let problems = settings(&args).unwrap_err();
        let text = problems.join("\n");
        for key in ["id:", "raft:", "http:", "bootstrap:"] {
            assert!(text.contains(key), "missing {key} in {text}");
        }
    }

    #[test]
    fn invalid_printers_are_reported_with_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        let text = "id = \"node1\"\nraft = \"127.0.0.1:7000\"\nbootstrap = true\n\
            [[printers]]\nid = \"v1\"\ncompany = \"Raft3D\"\nmodel = \"Virtual\"\n\
            connection = { kind = \"virtual\", speed = -1 }\n\
            [[printers]]\nid = \"b1\"\ncompany = \"\"\nmodel = \"P1S\"\n\
            connection = { kind = \"bambu\", host = \"10.0.0.5\", serial = \"\" }\n";
        std::fs::write(&p, text).unwrap();
        let args = RunArgs {
            config: Some(p),
            ..Default::default()
        };
        let text = settings(&args).unwrap_err().join("\n");
        assert!(
            text.contains("printers[0] (v1): connection.speed"),
            "{text}"
        );
        assert!(text.contains("printers[1] (b1)"), "{text}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_rejected_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(&p, "id = \"node1\"\nbogus_key = 1\n").unwrap();
        let err = read_file(&p).unwrap_err().join("\n");
        assert!(err.contains("bogus_key"), "{err}");
    }
}
