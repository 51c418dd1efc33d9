//! Operators' endpoints: health probes, status, allocations, the dashboard page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::redis::Health;
use crate::clock::unix_now;
use crate::config::Transport;
use crate::net::Unanswered;
use crate::net::status::TRANSPORTS;

use super::{Api, authorized, error, unauthorized};

/// Most allocations one page of `/api/v1/allocations` returns.
const MAX_PAGE: usize = 1000;

/// Relayed rates over the last sampling interval.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rates {
    last: Option<(Instant, [u64; 4])>,
    pub to_peer_bps: f64,
    pub to_client_bps: f64,
    pub to_peer_pps: f64,
    pub to_client_pps: f64,
}

/// Samples the relayed counters every second into `api.rates`.
pub(super) async fn sample_rates(api: Arc<Api>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let core = api.node.counters().workers.core;
        let now_counts = [
            core.to_peer_bytes,
            core.to_client_bytes,
            core.to_peer_packets,
            core.to_client_packets,
        ];
        let now = Instant::now();
        let mut rates = api.rates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((then, counts)) = rates.last {
            let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
            let per_second = |i: usize| now_counts[i].saturating_sub(counts[i]) as f64 / seconds;
            rates.to_peer_bps = per_second(0) * 8.0;
            rates.to_client_bps = per_second(1) * 8.0;
            rates.to_peer_pps = per_second(2);
            rates.to_client_pps = per_second(3);
        }
        rates.last = Some((now, now_counts));
    }
}

pub(super) async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// Ready when the listeners are bound (they are, once this answers) and Redis, when
/// configured, is connected.
pub(super) async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let redis = api
        .redis
        .as_ref()
        .map(|redis| redis.store.health(unix_now()));
    match redis {
        None | Some(Health::Connected) => (StatusCode::OK, "ready\n").into_response(),
        Some(state) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: Redis {}\n", health_name(Some(state))),
        )
            .into_response(),
    }
}

pub(super) fn health_name(health: Option<Health>) -> &'static str {
    match health {
        None => "none",
        Some(Health::Starting) => "starting",
        Some(Health::Connected) => "connected",
        Some(Health::Stale) => "stale",
        Some(Health::Expired) => "expired",
    }
}

pub(super) fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    }
}

pub(super) async fn status(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    let summary = match api.node.summary(true).await {
        Ok(summary) => summary,
        Err(unanswered) => return unanswered_error(&unanswered),
    };
    let counters = summary.counters;
    let core = counters.workers.core;
    let by_transport: BTreeMap<&str, u64> = TRANSPORTS
        .iter()
        .map(|t| transport_name(*t))
        .zip(summary.by_transport)
        .collect();
    let by_family: BTreeMap<&str, u64> = ["ipv4", "ipv6"]
        .into_iter()
        .zip(summary.by_family)
        .collect();
    let rates = *api.rates.lock().unwrap_or_else(|e| e.into_inner());
    let listeners: Vec<_> = api
        .node
        .listeners()
        .iter()
        .map(|l| {
            json!({
                "transport": transport_name(l.transport),
                "address": l.address,
                "state": "listening",
            })
        })
        .collect();
    let redis_state = api
        .redis
        .as_ref()
        .map(|redis| redis.store.health(unix_now()));
    let (offload_active, offload) = api.node.offload();
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": api.started.elapsed().as_secs(),
        "node": api.node_id,
        "listeners": listeners,
        "allocations": {
            "total": summary.allocations(),
            "by_transport": by_transport,
            "by_family": by_family,
        },
        "users": summary.users.unwrap_or_default(),
        "relayed": {
            "to_peer": {"packets": core.to_peer_packets, "bytes": core.to_peer_bytes},
            "to_client": {"packets": core.to_client_packets, "bytes": core.to_client_bytes},
        },
        "rates": {
            "to_peer_bps": rates.to_peer_bps,
            "to_client_bps": rates.to_client_bps,
            "to_peer_pps": rates.to_peer_pps,
            "to_client_pps": rates.to_client_pps,
        },
        "drops": {
            "quota": core.quota_rejected,
            "capacity": core.capacity_rejected,
            "bandwidth": core.dropped_bandwidth,
            "policy": core.dropped_policy,
            "too_large": core.dropped_too_large,
            "rate_limit": core.rate_limited,
            "rate_limit_node": core.rate_limited_node,
            "malformed": core.malformed,
            "no_permission": core.dropped_no_permission,
            "no_allocation": core.dropped_no_allocation,
            "stream_full": counters.workers.dropped_stream_full,
            "send_failed": counters.workers.dropped_send_failed,
        },
        "tcp": {
            "connections": counters.tcp_connections,
            "rejected": counters.workers.tcp_rejected,
            "rejected_per_source": counters.workers.tcp_rejected_per_source,
            "timeouts": counters.workers.stream_timeouts,
            "write_timeouts": counters.workers.stream_write_timeouts,
            "proxy_refused": counters.workers.proxy_refused,
        },
        "redis": {
            "configured": api.redis.is_some(),
            "state": health_name(redis_state),
        },
        "draining": api.node.draining(),
        "offload": {
            "active": offload_active,
            "carried_packets": offload.carried,
            "passed_up": {
                "checksum_partial": offload.checksum_partial,
                "too_big": offload.too_big,
                "local_off_lo": offload.local_off_lo,
            },
        },
        "ice_urls": api.settings.load().ice_urls,
        "reloads": api.reloads.snapshot(),
    }))
    .into_response()
}

/// 503 naming the workers that did not answer: the API does not make up what they hold.
pub(super) fn unanswered_error(unanswered: &Unanswered) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({
            "error": format!("{unanswered}; try again"),
            "unanswered_workers": unanswered.workers,
        })),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AllocationQuery {
    user: Option<String>,
    limit: Option<usize>,
    /// The id after which the page starts (the previous page's `next_cursor`): ids are in
    /// order of worker, then slot index and generation.
    cursor: Option<String>,
}

pub(super) async fn allocations(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<AllocationQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid query: expected user, limit and cursor",
        );
    };
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let after = match &query.cursor {
        Some(cursor) => match crate::net::status::parse_id(cursor) {
            Some(after) => Some(after),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid cursor: pass the next_cursor of the previous page",
                );
            }
        },
        None => None,
    };
    match api.node.allocations(query.user, after, limit).await {
        // Written straight from the structs: a page of 1000 through `json!` would first
        // become a tree of maps, twice the work of writing it.
        Ok(page) => axum::Json(PageBody {
            allocations: &page.allocations,
            next_cursor: page.next_cursor.as_deref(),
        })
        .into_response(),
        Err(unanswered) => unanswered_error(&unanswered),
    }
}

/// The body of a page of `/api/v1/allocations`.
#[derive(Serialize)]
struct PageBody<'a> {
    allocations: &'a [crate::net::status::AllocationInfo],
    next_cursor: Option<&'a str>,
}

pub(super) async fn close_allocation(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    match api.node.close(&id).await {
        Ok(true) => axum::Json(json!({ "deleted": id })).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such allocation"),
        Err(unanswered) => unanswered_error(&unanswered),
    }
}

/// The dashboard: a static page (no data in it) that asks for the token and then reads the
/// API like any other client. No other site may frame it (it is where the token is typed).
pub(super) async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}
