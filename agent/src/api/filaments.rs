//! `/api/v1/filaments`: create, list and get filament spools.

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
use crate::domain::{Command, Filament, NewFilament};

pub async fn create(
    State(node): State<Arc<Node>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let req: NewFilament = json(&body(b)?)?;
    let f = req.into_filament(
        generated_id("filament"),
        &crate::cluster::node::now_rfc3339(),
    )?;
    respond_created(&node, Command::CreateFilament(f)).await
}

pub async fn list(
    State(node): State<Arc<Node>>,
    opts: Result<Query<ReadOptions>, QueryRejection>,
) -> Result<Json<Vec<Filament>>, ApiError> {
    let opts = query(opts)?;
    read_barrier(&node, &opts).await?;
    let r = node.sm.read();
    Ok(Json(r.farm.filaments().cloned().collect()))
}

pub async fn get(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    opts: Result<Query<ReadOptions>, QueryRejection>,
) -> Result<Json<Filament>, ApiError> {
    let opts = query(opts)?;
    read_barrier(&node, &opts).await?;
    let r = node.sm.read();
    r.farm
        .filament(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("filament", &id))
}
