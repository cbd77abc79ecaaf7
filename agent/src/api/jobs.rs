//! `/api/v1/print_jobs`: create, list (optionally by status), get, and change a job's status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::input::{body, generated_id, json, query, ReadOptions};
use super::{read_barrier, respond_created};
use crate::cluster::Node;
use crate::domain::{Applied, Command, JobStatus, NewJob, Origin, PrintJob};

pub async fn create(
    State(node): State<Arc<Node>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let req: NewJob = json(&body(b)?)?;
    let job = req.into_job(generated_id("job"), &crate::cluster::node::now_rfc3339())?;
    respond_created(&node, Command::CreateJob(job)).await
}

pub async fn list(
    State(node): State<Arc<Node>>,
    opts: Result<Query<ReadOptions>, QueryRejection>,
) -> Result<Json<Vec<PrintJob>>, ApiError> {
    let opts = query(opts)?;
    let filter: Option<JobStatus> = opts.status.as_deref().map(str::parse).transpose()?;
    read_barrier(&node, &opts).await?;
    let r = node.sm.read();
    Ok(Json(
        r.farm
            .jobs()
            .filter(|j| filter.is_none_or(|s| j.status == s))
            .cloned()
            .collect(),
    ))
}

pub async fn get(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    opts: Result<Query<ReadOptions>, QueryRejection>,
) -> Result<Json<PrintJob>, ApiError> {
    let opts = query(opts)?;
    read_barrier(&node, &opts).await?;
    let r = node.sm.read();
    r.farm
        .job(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("print job", &id))
}

#[derive(Debug, Default, Deserialize)]
pub struct StatusQuery {
    status: Option<String>,
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
}

/// `POST /api/v1/print_jobs/{id}/status?status=running` (or a JSON body `{"status": ...}`).
pub async fn set_status(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    q: Result<Query<StatusQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<PrintJob>, ApiError> {
    let b = body(b)?;
    let raw = match query(q)?.status {
        Some(s) => s,
        None if b.iter().all(|c| c.is_ascii_whitespace()) => {
            return Err(ApiError::bad_request(
                "status: missing; use ?status=running or a body {\"status\": \"running\"}",
            ))
        }
        None => match json::<serde_json::Value>(&b)? {
            serde_json::Value::String(status) => status,
            v => match serde_json::from_value::<StatusBody>(v) {
                Ok(StatusBody { status }) => status,
                Err(_) => return Err(ApiError::bad_request(
                    "status: send {\"status\": \"running\"} (or done, canceled) or ?status=running",
                )),
            },
        },
    };
    let status: JobStatus = raw.parse()?;
    let cmd = Command::SetJobStatus {
        job_id: id,
        status,
        origin: Origin::Client,
        reason: None,
    };
    match node.propose(cmd).await?? {
        Applied::Job(j) => Ok(Json(j)),
        other => Err(ApiError::bad_request(format!(
            "unexpected result {other:?}"
        ))),
    }
}

/// `POST /api/v1/print_jobs/{id}/pause` and `/resume` (extension): stop and restart the feed
/// of a running job on the agent that drives its printer.
pub async fn pause(state: State<Arc<Node>>, id: Path<String>) -> Result<Json<PrintJob>, ApiError> {
    feed(state, id, true).await
}

pub async fn resume(state: State<Arc<Node>>, id: Path<String>) -> Result<Json<PrintJob>, ApiError> {
    feed(state, id, false).await
}

async fn feed(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    pause: bool,
) -> Result<Json<PrintJob>, ApiError> {
    use crate::cluster::node::{ForwardReply, PrinterHome};
    use crate::cluster::ClusterError;
    node.linearize().await?;
    let job = node
        .sm
        .read()
        .farm
        .job(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("print job", &id))?;
    if job.status != JobStatus::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_running",
            format!(
                "job '{id}' is {}; only a Running job can be paused or resumed",
                job.status
            ),
        ));
    }
    let refused = |e: String| ApiError::new(StatusCode::CONFLICT, "printer_refused", e);
    match node.printer_home(&job.printer_id) {
        Some(PrinterHome::Here) => {
            let d = node.dispatch.get().ok_or_else(|| {
                ApiError::from(ClusterError::Unavailable(
                    "printer dispatch is not running yet".into(),
                ))
            })?;
            d.control(&job.printer_id, pause)
                .await
                .map_err(|e| refused(e.to_string()))?;
        }
        Some(PrinterHome::Member(owner, member)) => {
            let reply: ForwardReply<()> = node
                .peers
                .call(
                    &member.raft_addr,
                    "/internal/printer-control",
                    &(job.printer_id.clone(), pause),
                    node.request_timeout,
                )
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "agent_unreachable",
                        format!("the agent {owner} did not answer: {e}"),
                    )
                })?;
            if let ForwardReply::Err(e) = reply {
                return Err(e.into());
            }
        }
        _ => {
            return Err(refused(format!(
                "printer '{}' has no agent driving it",
                job.printer_id
            )))
        }
    }
    Ok(Json(job))
}
