//! A running Raft3D node: the openraft instance, its state machine and the logic that makes
//! any node usable by clients — server-side forwarding of writes and membership changes to the
//! leader, linearizable reads through ReadIndex, and a bounded wait when no leader is known.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::errors::RaftError;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, ReadPolicy, ServerState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::health::{has_live_quorum, live_members, Health};
use super::network::{PeerClient, PeerError};
use super::types::{Member, NodeId, Raft, RaftMetrics};
use crate::domain::{ApplyResult, Command, Proposal};
use crate::store::{StateMachine, WriteStats};

/// Why a cluster operation could not be carried out. Serializable so a leader's refusal
/// reaches the client of a follower unchanged.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    #[error("no leader is known after waiting {waited_ms} ms; the cluster may be electing or lack a quorum of live voters — retry shortly")]
    NoLeader { waited_ms: u64 },
    /// Internal: this node is not the leader; callers retry against the current leader.
    #[error("this node is not the leader")]
    NotLeader,
    #[error("this node is shutting down")]
    ShuttingDown,
    #[error("the cluster could not complete the request: {0}")]
    Unavailable(String),
    #[error("the leader did not answer in time ({0}); the write may or may not have been applied — read it back before retrying")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
    /// The named node is not a member (or not a voter) of this cluster.
    #[error("{0}")]
    UnknownMember(String),
}

/// Answer of a leader to a forwarded call.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply<T> {
    Ok(T),
    Err(ClusterError),
}

impl<T> From<Result<T, ClusterError>> for ForwardReply<T> {
    fn from(r: Result<T, ClusterError>) -> Self {
        match r {
            Ok(v) => ForwardReply::Ok(v),
            Err(e) => ForwardReply::Err(e),
        }
    }
}

/// `POST /join` body (the original tools send `node_id` and `addr`, the Raft address).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub node_id: String,
    pub addr: String,
    #[serde(default)]
    pub http_addr: Option<String>,
    /// `false` when the joining node already holds cluster state. Absent (older tools): fresh.
    #[serde(default)]
    pub fresh: Option<bool>,
}

enum Route {
    Me,
    Other(NodeId, Member),
}

pub struct Node {
    pub id: NodeId,
    pub me: Member,
    pub raft: Raft,
    pub sm: StateMachine,
    pub log_stats: Arc<WriteStats>,
    pub peers: PeerClient,
    /// How long a request may wait for a leader before it is answered 503.
    pub request_timeout: Duration,
    pub health: Arc<Health>,
    pub counters: Counters,
    /// Set once the state machine has recovered everything committed before a restart; until
    /// then stale reads are served as linearizable ones.
    pub recovered: std::sync::atomic::AtomicBool,
    /// The printer dispatcher, set once at start-up.
    pub dispatch: std::sync::OnceLock<Arc<crate::dispatch::Dispatcher>>,
}

/// Cluster events counted for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub leader_changes: AtomicU64,
    /// Total milliseconds this node spent without a known leader.
    pub leaderless_ms: AtomicU64,
}

/// RFC 3339 time for stamping proposals (never read inside apply).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// How long a joining node has to answer the leader at all, and then to catch up.
const JOIN_CONTACT: Duration = Duration::from_secs(5);
const JOIN_CATCH_UP: Duration = Duration::from_secs(120);

fn raft_error<E>(e: RaftError<super::types::TypeConfig, E>) -> ClusterError
where
    E: std::fmt::Display
        + std::fmt::Debug
        + openraft::TryAsRef<openraft::errors::ForwardToLeader<super::types::TypeConfig>>,
{
    if e.forward_to_leader().is_some() {
        return ClusterError::NotLeader;
    }
    match e {
        RaftError::Fatal(f) => {
            if matches!(f, openraft::errors::Fatal::Stopped) {
                ClusterError::ShuttingDown
            } else {
                ClusterError::Unavailable(f.to_string())
            }
        }
        RaftError::APIError(api) => ClusterError::Unavailable(api.to_string()),
    }
}

