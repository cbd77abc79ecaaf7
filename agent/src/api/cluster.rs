//! Cluster paths compatible with the original Raft3D tools: status, join, remove; plus
//! `/healthz` and `/readyz` for service managers and load balancers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::input::{body, json};
use crate::cluster::{JoinRequest, Node};

#[derive(Serialize)]
pub struct MemberView {
    pub id: String,
    pub role: &'static str,
    pub raft_addr: String,
    pub http_addr: String,
    /// Leader only: consecutive failed health checks and time since last contact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_checks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_contact_ms: Option<u64>,
}

#[derive(Serialize)]
pub struct LeaderView {
    pub id: String,
    pub http_addr: String,
    pub raft_addr: String,
}

#[derive(Serialize)]
pub struct StatusView {
    pub node_id: String,
    pub is_leader: bool,
    pub state: String,
    pub leader: Option<LeaderView>,
    pub raft_addr: String,
    pub http_addr: String,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    /// SHA-256 of the farm state at `state_hash_index`; equal on nodes with the same state.
    pub state_hash: String,
    pub state_hash_index: u64,
    /// Leader only: whether a majority of voters answered within the contact timeout. A
    /// leader without one keeps its title but cannot commit anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_quorum: Option<bool>,
    pub members: Vec<MemberView>,
}

/// On the leader: (voters heard from within the contact timeout, voters); `None` elsewhere.
fn leader_quorum(node: &Node, m: &crate::cluster::types::RaftMetrics) -> Option<(usize, usize)> {
    if m.state != ServerState::Leader {
        return None;
    }
    let voters: std::collections::BTreeSet<_> =
        m.membership_config.membership().voter_ids().collect();
    let live = crate::cluster::health::live_members(node);
    Some((
        voters.iter().filter(|v| live.contains(*v)).count(),
        voters.len(),
    ))
}

pub fn status_view(node: &Node) -> StatusView {
    let m = node.metrics();
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<_> = membership.voter_ids().collect();
    let health = node.health.snapshot();
    let members = membership
        .nodes()
        .map(|(id, n)| MemberView {
            id: id.0.clone(),
            role: if voters.contains(id) {
                "voter"
            } else {
                "learner"
            },
            raft_addr: n.raft_addr.clone(),
            http_addr: n.http_addr.clone(),
            failed_checks: health.get(id).map(|h| h.failed_checks),
            last_contact_ms: health.get(id).and_then(|h| h.last_contact_ms),
        })
        .collect();
    let (state_hash_index, state_hash) = node.sm.state_hash().unwrap_or_default();
    let leader = m.current_leader.as_ref().map(|l| {
        let n = membership.get_node(l).cloned().unwrap_or_default();
        LeaderView {
            id: l.0.clone(),
            http_addr: n.http_addr,
            raft_addr: n.raft_addr,
        }
    });
    StatusView {
        node_id: node.id.0.clone(),
        is_leader: m.state == ServerState::Leader,
        state: format!("{:?}", m.state),
        leader,
        raft_addr: node.me.raft_addr.clone(),
        http_addr: node.me.http_addr.clone(),
        term: m.current_term,
        commit_index: m.local_committed.as_ref().map(|l| l.index()).unwrap_or(0),
        applied_index: m.last_applied.as_ref().map(|l| l.index()).unwrap_or(0),
        last_log_index: m.last_log_index.unwrap_or(0),
        state_hash,
        state_hash_index,
        has_quorum: leader_quorum(node, &m).map(|(live, all)| live > all / 2),
        members,
    }
}

pub async fn status(State(node): State<Arc<Node>>) -> Json<StatusView> {
    Json(status_view(&node))
}

pub async fn join(
    State(node): State<Arc<Node>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: JoinRequest = json(&body(b)?)?;
    crate::domain::parse_id("node_id", &req.node_id)?;
    if !req.addr.contains(':') {
        return Err(ApiError::bad_request(
            "addr: must be the joining node's raft HOST:PORT",
        ));
    }
    let id = req.node_id.clone();
    node.join(req).await?;
    Ok(Json(serde_json::json!({"joined": id})))
}

#[derive(Deserialize)]
pub struct RemoveQuery {
    id: Option<String>,
}

pub async fn remove(
    State(node): State<Arc<Node>>,
    q: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(id) = super::input::query(q)?.id else {
        return Err(ApiError::bad_request(
            "id: missing; use DELETE /cluster/servers?id=node3",
        ));
    };
    node.remove(id.clone()).await?;
    Ok(Json(serde_json::json!({"removed": id})))
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when this node is a member of a cluster with a known leader and has applied what it
/// knows to be committed.
pub async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, Json<serde_json::Value>) {
    let m = node.metrics();
    let committed = m.local_committed.as_ref().map(|l| l.index()).unwrap_or(0);
    let applied = m.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
    let member = m
        .membership_config
        .membership()
        .get_node(&node.id)
        .is_some();
    let reason = if m.running_state.is_err() {
        Some("raft has stopped".to_string())
    } else if !member {
        Some("not a member of a cluster yet".to_string())
    } else if m.current_leader.is_none() {
        Some("no leader known".to_string())
    } else if let Some((live, all)) = leader_quorum(&node, &m).filter(|(l, a)| *l <= a / 2) {
        Some(format!(
            "this leader reaches only {live} of {all} voters: no quorum, writes cannot commit"
        ))
    } else if applied < committed {
        Some(format!("catching up: applied {applied} of {committed}"))
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, Json(serde_json::json!({"ready": true}))),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reason": r})),
        ),
    }
}

#[derive(Deserialize)]
pub struct TransferQuery {
    to: Option<String>,
}

/// `POST /cluster/transfer-leader[?to=node2]`: hand leadership over for maintenance.
pub async fn transfer_leader(
    State(node): State<Arc<Node>>,
    q: Result<Query<TransferQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let to = super::input::query(q)?.to;
    let leader = node.transfer_leader(to).await?;
    Ok(Json(serde_json::json!({"leader": leader})))
}

/// `GET /cluster/snapshot`: a consistent backup of the farm in the snapshot file format.
pub async fn backup(
    State(node): State<Arc<Node>>,
    with_secrets: bool,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    node.linearize().await?;
    let storage = |e: std::io::Error| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
    };
    let (meta, bytes) = if with_secrets {
        node.sm.encode_current().map_err(storage)?
    } else {
        node.sm.encode_current_redacted().map_err(storage)?
    };
    let index = meta.last_log_id.as_ref().map(|l| l.index()).unwrap_or(0);
    let disposition = format!("attachment; filename=\"raft3d-backup-{index}.snap\"");
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

/// `POST /cluster/snapshot`: build a snapshot on this node now.
pub async fn snapshot_now(
    State(node): State<Arc<Node>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use openraft::type_config::async_runtime::WatchReceiver;
    let m = node.metrics();
    let want = m.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
    node.raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| ApiError::from(crate::cluster::ClusterError::Unavailable(e.to_string())))?;
    let deadline = std::time::Instant::now() + node.request_timeout * 4;
    let mut rx = node.raft.metrics();
    loop {
        let got = rx.borrow_watched().snapshot.as_ref().map(|l| l.index());
        if got.is_some_and(|g| g >= want) {
            return Ok(Json(serde_json::json!({"snapshot_index": got})));
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Err(crate::cluster::ClusterError::Unavailable(
                "snapshot did not finish in time".into(),
            )
            .into());
        }
        let _ = tokio::time::timeout(deadline - now, rx.changed()).await;
    }
}
