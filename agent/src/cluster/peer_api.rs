//! Inbound peer traffic on the `-raft` address: Raft RPCs and the internal calls followers
//! forward to the leader. Every route checks the cluster secret when one is configured.

use std::io::Cursor;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::errors::RaftError;
use serde::de::DeserializeOwned;

use super::network::SECRET_HEADER;
use super::node::{ClusterError, ForwardReply, JoinRequest, Node};
use super::types::{SnapshotMeta, TypeConfig, Vote};
use crate::domain::Proposal;

/// Largest peer request accepted (snapshots of large farms included).
const MAX_PEER_BODY: usize = 1 << 30;

/// Compares secrets without leaking where they differ through timing.
pub fn secret_matches(expected: &str, given: &[u8]) -> bool {
    let expected = expected.as_bytes();
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Rejects a request without the right secret header (401) and logs it.
pub async fn require_secret(
    State(secret): State<Option<Arc<str>>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(secret) = secret {
        let given = req.headers().get(SECRET_HEADER).map(|v| v.as_bytes());
        if !given.is_some_and(|g| secret_matches(&secret, g)) {
            tracing::warn!(path = %req.uri().path(), "refused peer request without a valid cluster secret");
            return (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({"error": {
                    "code": "unauthorized",
                    "message": format!("this cluster requires its secret in the {SECRET_HEADER} header")
                }})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new((StatusCode::BAD_REQUEST, format!("bad peer request: {e}")).into_response())
    })
}

pub fn router(node: Arc<Node>, secret: Option<Arc<str>>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/pre-vote", post(pre_vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/transfer-leader", post(transfer_leader))
        .route("/internal/propose", post(propose))
        .route("/internal/read-index", post(read_index))
        .route("/internal/join", post(join))
        .route("/internal/remove", post(remove))
        .route("/internal/transfer-leader", post(transfer))
        .route("/internal/printer-status", post(printer_status))
        .route("/internal/printer-control", post(printer_control))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .layer(middleware::from_fn_with_state(secret, require_secret))
        .with_state(node)
}

async fn append(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse(&body) {
        Ok(req) => Json(node.raft.append_entries(req).await).into_response(),
        Err(r) => *r,
    }
}

async fn vote(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse(&body) {
        Ok(req) => Json(node.raft.vote(req).await).into_response(),
        Err(r) => *r,
    }
}

async fn pre_vote(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse(&body) {
        Ok(req) => Json(node.raft.pre_vote(req).await).into_response(),
        Err(r) => *r,
    }
}

async fn transfer_leader(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse(&body) {
        Ok(req) => {
            let res = node
                .raft
                .handle_transfer_leader(req)
                .await
                .map_err(RaftError::<TypeConfig>::Fatal);
            Json(res).into_response()
        }
        Err(r) => *r,
    }
}

async fn snapshot(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_string()).into_response();
    if body.len() < 8 {
        return bad("snapshot body too short");
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&body[..8]);
    let len = u64::from_be_bytes(len) as usize;
    if body.len() < 8 + len {
        return bad("snapshot header truncated");
    }
    let (vote, meta): (Vote, SnapshotMeta) = match parse(&body.slice(8..8 + len)) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let snapshot = openraft::Snapshot {
        meta,
        snapshot: Cursor::new(body.slice(8 + len..).to_vec()),
    };
    let res = node
        .raft
        .install_full_snapshot(vote, snapshot)
        .await
        .map_err(RaftError::<TypeConfig>::Fatal);
    Json(res).into_response()
}

async fn propose(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse::<Proposal>(&body) {
        Ok(p) => Json(ForwardReply::from(node.propose_here(p).await)).into_response(),
        Err(r) => *r,
    }
}

async fn read_index(State(node): State<Arc<Node>>) -> Response {
    Json(ForwardReply::from(node.read_index_here().await)).into_response()
}

async fn join(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse::<JoinRequest>(&body) {
        Ok(req) => Json(ForwardReply::from(node.join_here(req).await)).into_response(),
        Err(r) => *r,
    }
}

async fn remove(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse::<String>(&body) {
        Ok(id) => Json(ForwardReply::from(node.remove_here(id).await)).into_response(),
        Err(r) => *r,
    }
}

async fn transfer(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse::<Option<String>>(&body) {
        Ok(to) => Json(ForwardReply::from(node.transfer_here(to).await)).into_response(),
        Err(r) => *r,
    }
}

fn dispatcher(node: &Node) -> Result<&Arc<crate::dispatch::Dispatcher>, ClusterError> {
    node.dispatch
        .get()
        .ok_or_else(|| ClusterError::Unavailable("printer dispatch is not running yet".into()))
}

async fn printer_status(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let id = match parse::<String>(&body) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let res = dispatcher(&node).and_then(|d| {
        d.telemetry(&id)
            .map_err(|e| ClusterError::Invalid(e.to_string()))
            .and_then(|t| {
                serde_json::to_value(t).map_err(|e| ClusterError::Unavailable(e.to_string()))
            })
    });
    Json(ForwardReply::from(res)).into_response()
}

async fn printer_control(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let (id, pause) = match parse::<(String, bool)>(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let res = match dispatcher(&node) {
        Ok(d) => d
            .control(&id, pause)
            .await
            .map_err(|e| ClusterError::Refused(e.to_string())),
        Err(e) => Err(e),
    };
    Json(ForwardReply::from(res)).into_response()
}
