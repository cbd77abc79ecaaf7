//! Outbound peer traffic: Raft RPCs (append, vote, snapshot, leader transfer) and the internal
//! calls a follower makes to the leader (forwarded writes, read index, membership), all over
//! HTTP with JSON bodies and the cluster secret in a header.

use std::future::Future;
use std::time::Duration;

use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{Member, NodeId, Snapshot, SnapshotData, TypeConfig, Vote};

/// Header that carries the cluster secret on every peer and membership request.
pub const SECRET_HEADER: &str = "x-raft3d-secret";

/// Snapshots can be megabytes over a Pi's network: far beyond openraft's 200 ms default.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a call to a peer did not return an answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The request never reached the peer: safe to retry elsewhere.
    #[error("cannot connect to {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error(
        "peer {addr} refused our cluster secret (HTTP 401); check cluster_secret on both nodes"
    )]
    Unauthorized { addr: String },
    /// The request may or may not have been processed.
    #[error("no usable answer from {addr}: {message}")]
    Failed { addr: String, message: String },
}

/// An HTTP client for peer calls, shared by all connections of this node.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: Option<String>,
}

impl PeerClient {
    /// `source`: the local IP outgoing peer connections leave from (the peer listener's IP,
    /// so a multi-homed Pi talks to its peers over the interface it listens on).
    pub fn new(secret: Option<String>, source: Option<std::net::IpAddr>) -> PeerClient {
        let http = reqwest::Client::builder()
            .no_proxy()
            .local_address(source)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        PeerClient { http, secret }
    }

    /// POSTs `body` to `http://{addr}{path}` and decodes the JSON answer.
    pub async fn call<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let bytes = serde_json::to_vec(body).map_err(|e| PeerError::Failed {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
        self.post(addr, path, bytes, timeout).await
    }

    pub async fn post<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let url = format!("http://{addr}{path}");
        let mut req = self
            .http
            .post(&url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(s) = &self.secret {
            req = req.header(SECRET_HEADER, s);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                PeerError::Unreachable {
                    addr: addr.to_string(),
                    message: e.to_string(),
                }
            } else {
                PeerError::Failed {
                    addr: addr.to_string(),
                    message: e.to_string(),
                }
            }
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(PeerError::Unauthorized {
                addr: addr.to_string(),
            });
        }
        let body = resp.bytes().await.map_err(|e| PeerError::Failed {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(PeerError::Failed {
                addr: addr.to_string(),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
            });
        }
        serde_json::from_slice(&body).map_err(|e| PeerError::Failed {
            addr: addr.to_string(),
            message: format!("bad answer: {e}"),
        })
    }
}

/// Creates one [`PeerConnection`] per target for openraft.
#[derive(Clone)]
pub struct Network {
    pub client: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, _target: NodeId, node: &Member) -> PeerConnection {
        PeerConnection {
            addr: node.raft_addr.clone(),
            client: self.client.clone(),
        }
    }
}

pub struct PeerConnection {
    addr: String,
    client: PeerClient,
}

impl PeerConnection {
    async fn rpc<Req, Resp>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let res: Result<Resp, RaftError<TypeConfig>> = self
            .client
            .call(&self.addr, path, req, timeout)
            .await
            .map_err(|e| match e {
                PeerError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        res.map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/append", &req, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/vote", &req, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/pre-vote", &req, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // Body: a length-prefixed JSON header (vote, meta), then the snapshot file bytes.
        let header = serde_json::to_vec(&(vote, &snapshot.meta))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let data = snapshot.snapshot.into_inner();
        let mut body = Vec::with_capacity(8 + header.len() + data.len());
        body.extend_from_slice(&(header.len() as u64).to_be_bytes());
        body.extend_from_slice(&header);
        body.extend_from_slice(&data);
        let send = async {
            let res: Result<Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>>, _> = self
                .client
                .post(&self.addr, "/raft/snapshot", body, SNAPSHOT_TIMEOUT)
                .await;
            match res {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(StreamingError::Network(NetworkError::from_string(
                    e.to_string(),
                ))),
                Err(e @ PeerError::Unreachable { .. }) => {
                    Err(StreamingError::Unreachable(Unreachable::new(&e)))
                }
                Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
            }
        };
        tokio::pin!(cancel);
        tokio::select! {
            closed = &mut cancel => Err(StreamingError::Closed(closed)),
            res = send => res,
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/transfer-leader", &req, option.hard_ttl())
            .await
    }
}
