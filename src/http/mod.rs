//! The HTTP side: credentials for app backends (`/api/v1/credentials`), status and allocations
//! for operators (`/api/v1/status`, `/api/v1/allocations`), Prometheus `/metrics`, health
//! probes and the dashboard. It reads what workers publish and never touches the packet path;
//! it is never reachable through the relay (its socket is one of the server's own, which the
//! peer policy refuses).

mod metrics;
mod ops;
mod reloads;
mod server;

pub use reloads::{LastReload, MAX_RELOAD_ERROR, ReloadState, Reloads};

pub use server::{
    BODY_TIMEOUT, ConnectionCounters, ConnectionLimits, HEADER_TIMEOUT, MAX_BODY, MAX_HEAD,
    UNTRUSTED_LIFETIME,
};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde::Deserialize;
use serde_json::json;

use crate::auth::redis::{Admin, Layout, RedisStore};
use crate::auth::{is_control_or_format, parse_rest_username, rest_password};
use crate::clock::unix_now;

/// Lifetime when the request names none: one day, as draft-uberti-behave-turn-rest recommends
/// (or `[auth] max-rest-ttl` when that is shorter). The longest is `max-rest-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest user id accepted (the whole username must fit STUN's USERNAME).
const MAX_USER_LEN: usize = 400;

/// The Redis side of the API: where the newest secret is, and where revocations go.
pub struct RedisAccess {
    pub store: Arc<RedisStore>,
    pub client: redis::Client,
    pub layout: Layout,
}

/// The settings a reload may change.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub token: String,
    pub ice_urls: Vec<String>,
    /// `[auth] secrets`, the first issuing when Redis has none.
    pub config_secrets: Vec<String>,
    /// `[auth] max-rest-ttl`: the longest `ttl` the credential API issues.
    pub max_rest_ttl: Duration,
    /// `/metrics` without the token.
    pub public_metrics: bool,
    /// Caps on open connections (a reload that lowers one closes no connection in use).
    pub connections: ConnectionLimits,
}

/// What the API needs.
pub struct Api {
    pub settings: arc_swap::ArcSwap<ApiSettings>,
    pub redis: Option<RedisAccess>,
    pub node: crate::net::NodeHandle,
    /// This node's name (the registry's node id).
    pub node_id: String,
    pub started: std::time::Instant,
    /// Relayed rates, sampled every second.
    pub rates: std::sync::Mutex<ops::Rates>,
    /// The HTTP connections: open, refused, evicted, timed out.
    pub connections: ConnectionCounters,
    /// Configuration reloads: counts, the last outcome, keys waiting for a restart.
    pub reloads: Reloads,
}

impl Api {
    pub fn new(
        settings: ApiSettings,
        redis: Option<RedisAccess>,
        node: crate::net::NodeHandle,
        node_id: String,
    ) -> Self {
        Api {
            settings: arc_swap::ArcSwap::from_pointee(settings),
            redis,
            node,
            node_id,
            started: std::time::Instant::now(),
            rates: Default::default(),
            connections: Default::default(),
            reloads: Default::default(),
        }
    }
}

/// The API's routes.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/", axum::routing::get(ops::dashboard))
        .route("/healthz", axum::routing::get(ops::healthz))
        .route("/readyz", axum::routing::get(ops::readyz))
        .route("/metrics", axum::routing::get(metrics::metrics))
        .route("/api/v1/status", axum::routing::get(ops::status))
        .route("/api/v1/allocations", axum::routing::get(ops::allocations))
        .route("/api/v1/allocations/{id}", delete(ops::close_allocation))
        .route("/api/v1/credentials", post(issue))
        .route("/api/v1/credentials/{username}", delete(revoke))
        .fallback(not_found)
        // Bodies are read before the router sees them (see `server`); this holds in any case.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// Serves the API on `listener` until the process ends, sampling rates every second.
