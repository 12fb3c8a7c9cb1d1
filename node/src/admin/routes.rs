//! The admin API's HTTP routes (axum): request bodies are parsed here with
//! serde_json so that every malformed body gets a `400` [`ApiError`] that
//! says what was wrong; every [`ServiceError`] maps to one status code.
//! Handlers never panic on input: unknown paths get a JSON `404`, wrong
//! methods a JSON `405`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use metro_fabric::control::DomainState;
use metro_fabric::meta::MetaStore;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::{ApiError, CloneVolume, CreateSnapshot, CreateVolume};
use super::exposition::CONTENT_TYPE;
use super::metrics::NodeMetrics;
use super::service::{AdminService, ServiceError};

/// What every handler shares.
#[derive(Debug)]
pub struct AdminState<M: MetaStore> {
    pub service: AdminService<M>,
    pub metrics: Arc<NodeMetrics>,
}

type Shared<M> = State<Arc<AdminState<M>>>;

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec_pretty(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(error) => error_response(&ServiceError::Internal(format!("encoding: {error}"))),
    }
}

fn status_of(error: &ServiceError) -> StatusCode {
    match error {
        ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Conflict(_) => StatusCode::CONFLICT,
        ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response(error: &ServiceError) -> Response {
    let body = ApiError {
        error: error.code().to_owned(),
        message: error.to_string(),
    };
    let bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
    (
        status_of(error),
        [(header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

fn reply<T: Serialize>(status: StatusCode, result: Result<T, ServiceError>) -> Response {
    match result {
        Ok(body) => json(status, &body),
        Err(error) => error_response(&error),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(body)
        .map_err(|e| ServiceError::BadRequest(format!("malformed JSON body: {e}")))
}

/// The admin API router over `state`.
pub fn router<M: MetaStore>(state: Arc<AdminState<M>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics::<M>))
        .route("/v1/cluster", get(cluster::<M>))
        .route("/v1/nodes", get(nodes::<M>))
        .route("/v1/domains", get(domains::<M>))
        .route("/v1/domains/{name}/activate", post(activate::<M>))
        .route("/v1/domains/{name}/deactivate", post(deactivate::<M>))
        .route(
            "/v1/volumes",
            get(list_volumes::<M>).post(create_volume::<M>),
        )
        .route(
            "/v1/volumes/{name}",
            get(inspect_volume::<M>).delete(delete_volume::<M>),
        )
        .route(
            "/v1/volumes/{name}/snapshots",
            get(list_snapshots::<M>).post(snapshot::<M>),
        )
        .route(
            "/v1/volumes/{name}/snapshots/{snapshot}",
            delete(delete_snapshot::<M>),
        )
        .route("/v1/volumes/{name}/clone", post(clone::<M>))
        .route("/v1/clones", get(clones::<M>))
        .fallback(|| async { error_response(&ServiceError::NotFound("no such endpoint".into())) })
        .method_not_allowed_fallback(|| async {
            let body = ApiError {
                error: "method_not_allowed".into(),
                message: "this endpoint does not take that method".into(),
            };
            json(StatusCode::METHOD_NOT_ALLOWED, &body)
        })
        .with_state(state)
}

async fn metrics<M: MetaStore>(State(state): Shared<M>) -> Response {
    let node = state.service.node_slot();
    let host = node.host.upgrade();
    let transport = node.transport.upgrade();
    let mut text = state.metrics.render(host.as_deref(), transport.as_deref());
    if let Some(control) = node.control.upgrade() {
        text.push_str(&super::metrics::render_control(control.as_ref()));
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

async fn cluster<M: MetaStore>(State(state): Shared<M>) -> Response {
    reply(StatusCode::OK, state.service.cluster_status().await)
}

async fn nodes<M: MetaStore>(State(state): Shared<M>) -> Response {
    reply(StatusCode::OK, state.service.list_nodes().await)
}

async fn domains<M: MetaStore>(State(state): Shared<M>) -> Response {
    reply(StatusCode::OK, state.service.list_domains().await)
}

async fn activate<M: MetaStore>(State(state): Shared<M>, Path(name): Path<String>) -> Response {
    let result = state.service.set_domain(&name, DomainState::Active).await;
    reply(StatusCode::OK, result)
}

async fn deactivate<M: MetaStore>(State(state): Shared<M>, Path(name): Path<String>) -> Response {
    let result = state.service.set_domain(&name, DomainState::Inactive).await;
    reply(StatusCode::OK, result)
}

async fn list_volumes<M: MetaStore>(State(state): Shared<M>) -> Response {
    reply(StatusCode::OK, state.service.list_volumes().await)
}

async fn create_volume<M: MetaStore>(State(state): Shared<M>, body: Bytes) -> Response {
    let result = match parse::<CreateVolume>(&body) {
        Ok(request) => state.service.create_volume(&request).await,
        Err(error) => Err(error),
    };
    reply(StatusCode::CREATED, result)
}

async fn inspect_volume<M: MetaStore>(
    State(state): Shared<M>,
    Path(name): Path<String>,
) -> Response {
    reply(StatusCode::OK, state.service.inspect_volume(&name).await)
}

async fn delete_volume<M: MetaStore>(
    State(state): Shared<M>,
    Path(name): Path<String>,
) -> Response {
    reply(StatusCode::OK, state.service.delete_volume(&name).await)
}

async fn list_snapshots<M: MetaStore>(
    State(state): Shared<M>,
    Path(name): Path<String>,
) -> Response {
    reply(StatusCode::OK, state.service.list_snapshots(&name).await)
}

async fn delete_snapshot<M: MetaStore>(
    State(state): Shared<M>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Response {
    let result = state.service.delete_snapshot(&name, &snapshot).await;
    reply(StatusCode::OK, result)
}

async fn clones<M: MetaStore>(State(state): Shared<M>) -> Response {
    reply(
        StatusCode::OK,
        Ok::<_, ServiceError>(state.service.clone_jobs()),
    )
}

async fn snapshot<M: MetaStore>(
    State(state): Shared<M>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let result = match parse::<CreateSnapshot>(&body) {
        Ok(request) => {
            state
                .service
                .snapshot_volume(&name, &request.snapshot)
                .await
        }
        Err(error) => Err(error),
    };
    reply(StatusCode::CREATED, result)
}

async fn clone<M: MetaStore>(
    State(state): Shared<M>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let result = match parse::<CloneVolume>(&body) {
        Ok(request) => {
            let service = &state.service;
            service
                .clone_volume(&name, &request.snapshot, &request.target)
                .await
        }
        Err(error) => Err(error),
    };
    reply(StatusCode::CREATED, result)
}