impl Node {
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Finds the leader, waiting (bounded by `deadline`) while none is known.
    async fn route(&self, deadline: Instant) -> Result<Route, ClusterError> {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Err(e) = &m.running_state {
                    return Err(ClusterError::Unavailable(e.to_string()));
                }
                if let Some(leader) = &m.current_leader {
                    if *leader == self.id {
                        if m.state == ServerState::Leader {
                            return Ok(Route::Me);
                        }
                    } else if let Some(node) = m.membership_config.membership().get_node(leader) {
                        return Ok(Route::Other(leader.clone(), node.clone()));
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClusterError::NoLeader {
                    waited_ms: self.request_timeout.as_millis() as u64,
                });
            }
            match tokio::time::timeout(deadline - now, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClusterError::ShuttingDown),
                Err(_) => {}
            }
        }
    }

    /// Runs `local` on the leader: here when this node leads, else by forwarding to `path` on
    /// the leader's peer address. Retries while leadership moves, until the deadline.
    async fn on_leader<Req, T, F, Fut>(
        &self,
        path: &str,
        body: &Req,
        local: F,
    ) -> Result<T, ClusterError>
    where
        Req: Serialize + ?Sized,
        T: DeserializeOwned,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ClusterError>>,
    {
        self.on_leader_within(self.request_timeout, path, body, local)
            .await
    }

    /// `on_leader` for work that may take longer than a request (`limit` for the answer).
    async fn on_leader_within<Req, T, F, Fut>(
        &self,
        limit: Duration,
        path: &str,
        body: &Req,
        local: F,
    ) -> Result<T, ClusterError>
    where
        Req: Serialize + ?Sized,
        T: DeserializeOwned,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ClusterError>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            let outcome = match self.route(deadline).await? {
                Route::Me => local().await,
                Route::Other(leader, member) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let wait = left.max(Duration::from_millis(500));
                    match self
                        .peers
                        .call::<_, ForwardReply<T>>(&member.raft_addr, path, body, wait)
                        .await
                    {
                        Ok(ForwardReply::Ok(v)) => Ok(v),
                        Ok(ForwardReply::Err(e)) => Err(e),
                        Err(PeerError::Unreachable { .. }) => {
                            tracing::debug!(%leader, "leader unreachable; waiting for a new one");
                            Err(ClusterError::NotLeader)
                        }
                        Err(e @ PeerError::Unauthorized { .. }) => {
                            Err(ClusterError::Unavailable(e.to_string()))
                        }
                        Err(e @ PeerError::Failed { .. }) => {
                            Err(ClusterError::OutcomeUnknown(e.to_string()))
                        }
                    }
                }
            };
            match outcome {
                Err(ClusterError::NotLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(ClusterError::NotLeader) => {
                    return Err(ClusterError::NoLeader {
                        waited_ms: self.request_timeout.as_millis() as u64,
                    })
                }
                other => return other,
            }
        }
    }

    /// Stamps and proposes a command; the answer is the state machine's verdict.
    pub async fn propose(&self, command: Command) -> Result<ApplyResult, ClusterError> {
        let proposal = Proposal {
            at: now_rfc3339(),
            command,
        };
        self.on_leader("/internal/propose", &proposal, || {
            self.propose_here(proposal.clone())
        })
        .await
    }

    /// Leader side of a proposal.
    pub async fn propose_here(&self, proposal: Proposal) -> Result<ApplyResult, ClusterError> {
        match self.raft.client_write(proposal).await {
            Ok(r) => Ok(r.data),
            // The entry was appended, then dropped when this node took another leader's log:
            // it may still commit. Retrying could apply the write twice, so the caller learns
            // that the outcome is unknown instead.
            Err(RaftError::APIError(openraft::errors::ClientWriteError::LogEntryDiscarded(f))) => {
                Err(ClusterError::OutcomeUnknown(format!(
                    "leadership changed while the write was in flight (new leader: {:?})",
                    f.leader_id
                )))
            }
            Err(e) => Err(raft_error(e)),
        }
    }

    /// Waits until this node's replica reflects every write committed before the call
    /// (ReadIndex through the leader). Afterwards a local read is linearizable.
    pub async fn linearize(&self) -> Result<(), ClusterError> {
        let index: u64 = self
            .on_leader("/internal/read-index", &(), || self.read_index_here())
            .await?;
        let wait = self.request_timeout;
        self.raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| ClusterError::Unavailable(format!("replica did not catch up: {e}")))?;
        Ok(())
    }

    /// Leader side of ReadIndex: confirms leadership with a quorum and returns the index a
    /// reader must have applied.
    ///
    /// openraft's read index is max(this term's no-op, the commit index this node knows). That
    /// is only safe while the no-op proves the commit index: a leader that resumed its term
    /// after a restart (openraft's leader restore, now turned off in `server::raft_config`)
    /// knows only the persisted commit hint, and a read at it missed acknowledged writes in
    /// the kill -9 torture test. As a second guard the index is at least the leader's last log
    /// index: every acknowledged write is in the leader's log, so a read then waits for
    /// in-flight writes too (one replication round at most).
    pub async fn read_index_here(&self) -> Result<u64, ClusterError> {
        let read = self
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(raft_error)?;
        let last_log = self.metrics().last_log_index.unwrap_or(0);
        Ok(read.index().max(last_log))
    }

    /// Adds a node as a learner, lets it catch up, then promotes it to voter.
    pub async fn join(&self, req: JoinRequest) -> Result<(), ClusterError> {
        // Adding a learner waits for it to catch up (bounded in `wait_caught_up`).
        let limit = self.request_timeout + JOIN_CONTACT + JOIN_CATCH_UP;
        self.on_leader_within(limit, "/internal/join", &req, || {
            self.join_here(req.clone())
        })
        .await
    }

    pub async fn join_here(&self, req: JoinRequest) -> Result<(), ClusterError> {
        let id = NodeId(req.node_id.clone());
        let member = Member {
            raft_addr: req.addr.clone(),
            http_addr: req.http_addr.clone().unwrap_or_default(),
        };
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&id) {
            if membership.get_node(&id) == Some(&member) {
                return Ok(());
            }
            return Err(ClusterError::Refused(format!(
                "node {id} is already a voter with a different address; remove it first \
                 (DELETE /cluster/servers?id={id})"
            )));
        }
        if self.sm.read().farm.is_removed_node(&id.0) {
            if req.fresh == Some(false) {
                return Err(ClusterError::Refused(format!(
                    "node {id} was removed from this cluster and still holds its old data; \
                     start it with -clean (or wipe its data directory) before it joins again"
                )));
            }
            self.propose_here(Proposal {
                at: now_rfc3339(),
                command: Command::ClearNodeRemoved(id.0.clone()),
            })
            .await?
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        }
        let live = live_members(self);
        if !has_live_quorum(&voters, &live) {
            return Err(ClusterError::Refused(format!(
                "the cluster has no live quorum ({} of {} voters reachable); bring voters back before adding {id}",
                voters.iter().filter(|v| live.contains(*v)).count(),
                voters.len()
            )));
        }
        tracing::info!(node = %id, addr = %member.raft_addr, "adding learner");
        let addr = member.raft_addr.clone();
        // A membership change still committing (a node that has just joined) is waited out.
        let deadline = Instant::now() + self.request_timeout;
        let added = loop {
            match self
                .raft
                .add_learner(id.clone(), member.clone(), false)
                .await
            {
                Err(RaftError::APIError(
                    openraft::errors::ClientWriteError::ChangeMembershipError(
                        openraft::errors::ChangeMembershipError::InProgress(_),
                    ),
                )) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => break r.map_err(raft_error)?,
            }
        };
        // openraft's own wait counts a learner that never answered as caught up while the log
        // is shorter than its lag threshold: wait for the learner's answers here instead, and
        // take it out again when it does not answer, so a typo never becomes a dead voter.
        if let Err(why) = self.wait_caught_up(&id, added.log_id.index()).await {
            tracing::warn!(node = %id, addr = %addr, reason = %why, "learner did not catch up; removing it");
            let _ = self
                .raft
                .change_membership(
                    ChangeMembers::RemoveNodes(BTreeSet::from([id.clone()])),
                    false,
                )
                .await;
            return Err(ClusterError::Refused(format!(
                "node {id} at {addr} {why}; check that it runs with -raft {addr} and that this \
                 address is reachable from the leader, then join again"
            )));
        }
        tracing::info!(node = %id, "promoting learner to voter");
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(raft_error)?;
        Ok(())
    }

    /// Waits until learner `id` has every entry up to `index`: first contact within
    /// `JOIN_CONTACT`, then catching up within `JOIN_CATCH_UP` (a snapshot over Wi-Fi is slow).
    async fn wait_caught_up(&self, id: &NodeId, index: u64) -> Result<(), String> {
        let matched = |m: &RaftMetrics| -> Option<u64> {
            let log = m.replication.as_ref()?.get(id)?.as_ref()?;
            Some(log.index())
        };
        self.raft
            .wait(Some(JOIN_CONTACT))
            .metrics(|m| matched(m).is_some(), "learner answers")
            .await
            .map_err(|_| format!("did not answer within {} s", JOIN_CONTACT.as_secs()))?;
        self.raft
            .wait(Some(JOIN_CATCH_UP))
            .metrics(
                |m| matched(m).is_some_and(|i| i >= index),
                "learner caught up",
            )
            .await
            .map_err(|_| format!("did not catch up to index {index} within 2 minutes"))?;
        Ok(())
    }

    /// Removes a node from the cluster (voter or learner).
    pub async fn remove(&self, id: String) -> Result<(), ClusterError> {
        self.on_leader("/internal/remove", &id, || self.remove_here(id.clone()))
            .await
    }

    pub async fn remove_here(&self, id: String) -> Result<(), ClusterError> {
        let id = NodeId(id);
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&id) {
            let mut remaining = voters.clone();
            remaining.remove(&id);
            if remaining.is_empty() {
                return Err(ClusterError::Refused(format!(
                    "node {id} is the only voter; removing it would leave no cluster"
                )));
            }
            let live = live_members(self);
            if !has_live_quorum(&remaining, &live) {
                let alive = remaining.iter().filter(|v| live.contains(*v)).count();
                return Err(ClusterError::Refused(format!(
                    "removing {id} would leave {} voters of which only {alive} are live; a quorum needs {}. \
                     Bring the dead nodes back or remove them first",
                    remaining.len(),
                    remaining.len() / 2 + 1
                )));
            }
            if id == self.id {
                // The leader removes itself only after handing leadership over; the caller
                // then retries against the new leader.
                tracing::info!("removing the leader itself: transferring leadership first");
                self.transfer_here(None).await?;
                return Err(ClusterError::NotLeader);
            }
            self.raft
                .change_membership(
                    ChangeMembers::RemoveVoters(BTreeSet::from([id.clone()])),
                    false,
                )
                .await
                .map_err(raft_error)?;
        } else if membership.learner_ids().any(|l| l == id) {
            self.raft
                .change_membership(
                    ChangeMembers::RemoveNodes(BTreeSet::from([id.clone()])),
                    false,
                )
                .await
                .map_err(raft_error)?;
        } else {
            return Err(ClusterError::UnknownMember(format!(
                "node {id} is not a member of this cluster; GET /cluster/status lists the members"
            )));
        }
        self.propose_here(Proposal {
            at: now_rfc3339(),
            command: Command::MarkNodeRemoved(id.0.clone()),
        })
        .await?
        .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        self.health.forget(&id);
        tracing::info!(node = %id, "removed from the cluster");
        Ok(())
    }

    /// Moves leadership to `to`, or to the most up-to-date other voter, and returns the new
    /// leader once it is known.
    pub async fn transfer_leader(&self, to: Option<String>) -> Result<String, ClusterError> {
        self.on_leader("/internal/transfer-leader", &to, || {
            self.transfer_here(to.clone())
        })
        .await
    }

    pub async fn transfer_here(&self, to: Option<String>) -> Result<String, ClusterError> {
        let m = self.metrics();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let target = match to {
            Some(t) => {
                let t = NodeId(t);
                if !voters.contains(&t) {
                    return Err(ClusterError::UnknownMember(format!(
                        "{t} is not a voter of this cluster; GET /cluster/status lists the voters"
                    )));
                }
                t
            }
            None => {
                let matched = m.replication.clone().unwrap_or_default();
                voters
                    .iter()
                    .filter(|v| **v != self.id)
                    .max_by_key(|v| matched.get(*v).cloned().flatten().map(|l| l.index()))
                    .cloned()
                    .ok_or_else(|| {
                        ClusterError::Refused("there is no other voter to take over".into())
                    })?
            }
        };
        if target == self.id {
            return Ok(target.0);
        }
        tracing::info!(to = %target, "transferring leadership");
        self.raft
            .trigger()
            .transfer_leader(target.clone())
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let deadline = Instant::now() + self.request_timeout;
        let mut rx = self.raft.metrics();
        loop {
            if rx.borrow_watched().current_leader.as_ref() == Some(&target) {
                return Ok(target.0);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClusterError::Unavailable(format!(
                    "{target} did not take over within {} ms",
                    self.request_timeout.as_millis()
                )));
            }
            let _ = tokio::time::timeout(deadline - now, rx.changed()).await;
        }
    }
}

/// Where a printer is driven: here, on another member, or nowhere.
pub enum PrinterHome {
    Here,
    Member(NodeId, Member),
    Unmanaged,
}

impl Node {
    /// Finds the agent that drives `printer_id` (its `node_id`) in the local replica.
    pub fn printer_home(&self, printer_id: &str) -> Option<PrinterHome> {
        let owner = {
            let r = self.sm.read();
            r.farm.printer(printer_id)?.node_id.clone()
        };
        let Some(owner) = owner else {
            return Some(PrinterHome::Unmanaged);
        };
        if owner == self.id.0 {
            return Some(PrinterHome::Here);
        }
        let m = self.metrics();
        let id = NodeId(owner);
        Some(match m.membership_config.membership().get_node(&id) {
            Some(member) => PrinterHome::Member(id, member.clone()),
            None => PrinterHome::Unmanaged,
        })
    }
}
