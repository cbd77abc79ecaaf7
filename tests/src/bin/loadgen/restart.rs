//! Restart time of a follower holding a large farm: SIGTERM then start, and kill -9 then start;
//! each timed from the start of the new process to `/readyz` answering 200, and to the node
//! having applied everything the leader had committed when the node went down.

use std::time::{Duration, Instant};

use raft3d_tests::support::{get, wait_for, Cluster};

pub struct Restart {
    pub how: &'static str,
    pub stop: Duration,
    pub ready: Duration,
    pub caught_up: Duration,
}

fn applied(c: &Cluster, i: usize) -> Option<u64> {
    c.status(i)?["applied_index"].as_u64()
}

fn commit_index(c: &Cluster, i: usize) -> u64 {
    c.status(i)
        .and_then(|s| s["commit_index"].as_u64())
        .unwrap_or(0)
}

/// Stops follower `f` (SIGTERM or SIGKILL), starts it again and times its return.
pub fn restart(c: &mut Cluster, f: usize, graceful: bool) -> Restart {
    let leader = c.wait_leader(Duration::from_secs(30));
    assert_ne!(leader, f, "restart() wants a follower");
    let target = commit_index(c, leader);
    let stop = if graceful {
        c.node(f).terminate()
    } else {
        let t = Instant::now();
        c.node(f).kill9();
        t.elapsed()
    };
    let started = Instant::now();
    c.node(f).spawn(&[]);
    let url = c.nodes[f].url("/readyz");
    wait_for(
        "the restarted node's /readyz",
        Duration::from_secs(180),
        || matches!(get(&url), Ok((200, _))).then_some(()),
    );
    let ready = started.elapsed();
    wait_for(
        "the restarted node to catch up",
        Duration::from_secs(180),
        || (applied(c, f)? >= target).then_some(()),
    );
    Restart {
        how: if graceful { "SIGTERM" } else { "kill -9" },
        stop,
        ready,
        caught_up: started.elapsed(),
    }
}

/// Total size of the files under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
