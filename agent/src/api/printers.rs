//! `/api/v1/printers`: create, list and get printers. Secrets never leave the node.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::input::{body, generated_id, json, query, ReadOptions};
use super::{read_barrier, respond_created};
use crate::cluster::Node;
use crate::domain::{Command, NewPrinter, Printer};

pub async fn create(
    State(node): State<Arc<Node>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let req: NewPrinter = json(&body(b)?)?;
    let printer = req.into_printer(
        generated_id("printer"),
        &crate::cluster::node::now_rfc3339(),
    )?;
    respond_created(&node, Command::CreatePrinter(printer)).await
}

pub async fn list(
    State(node): State<Arc<Node>>,
    opts: Result<Query<ReadOptions>, QueryRejection>,
) -> Result<Json<Vec<Printer>>, ApiError> {
    let opts = query(opts)?;
    read_barrier(&node, &opts).await?;
    let r = node.sm.read();
    Ok(Json(r.farm.printers().map(Printer::redacted).collect()))
}

pub async fn get(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    opts: Result<Query<ReadOptions>, QueryRejection>,
) -> Result<Json<Printer>, ApiError> {
    let opts = query(opts)?;
    read_barrier(&node, &opts).await?;
    let r = node.sm.read();
    r.farm
        .printer(&id)
        .map(|p| Json(p.redacted()))
        .ok_or_else(|| ApiError::not_found("printer", &id))
}

/// `GET /api/v1/printers/{id}/status`: live telemetry, served by the agent that drives the
/// printer (forwarded there from any node). Not stored in the Raft log.
pub async fn status(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::cluster::node::{ForwardReply, PrinterHome};
    let home = node
        .printer_home(&id)
        .ok_or_else(|| ApiError::not_found("printer", &id))?;
    let (owner, telemetry) = match home {
        PrinterHome::Unmanaged => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "unmanaged_printer",
                format!("printer '{id}' has no agent driving it (set node_id and connection)"),
            ))
        }
        PrinterHome::Here => {
            let d = node.dispatch.get().ok_or_else(|| {
                ApiError::from(crate::cluster::ClusterError::Unavailable(
                    "printer dispatch is not running yet".into(),
                ))
            })?;
            let t = d.telemetry(&id).map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "driver_unavailable",
                    e.to_string(),
                )
            })?;
            (
                node.id.0.clone(),
                serde_json::to_value(t).unwrap_or_default(),
            )
        }
        PrinterHome::Member(owner, member) => {
            let reply: ForwardReply<serde_json::Value> = node
                .peers
                .call(
                    &member.raft_addr,
                    "/internal/printer-status",
                    &id,
                    node.request_timeout,
                )
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "agent_unreachable",
                        format!("the agent {owner} that drives printer '{id}' did not answer: {e}"),
                    )
                })?;
            match reply {
                ForwardReply::Ok(v) => (owner.0, v),
                ForwardReply::Err(e) => return Err(e.into()),
            }
        }
    };
    let mut out = serde_json::json!({"printer_id": id, "node_id": owner});
    if let (Some(o), serde_json::Value::Object(t)) = (out.as_object_mut(), telemetry) {
        o.extend(t);
    }
    Ok(Json(out))
}
