//! A 3-member etcd cluster on loopback for the side-by-side benchmark: `/usr/bin/etcd` (or
//! `ETCD_BIN`) with its default durability (WAL fsync per batch, backend commit every 100 ms),
//! each member's data dir in a temp dir, free ports, bounded waits, members killed on drop.
//! Clients talk to the HTTP/JSON gateway of the v3 API (`/v3/kv/put`, `/v3/kv/range`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use raft3d_tests::support::{free_port, wait_for};
use serde_json::{json, Value};

pub struct EtcdMember {
    pub name: String,
    pub client: String,
    child: Option<Child>,
}

impl EtcdMember {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.client, path)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    pub version: String,
    // Declared last: members are killed before their data dirs are removed.
    pub dir: tempfile::TempDir,
}

fn binary() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into())
}

/// `etcd --version`'s first line, or why etcd cannot run.
pub fn version() -> Result<String, String> {
    let out = Command::new(binary())
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e} (apt-get install etcd-server)", binary()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("etcd")
        .to_string())
}

impl EtcdCluster {
    /// Starts `n` members and waits (bounded) until each is healthy and a leader is elected.
    pub fn start(n: usize) -> Result<EtcdCluster, String> {
        let version = version()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let peers: Vec<(String, u16, u16)> = (0..n)
            .map(|i| (format!("etcd{i}"), free_port(), free_port()))
            .collect();
        let initial: Vec<String> = peers
            .iter()
            .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (name, client, peer) in &peers {
            let data: PathBuf = dir.path().join(name);
            let log = std::fs::File::create(dir.path().join(format!("{name}.log")))
                .map_err(|e| e.to_string())?;
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new(binary())
                .args(["--name", name, "--data-dir"])
                .arg(&data)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", "raft3d-loadgen"])
                .args(["--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("spawn etcd: {e}"))?;
            members.push(EtcdMember {
                name: name.clone(),
                client: format!("127.0.0.1:{client}"),
                child: Some(child),
            });
        }
        let cluster = EtcdCluster {
            members,
            version,
            dir,
        };
        for m in &cluster.members {
            wait_for(
                &format!(
                    "{} healthy (logs in {})",
                    m.name,
                    cluster.dir.path().display()
                ),
                Duration::from_secs(30),
                || {
                    let (code, v) = call(&m.url("/health"), None).ok()?;
                    (code == 200 && v["health"] == "true").then_some(())
                },
            );
        }
        cluster.wait_leader(Duration::from_secs(30));
        Ok(cluster)
    }

    fn status(&self, i: usize) -> Option<Value> {
        let (code, v) = call(
            &self.members[i].url("/v3/maintenance/status"),
            Some(json!({})),
        )
        .ok()?;
        (code == 200).then_some(v)
    }

    /// Index of the member that reports itself leader.
    pub fn wait_leader(&self, limit: Duration) -> usize {
        wait_for("an etcd leader", limit, || {
            (0..self.members.len()).find(|&i| {
                self.status(i)
                    .is_some_and(|s| s["leader"] == s["header"]["member_id"])
            })
        })
    }

    /// Raft term as member `i` sees it (elections = term growth).
    pub fn term(&self, i: usize) -> f64 {
        self.status(i)
            .and_then(|s| s["raftTerm"].as_str().and_then(|t| t.parse().ok()))
            .unwrap_or(0.0)
    }

    /// fsync calls behind member `i`'s durable writes: one per WAL sync plus two per bbolt
    /// backend commit (bbolt syncs the data pages, then the meta page).
    pub fn fsyncs(&self, i: usize) -> (f64, f64) {
        let Ok((_, Value::String(text))) = call(&self.members[i].url("/metrics"), None) else {
            return (0.0, 0.0);
        };
        (
            crate::metric_in(&text, "etcd_disk_wal_fsync_duration_seconds_count"),
            crate::metric_in(&text, "etcd_disk_backend_commit_duration_seconds_count"),
        )
    }
}

fn call(url: &str, body: Option<Value>) -> reqwest::Result<(u16, Value)> {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let req = match body {
        Some(b) => client.post(url).json(&b),
        None => client.get(url),
    };
    let resp = req.send()?;
    let code = resp.status().as_u16();
    let text = resp.text()?;
    Ok((
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Standard base64 (with padding), as the v3 JSON gateway wants keys and values.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(ABC[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
        }
    }
}
