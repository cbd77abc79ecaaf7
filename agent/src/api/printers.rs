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
