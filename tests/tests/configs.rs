//! The example node configs in `configs/` are what people copy onto their Pis. Every file must
//! pass the real binary's `check-config`, and every example farm must hang together: one
//! founding node, distinct ids and addresses, joins that point at other members, one shared
//! secret. A broken config gets all of its problems reported in one run, and a misspelled key
//! is named.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use raft3d_tests::support::binary;

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// Every `*.toml` under `dir`, recursively, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            out.extend(toml_files(&path));
        } else if path.extension().is_some_and(|x| x == "toml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn check_config(path: &Path) -> Output {
    Command::new(binary())
        .arg("check-config")
        .arg(path)
        .output()
        .expect("run raft3d check-config")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_example_config_passes_check_config() {
    let files = toml_files(&configs_dir());
    assert!(
        files.len() >= 8,
        "expected the 3-node and 5-node farms in configs/, found {files:?}"
    );
    for file in &files {
        let out = check_config(file);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "{} is refused:\n{stderr}",
            file.display()
        );
        // node3.toml configures node3: the file name says which Pi it belongs on.
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        assert!(
            stdout.contains(&format!("ok (node {stem},")),
            "{} should configure node {stem}: {stdout}",
            file.display()
        );
    }
}

/// One node's file, reduced to what the farm-level rules look at.
struct Member {
    file: PathBuf,
    id: String,
    raft: String,
    /// The address other nodes use for its HTTP API (`:PORT` is served on the raft host).
    http: String,
    bootstrap: bool,
    join: Vec<String>,
    secret: Option<String>,
}

fn member(file: &Path) -> Member {
    let raw = std::fs::read_to_string(file).expect("read config");
    let doc: toml::Table = raw
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let s = |key: &str| doc.get(key).and_then(|v| v.as_str()).map(String::from);
    let raft = s("raft").unwrap_or_else(|| panic!("{}: no raft address", file.display()));
    let raft_host = raft.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
    let http = s("http").unwrap_or_else(|| ":8080".into());
    let http = match http.strip_prefix(':') {
        Some(port) => format!("{raft_host}:{port}"),
        None => http,
    };
    Member {
        file: file.to_path_buf(),
        id: s("id").unwrap_or_default(),
        raft,
        http,
        bootstrap: doc
            .get("bootstrap")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        join: doc
            .get("join")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|j| j.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        secret: s("cluster_secret"),
    }
}

#[test]
fn each_example_farm_hangs_together() {
    let mut farms = 0;
    for entry in std::fs::read_dir(configs_dir()).expect("configs/") {
        let dir = entry.expect("directory entry").path();
        if !dir.is_dir() {
            continue;
        }
        farms += 1;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let members: Vec<Member> = toml_files(&dir).iter().map(|f| member(f)).collect();
        // farm-5 holds five nodes.
        if let Some(n) = name
            .strip_prefix("farm-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            assert_eq!(members.len(), n, "{name}: expected {n} node configs");
        }
        let distinct = |f: fn(&Member) -> &String| {
            members.iter().map(f).collect::<BTreeSet<_>>().len() == members.len()
        };
        assert!(distinct(|m| &m.id), "{name}: node ids repeat");
        assert!(distinct(|m| &m.raft), "{name}: raft addresses repeat");
        assert!(distinct(|m| &m.http), "{name}: HTTP addresses repeat");
        let founders: Vec<_> = members.iter().filter(|m| m.bootstrap).collect();
        assert_eq!(
            founders.len(),
            1,
            "{name}: exactly one node bootstraps the farm"
        );
        let addresses: BTreeSet<&String> = members.iter().map(|m| &m.http).collect();
        for m in members.iter().filter(|m| !m.bootstrap) {
            assert!(
                !m.join.is_empty(),
                "{}: a node that does not bootstrap must join",
                m.file.display()
            );
            for j in &m.join {
                assert!(
                    addresses.contains(j) && *j != m.http,
                    "{}: join target {j} is not another member's HTTP address",
                    m.file.display()
                );
            }
            assert!(
                m.join.contains(&founders[0].http),
                "{}: should list the founding node {} to join through",
                m.file.display(),
                founders[0].http
            );
        }
        let secrets: BTreeSet<_> = members.iter().map(|m| &m.secret).collect();
        assert_eq!(
            secrets.len(),
            1,
            "{name}: every node needs the same cluster_secret"
        );
        assert!(
            secrets.iter().all(|s| s.is_some()),
            "{name}: the example farms show a cluster_secret"
        );
    }
    assert!(farms >= 2, "expected farm directories under configs/");
}

const BROKEN: &str = r#"
id = "node 1"
http = "8080"
raft = "0.0.0.0:7000"
bootstrap = true
join = ["192.168.1.12:8080", "pi3"]
cluster_secret = "short"
log_level = "debug=verbose"

[raft_tuning]
heartbeat_ms = 400
election_timeout_min_ms = 600
election_timeout_max_ms = 500
snapshot_threshold = 0
snapshots_kept = 0
request_timeout_ms = 50

[[printers]]
id = "mk4-1"
company = "Prusa"
model = "MK4"
connection = { kind = "serial", port = "/dev/ttyACM0" }

[[printers]]
id = "mk4-1"
company = "Prusa"
model = "MK4"
connection = { kind = "serial", port = "/dev/ttyACM1" }
"#;

#[test]
fn a_broken_config_gets_every_problem_reported_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, BROKEN).expect("write config");
    let out = check_config(&file);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check-config must fail: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
    let expected = [
        "id:",
        "http:",
        "raft:",
        "join:",
        "bootstrap:",
        "cluster_secret:",
        "log_level:",
        "raft_tuning.election_timeout_min_ms:",
        "raft_tuning.election_timeout_max_ms:",
        "raft_tuning.snapshot_threshold:",
        "raft_tuning.snapshots_kept:",
        "raft_tuning.request_timeout_ms:",
        "printers[1].id:",
    ];
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.ends_with("problem(s)"))
        .collect();
    for key in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(key)),
            "no problem reported for {key} in:\n{stderr}"
        );
    }
    let summary = format!("{}: {} problem(s)", file.display(), problems.len());
    assert!(
        stderr.lines().last() == Some(summary.as_str()),
        "the last line counts the problems ({summary}):\n{stderr}"
    );
    assert!(problems.len() >= expected.len());
}

#[test]
fn a_misspelled_key_is_refused_with_its_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("[raft_tuning]\nheartbeat = 100\n", "heartbeat"),
        (
            "[[printers]]\nid = \"p1\"\ncompany = \"Prusa\"\nmodel = \"MK4\"\n\
             connection = { kind = \"serial\", port = \"/dev/ttyACM0\", baudrate = 115200 }\n",
            "baudrate",
        ),
        (
            "[[printers]]\nid = \"p1\"\ncompany = \"Bambu Lab\"\nmodel = \"P1S\"\n\
             connection = { kind = \"bambulab\", host = \"192.168.1.50\" }\n",
            "bambulab",
        ),
        (
            "cluster_secrets = \"long-enough-secret\"\n",
            "cluster_secrets",
        ),
    ];
    for (i, (body, key)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.toml"));
        std::fs::write(
            &file,
            format!("id = \"node1\"\nraft = \"192.168.1.11:7000\"\n{body}"),
        )
        .expect("write config");
        let out = check_config(&file);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{key} should be refused");
        assert!(
            stderr.contains(&format!("`{key}`")),
            "the message should name {key}:\n{stderr}"
        );
    }
}
