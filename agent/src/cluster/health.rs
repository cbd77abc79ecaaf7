//! Leader-side failure detector: every check interval the leader looks at each member's last
//! contact (openraft's heartbeat metrics) and keeps a consecutive-failure count, reset on
//! contact. Optionally removes a member that stays unresponsive — only when the remaining
//! voters are at least three and still hold a quorum of live voters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{Instant as _, ServerState};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::node::Node;
use super::types::NodeId;
use crate::domain::Command;

/// `[health]` in the node config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often the leader checks its members.
    pub check_interval_ms: u64,
    /// A member without contact for longer than this fails a check.
    pub contact_timeout_ms: u64,
    /// Consecutive failed checks before a member counts as dead (for auto-removal).
    pub failure_threshold: u32,
    /// Remove dead members automatically (off by default).
    pub auto_remove: bool,
    /// Members seen for less than this are never auto-removed.
    pub join_grace_ms: u64,
    /// Consecutive failed checks after which the network printers (Bambu, Moonraker) a member
    /// supervises move to the leader, which re-attaches to their prints; 0 turns it off.
    pub printer_failover_checks: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check_interval_ms: 2000,
            contact_timeout_ms: 3000,
            failure_threshold: 20,
            auto_remove: false,
            join_grace_ms: 60_000,
            printer_failover_checks: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberHealth {
    pub failed_checks: u32,
    /// Milliseconds since the leader last heard from the member (`None`: never).
    pub last_contact_ms: Option<u64>,
    #[serde(skip)]
    pub first_seen: Option<Instant>,
}

/// What the detector knows, shared with `/cluster/status` and `/metrics`.
#[derive(Default)]
pub struct Health {
    pub config: HealthConfig,
    members: Mutex<BTreeMap<NodeId, MemberHealth>>,
}

impl Health {
    pub fn new(config: HealthConfig) -> Health {
        Health {
            config,
            members: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn snapshot(&self) -> BTreeMap<NodeId, MemberHealth> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn forget(&self, id: &NodeId) {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Members the leader heard from within the contact timeout (the leader counts itself).
pub fn live_members(node: &Node) -> BTreeSet<NodeId> {
    let m = node.metrics();
    let timeout = Duration::from_millis(node.health.config.contact_timeout_ms);
    let mut live = BTreeSet::from([node.id.clone()]);
    if let Some(hb) = &m.heartbeat {
        for (id, last) in hb {
            if last.as_ref().is_some_and(|t| t.elapsed() <= timeout) {
                live.insert(id.clone());
            }
        }
    }
    live
}

/// Whether `voters` would keep a majority of live members.
pub fn has_live_quorum(voters: &BTreeSet<NodeId>, live: &BTreeSet<NodeId>) -> bool {
    let alive = voters.iter().filter(|v| live.contains(*v)).count();
    !voters.is_empty() && alive > voters.len() / 2
}

/// Runs the detector until shutdown. Only the leader checks; followers clear their state.
pub async fn run(node: Arc<Node>, shutdown: CancellationToken) {
    let cfg = node.health.config.clone();
    let interval = Duration::from_millis(cfg.check_interval_ms.max(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let m = node.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            node.health
                .members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            continue;
        }
        let membership = m.membership_config.membership();
        let members: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| id.clone()).collect();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let timeout = Duration::from_millis(cfg.contact_timeout_ms);
        let mut dead = Vec::new();
        let mut orphaned = BTreeSet::new();
        {
            let mut state = node
                .health
                .members
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            state.retain(|id, _| members.contains(id));
            for id in members.iter().filter(|id| **id != node.id) {
                let last = m
                    .heartbeat
                    .as_ref()
                    .and_then(|hb| hb.get(id).cloned().flatten())
                    .map(|t| t.elapsed());
                let entry = state.entry(id.clone()).or_insert(MemberHealth {
                    failed_checks: 0,
                    last_contact_ms: None,
                    first_seen: Some(Instant::now()),
                });
                entry.last_contact_ms = last.map(|d| d.as_millis() as u64);
                if last.is_some_and(|d| d <= timeout) {
                    entry.failed_checks = 0;
                    continue;
                }
                entry.failed_checks += 1;
                tracing::warn!(
                    "server {id} is unresponsive ({}/{} failed checks)",
                    entry.failed_checks,
                    cfg.failure_threshold
                );
                if cfg.printer_failover_checks > 0
                    && entry.failed_checks >= cfg.printer_failover_checks
                {
                    orphaned.insert(id.0.clone());
                }
                let settled = entry
                    .first_seen
                    .is_some_and(|t| t.elapsed() >= Duration::from_millis(cfg.join_grace_ms));
                // Learners are still being added (or caught up); only voters are removed.
                if cfg.auto_remove
                    && voters.contains(id)
                    && entry.failed_checks >= cfg.failure_threshold
                    && settled
                {
                    dead.push(id.clone());
                }
            }
        }
        take_over_printers(&node, &orphaned).await;
        for id in dead {
            let mut remaining = voters.clone();
            remaining.remove(&id);
            let live = live_members(&node);
            if remaining.len() < 3 || !has_live_quorum(&remaining, &live) {
                tracing::warn!(
                    node = %id,
                    "not auto-removing: {} voters would remain ({} live); at least 3 with a live quorum are required",
                    remaining.len(),
                    remaining.iter().filter(|v| live.contains(*v)).count()
                );
                continue;
            }
            tracing::warn!(node = %id, "auto-removing unresponsive server");
            match node.remove_here(id.0.clone()).await {
                Ok(()) => node.health.forget(&id),
                Err(e) => tracing::warn!(node = %id, error = %e, "auto-removal failed"),
            }
        }
    }
}

/// Moves the network printers supervised by `gone` members to this node (the leader, which
/// is live by definition). The move is a compare-and-set in the state machine, so a move
/// decided twice, or by a leader that has just lost office, changes nothing.
async fn take_over_printers(node: &Node, gone: &BTreeSet<String>) {
    if gone.is_empty() {
        return;
    }
    let moves: Vec<(String, String)> = {
        let replica = node.sm.read();
        replica
            .farm
            .printers()
            .filter(|p| p.connection.as_ref().is_some_and(|c| c.is_network()))
            .filter_map(|p| {
                let from = p.node_id.clone()?;
                gone.contains(&from).then(|| (p.id.clone(), from))
            })
            .collect()
    };
    for (printer_id, from) in moves {
        tracing::warn!(printer = %printer_id, from = %from, to = %node.id, "agent {from} is unresponsive: taking over the supervision of network printer {printer_id}");
        let cmd = Command::MovePrinter {
            printer_id: printer_id.clone(),
            from,
            to: node.id.0.clone(),
        };
        match node.propose(cmd).await {
            Ok(Ok(_)) => tracing::info!(printer = %printer_id, "printer supervision moved here"),
            Ok(Err(e)) => tracing::info!(printer = %printer_id, error = %e, "printer not moved"),
            Err(e) => {
                tracing::warn!(printer = %printer_id, error = %e, "printer move not committed; retried at the next check")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<NodeId> {
        ids.iter().map(|s| NodeId::from(*s)).collect()
    }

    #[test]
    fn quorum_needs_a_strict_majority_of_live_voters() {
        assert!(has_live_quorum(&set(&["a", "b", "c"]), &set(&["a", "b"])));
        assert!(!has_live_quorum(
            &set(&["a", "b", "c", "d"]),
            &set(&["a", "b"])
        ));
        assert!(!has_live_quorum(&set(&[]), &set(&["a"])));
        assert!(has_live_quorum(&set(&["a"]), &set(&["a"])));
    }
}
