//! Harness for process-level tests: real `raft3d` processes on free loopback ports in a temp
//! dir, with kill -9, SIGTERM and restart, and small blocking HTTP helpers. Every wait is
//! bounded and fails the test with the node logs' location.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netproxy::{node_ip, Net};

/// The `raft3d` binary built by the same cargo invocation: next to this executable (a bin) or
/// one level up (a test in `deps/`). `RAFT3D_BIN` overrides it.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RAFT3D_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let candidates: Vec<PathBuf> = [exe.parent(), exe.parent().and_then(Path::parent)]
        .into_iter()
        .flatten()
        .map(|d| d.join("raft3d"))
        .collect();
    candidates
        .into_iter()
        .find(|b| b.exists())
        .unwrap_or_else(|| {
            panic!(
                "the raft3d binary is missing next to {}; build it first with `cargo build -p raft3d`",
                exe.display()
            )
        })
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// Polls `cond` every 50 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct NodeProc {
    pub id: String,
    pub http: String,
    pub raft: String,
    pub data: PathBuf,
    pub extra: Vec<String>,
    /// Environment variables set for the process.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl NodeProc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Starts the process with `args` after the common identity flags.
    pub fn spawn(&mut self, args: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(binary())
            .args([
                "-id", &self.id, "-http", &self.http, "-raft", &self.raft, "-data",
            ])
            .arg(&self.data)
            .args(args)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raft3d");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns how long the process took to exit.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        started.elapsed()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Prepares `n` nodes (node1..nodeN) without starting them.
    pub fn new(n: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes = (1..=n)
            .map(|i| NodeProc {
                id: format!("node{i}"),
                http: format!("127.0.0.1:{}", free_port()),
                raft: format!("127.0.0.1:{}", free_port()),
                data: dir.path().join("data"),
                extra: Vec::new(),
                env: Vec::new(),
                child: None,
                log: dir.path().join(format!("node{i}.log")),
            })
            .collect();
        Cluster { nodes, dir }
    }

    /// Prepares `n` nodes whose peer traffic goes through a [`Net`] of proxies the test can cut:
    /// node i listens for peers on its own loopback IP and advertises its proxy.
    pub fn new_behind_proxies(n: usize) -> (Cluster, Net) {
        let mut c = Cluster::new(n);
        let targets: Vec<std::net::SocketAddr> = (0..n)
            .map(|i| {
                let l = std::net::TcpListener::bind((node_ip(i), 0)).expect("bind node IP");
                l.local_addr().expect("local addr")
            })
            .collect();
        let net = Net::start(&targets);
        for (i, node) in c.nodes.iter_mut().enumerate() {
            node.raft = targets[i].to_string();
            node.extra.extend([
                "-raft-advertise".to_string(),
                net.proxy_addrs[i].to_string(),
            ]);
        }
        (c, net)
    }

    /// Adds `args` to every node's command line.
    pub fn with_args(mut self, args: &[&str]) -> Cluster {
        for n in &mut self.nodes {
            n.extra.extend(args.iter().map(|s| s.to_string()));
        }
        self
    }

    /// Sets an environment variable for every node's process.
    pub fn with_env(mut self, key: &str, value: &str) -> Cluster {
        for n in &mut self.nodes {
            n.env.push((key.to_string(), value.to_string()));
        }
        self
    }

    /// Starts node1 with -bootstrap and the others with -join, and waits for all voters.
    pub fn start(n: usize) -> Cluster {
        let mut c = Cluster::new(n);
        c.boot();
        c
    }

    pub fn boot(&mut self) {
        self.nodes[0].spawn(&["-bootstrap".to_string()]);
        self.wait_leader(Duration::from_secs(20));
        let join = self.nodes[0].http.clone();
        for i in 1..self.nodes.len() {
            self.nodes[i].spawn(&["-join".to_string(), join.clone()]);
        }
        self.wait_voters(self.nodes.len(), Duration::from_secs(40));
    }

    pub fn status(&self, i: usize) -> Option<Value> {
        let (code, v) = get(&self.nodes[i].url("/cluster/status")).ok()?;
        (code == 200).then_some(v)
    }

    /// Index of the current leader, as reported by a live node that knows one.
    pub fn wait_leader(&self, limit: Duration) -> usize {
        wait_for("a leader", limit, || {
            for i in 0..self.nodes.len() {
                if let Some(s) = self.status(i) {
                    if s["is_leader"] == true {
                        return Some(i);
                    }
                }
            }
            None
        })
    }

    pub fn wait_voters(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let formed = (|| {
                let s = self.status(0).or_else(|| self.status(1))?;
                let voters = s["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["role"] == "voter")
                    .count();
                (voters == n && !s["leader"].is_null()).then_some(())
            })();
            if formed.is_some() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {limit:?} waiting for {n} voters; node logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Adds a node (not started) sharing the cluster's temp dir.
    pub fn add_node(&mut self, id: &str) -> usize {
        let (extra, env) = self
            .nodes
            .first()
            .map(|n| (n.extra.clone(), n.env.clone()))
            .unwrap_or_default();
        self.nodes.push(NodeProc {
            id: id.to_string(),
            http: format!("127.0.0.1:{}", free_port()),
            raft: format!("127.0.0.1:{}", free_port()),
            data: self.dir.path().join("data"),
            extra,
            env,
            child: None,
            log: self.dir.path().join(format!("{id}.log")),
        });
        self.nodes.len() - 1
    }

    /// Writes a TOML config into the cluster's temp dir and returns its path.
    pub fn config_file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write config");
        p.to_string_lossy().into_owned()
    }

    /// Voter ids as reported by node `i`.
    pub fn voters(&self, i: usize) -> Option<Vec<String>> {
        let s = self.status(i)?;
        Some(
            s["members"]
                .as_array()?
                .iter()
                .filter(|m| m["role"] == "voter")
                .filter_map(|m| m["id"].as_str().map(String::from))
                .collect(),
        )
    }

    /// Creates printer `p1` and filament `f1` (`grams` total) through node `via`.
    pub fn seed_printer_and_spool(&self, via: usize, grams: u64) {
        let n = &self.nodes[via];
        let printer = serde_json::json!({"id": "p1", "company": "Prusa", "model": "MK4"});
        let (code, v) = post(&n.url("/api/v1/printers"), &printer).expect("create printer");
        assert_eq!(code, 201, "{v}");
        let spool = serde_json::json!({"id": "f1", "type": "PLA", "color": "red", "total_weight_in_grams": grams});
        let (code, v) = post(&n.url("/api/v1/filaments"), &spool).expect("create filament");
        assert_eq!(code, 201, "{v}");
    }

    pub fn node(&mut self, i: usize) -> &mut NodeProc {
        &mut self.nodes[i]
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("===== {} =====\n{}", n.id, n.log_text()))
            .collect()
    }
}

/// A blocking HTTP client for loopback tests: no proxy, each request bounded by `timeout`.
pub fn http_client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("client")
}

fn client() -> reqwest::blocking::Client {
    http_client(Duration::from_secs(15))
}

fn parse(resp: reqwest::blocking::Response) -> reqwest::Result<(u16, Value)> {
    let code = resp.status().as_u16();
    let text = resp.text()?;
    Ok((
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

pub fn get(url: &str) -> reqwest::Result<(u16, Value)> {
    parse(client().get(url).send()?)
}

pub fn post(url: &str, body: &Value) -> reqwest::Result<(u16, Value)> {
    parse(client().post(url).json(body).send()?)
}

pub fn post_raw(
    url: &str,
    body: impl Into<reqwest::blocking::Body>,
) -> reqwest::Result<(u16, Value)> {
    parse(
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()?,
    )
}

pub fn delete(url: &str) -> reqwest::Result<(u16, Value)> {
    parse(client().delete(url).send()?)
}