pub async fn serve(listener: tokio::net::TcpListener, api: Arc<Api>) {
    tokio::spawn(ops::sample_rates(api.clone()));
    server::serve(listener, api.clone(), router(api)).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// Checks the bearer token in constant time; the answer to a wrong one tells nothing more. A
/// request with more than one `Authorization` header is not authorized, whatever they hold: a
/// proxy in front may have judged another one than we would.
fn authorized(api: &Api, headers: &HeaderMap) -> bool {
    let settings = api.settings.load();
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or(""),
        _ => "",
    };
    let matches: bool =
        subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), settings.token.as_bytes()).into();
    matches && !presented.is_empty()
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "unauthorized")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRequest {
    user: Option<String>,
    ttl: Option<u64>,
}

/// The secret that issues: Redis's newest when Redis is usable and has one, else the first of
/// the configuration's.
fn issuing_secret(api: &Api) -> Option<Vec<u8>> {
    let from_redis = api.redis.as_ref().and_then(|redis| {
        if !redis.store.usable(unix_now()) {
            return None;
        }
        redis.store.snapshot().secrets.first().cloned()
    });
    from_redis.or_else(|| {
        api.settings
            .load()
            .config_secrets
            .first()
            .map(|s| s.as_bytes().to_vec())
    })
}

async fn issue(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    let request: CredentialRequest = if body.is_empty() {
        CredentialRequest {
            user: None,
            ttl: None,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                let message = format!(
                    "invalid request body: {e}; expected {{\"user\":\"alice\",\"ttl\":3600}}"
                );
                return error(StatusCode::BAD_REQUEST, &message);
            }
        }
    };
    let max_ttl = api.settings.load().max_rest_ttl;
    let ttl = request
        .ttl
        .map_or(DEFAULT_TTL.min(max_ttl), Duration::from_secs);
    if ttl.is_zero() || ttl > max_ttl {
        let message = format!(
            "ttl must be between 1 and {} seconds ([auth] max-rest-ttl)",
            max_ttl.as_secs()
        );
        return error(StatusCode::BAD_REQUEST, &message);
    }
    if let Some(user) = &request.user {
        if user.is_empty() || user.len() > MAX_USER_LEN {
            let message = format!("user must be 1 to {MAX_USER_LEN} bytes");
            return error(StatusCode::BAD_REQUEST, &message);
        }
        // Invisible and reordering characters would let an id pass for another in logs and
        // on the dashboard.
        if let Some(c) = user.chars().find(|&c| is_control_or_format(c)) {
            let message = format!(
                "user must not contain control or invisible format characters (bidi overrides, zero-width spaces, ...); found U+{:04X}",
                u32::from(c)
            );
            return error(StatusCode::BAD_REQUEST, &message);
        }
    }
    let Some(secret) = issuing_secret(&api) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no shared secret: add one to [auth] secrets or with `turnpike secret add`",
        );
    };
    let expiry = unix_now() + ttl.as_secs();
    let username = match &request.user {
        Some(user) => format!("{expiry}:{user}"),
        None => expiry.to_string(),
    };
    let credential = rest_password(&secret, &username);
    axum::Json(json!({
        "iceServers": [{
            "urls": api.settings.load().ice_urls,
            "username": username,
            "credential": credential,
        }],
        "ttl": ttl.as_secs(),
    }))
    .into_response()
}

async fn revoke(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    let Some((expiry, _)) = parse_rest_username(&username) else {
        return error(
            StatusCode::BAD_REQUEST,
            "not a TURN REST API username (<expiry>:<user>)",
        );
    };
    let Some(redis) = &api.redis else {
        return error(
            StatusCode::CONFLICT,
            "revocation reaches every node through Redis: configure [redis]",
        );
    };
    if expiry < unix_now() {
        return axum::Json(json!({ "revoked": username, "until": expiry, "expired": true }))
            .into_response();
    }
    let result = async {
        let mut admin = Admin::connect(&redis.client, redis.layout.clone()).await?;
        admin.revoke(&username, expiry).await
    }
    .await;
    match result {
        Ok(()) => axum::Json(json!({ "revoked": username, "until": expiry })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "revocation failed: Redis unreachable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis is unreachable; try again",
            )
        }
    }
}

async fn not_found(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    error(StatusCode::NOT_FOUND, "not found")
}
