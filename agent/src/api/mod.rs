//! The HTTP API on the `-http` address: spec paths under `/api/v1`, cluster paths, health.
//!
//! Handlers parse and validate input, then propose a command or read the local replica after
//! a read barrier. They hold no rules: the state machine decides.

mod cluster;
mod error;
mod filaments;
mod input;
mod jobs;
mod printers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};

pub use cluster::status_view;
pub use error::ApiError;

use crate::cluster::peer_api::require_secret;
use crate::cluster::Node;
use crate::domain::{Applied, Command};

/// Applies the consistency option of a read: a ReadIndex barrier unless `?consistency=stale`
/// (and this node has recovered its pre-restart state, so a stale read never goes back in time).
async fn read_barrier(node: &Node, opts: &input::ReadOptions) -> Result<(), ApiError> {
    let recovered = node.recovered.load(std::sync::atomic::Ordering::Acquire);
    if opts.linearizable()? || !recovered {
        node.linearize().await?;
    }
    Ok(())
}

/// Proposes a create command and answers 201 with the created object.
async fn respond_created(
    node: &Node,
    cmd: Command,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let value = match node.propose(cmd).await?? {
        Applied::Printer(p) => serde_json::to_value(p.redacted()),
        Applied::Filament(f) => serde_json::to_value(f),
        Applied::Job(j) => serde_json::to_value(j),
        Applied::Nothing => Ok(serde_json::Value::Null),
    }
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(value)))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_route",
        "no such path; see the README for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not accept that method",
    )
}

pub fn router(node: Arc<Node>, secret: Option<Arc<str>>) -> Router {
    let http_metrics = Arc::new(crate::metrics::HttpMetrics::default());
    let scrape = http_metrics.clone();
    // A backup holds printer secrets only for a caller that proved it knows the cluster
    // secret; without a configured secret it leaves them out, as every other route does.
    let with_secrets = secret.is_some();
    let membership = Router::new()
        .route("/join", post(cluster::join))
        .route(
            "/cluster/snapshot",
            get(move |state| cluster::backup(state, with_secrets)).post(cluster::snapshot_now),
        )
        .route("/cluster/servers", axum::routing::delete(cluster::remove))
        .route("/cluster/transfer-leader", post(cluster::transfer_leader))
        .layer(middleware::from_fn_with_state(secret, require_secret));
    Router::new()
        .route(
            "/api/v1/printers",
            post(printers::create).get(printers::list),
        )
        .route("/api/v1/printers/{id}", get(printers::get))
        .route("/api/v1/printers/{id}/status", get(printers::status))
        .route(
            "/api/v1/filaments",
            post(filaments::create).get(filaments::list),
        )
        .route("/api/v1/filaments/{id}", get(filaments::get))
        .route("/api/v1/print_jobs", post(jobs::create).get(jobs::list))
        .route("/api/v1/print_jobs/{id}", get(jobs::get))
        .route("/api/v1/print_jobs/{id}/status", post(jobs::set_status))
        .route("/api/v1/print_jobs/{id}/pause", post(jobs::pause))
        .route("/api/v1/print_jobs/{id}/resume", post(jobs::resume))
        .route("/cluster/status", get(cluster::status))
        .route("/healthz", get(cluster::healthz))
        .route("/readyz", get(cluster::readyz))
        .route(
            "/metrics",
            get(move |State(node): State<Arc<Node>>| {
                let scrape = scrape.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        crate::metrics::render(&node, &scrape),
                    )
                }
            }),
        )
        .merge(membership)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            http_metrics,
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(input::MAX_BODY_BYTES))
        .with_state(node)
}
