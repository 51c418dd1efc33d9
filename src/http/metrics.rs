//! `GET /metrics`: Prometheus/OpenMetrics text, built at scrape time from the counters the
//! workers publish. No label carries a username, an address or an allocation id, so the set of
//! series is fixed whatever the traffic.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::auth::redis::Health;
use crate::clock::unix_now;
use crate::net::status::TRANSPORTS;
use crate::turn::{RESPONSE_CODES, RESPONSE_METHODS};

use super::{Api, authorized, unauthorized};

/// The collector handed to the registry for one scrape: the API, and what the workers answered.
struct Scrape(Arc<Api>, Arc<crate::net::NodeSummary>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter family with one label.
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, value) in values {
        let labels = [(label, *value_label)];
        let metric = family.encode_family(&labels)?;
        ConstCounter::new(*value).encode(metric)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let api = &self.0;
        let summary = &self.1;
        let counters_now = summary.counters;
        let core = counters_now.workers.core;
        {
            let mut family = encoder.encode_descriptor(
                "turnpike_allocations",
                "Live allocations, by client transport",
                None,
                MetricType::Gauge,
            )?;
            for (transport, count) in TRANSPORTS.into_iter().zip(summary.by_transport) {
                let labels = [("transport", super::ops::transport_name(transport))];
                ConstGauge::new(count as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut encoder,
            "turnpike_allocations_created",
            "Allocations granted",
            core.allocations_created,
        )?;
        counter(
            &mut encoder,
            "turnpike_allocations_expired",
            "Allocations that reached the end of their lifetime",
            core.allocations_expired,
        )?;
        counter(
            &mut encoder,
            "turnpike_allocations_deleted",
            "Allocations deleted: Refresh 0, connection closed, revoked, closed by an operator",
            core.allocations_deleted,
        )?;
        counters(
            &mut encoder,
            "turnpike_relayed_packets",
            "Packets relayed, by direction",
            "direction",
            &[
                ("to_peer", core.to_peer_packets),
                ("to_client", core.to_client_packets),
            ],
        )?;
        counters(
            &mut encoder,
            "turnpike_relayed_bytes",
            "Payload bytes relayed, by direction",
            "direction",
            &[
                ("to_peer", core.to_peer_bytes),
                ("to_client", core.to_client_bytes),
            ],
        )?;
        counters(
            &mut encoder,
            "turnpike_drops",
            "Packets and requests dropped, by reason",
            "reason",
            &[
                ("no_allocation", core.dropped_no_allocation),
                ("no_permission", core.dropped_no_permission),
                ("policy", core.dropped_policy),
                ("bandwidth", core.dropped_bandwidth),
                ("too_large", core.dropped_too_large),
                ("rate_limit", core.rate_limited),
                ("rate_limit_node", core.rate_limited_node),
                ("malformed", core.malformed),
                ("quota", core.quota_rejected),
                ("capacity", core.capacity_rejected),
                ("stream_full", counters_now.workers.dropped_stream_full),
                ("send_failed", counters_now.workers.dropped_send_failed),
            ],
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "turnpike_responses",
                "Responses sent, by method and code (200 = success)",
                None,
                MetricType::Counter,
            )?;
            for (row, method) in RESPONSE_METHODS.iter().enumerate() {
                for (column, code) in RESPONSE_CODES.iter().enumerate() {
                    let value = core.responses[row][column];
                    if value == 0 {
                        continue;
                    }
                    let code = if *code == 0 {
                        "other".to_owned()
                    } else {
                        code.to_string()
                    };
                    let labels = [("method", *method), ("code", code.as_str())];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        counter(
            &mut encoder,
            "turnpike_auth_failures",
            "Requests whose credentials did not verify",
            core.auth_failures,
        )?;
        counter(
            &mut encoder,
            "turnpike_stale_nonces",
            "Requests answered 438 Stale Nonce",
            core.stale_nonces,
        )?;
        gauge(
            &mut encoder,
            "turnpike_tcp_connections",
            "Live TCP and TLS client connections",
            counters_now.tcp_connections as i64,
        )?;
        counter(
            &mut encoder,
            "turnpike_tcp_rejected",
            "TCP/TLS connections refused at max-tcp-connections",
            counters_now.workers.tcp_rejected,
        )?;
        counter(
            &mut encoder,
            "turnpike_tcp_rejected_per_source",
            "TCP/TLS connections refused at max-tcp-connections-per-source",
            counters_now.workers.tcp_rejected_per_source,
        )?;
        counters(
            &mut encoder,
            "turnpike_tcp_relay_connections",
            "Peer connections of TCP allocations (RFC 6062), by outcome: opened (Connect or accepted from a permitted peer), failed (Connect answered 447 or 508), bound to a data connection, closed unbound after 30 s",
            "outcome",
            &[
                ("opened", core.tcp_connections_opened),
                ("failed", core.tcp_connections_failed),
                ("bound", core.tcp_connections_bound),
                ("bind_timeout", core.tcp_bind_timeouts),
            ],
        )?;
        counters(
            &mut encoder,
            "turnpike_tcp_relayed_bytes",
            "Bytes spliced between data connections and peer connections of TCP allocations, by direction (also in turnpike_relayed_bytes)",
            "direction",
            &[
                ("to_peer", core.tcp_to_peer_bytes),
                ("to_client", core.tcp_to_client_bytes),
            ],
        )?;
        counter(
            &mut encoder,
            "turnpike_stream_timeouts",
            "TCP/TLS clients closed by stream-idle-timeout",
            counters_now.workers.stream_timeouts,
        )?;
        let http = &api.connections;
        gauge(
            &mut encoder,
            "turnpike_http_connections",
            "Open connections to this HTTP API",
            http.open.load(Ordering::Relaxed) as i64,
        )?;
        counter(
            &mut encoder,
            "turnpike_http_refused",
            "HTTP connections closed at accept: at http.max-connections(-per-source) with none to make room",
            http.refused.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "turnpike_http_evicted",
            "HTTP connections closed before their first request to make room for a newer one",
            http.evicted.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "turnpike_http_timeouts",
            "HTTP connections closed for a slow request head or body, or an untrusted one open too long",
            http.timeouts.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "turnpike_stream_write_timeouts",
            "TCP/TLS clients closed because their output made no progress for stream-idle-timeout",
            counters_now.workers.stream_write_timeouts,
        )?;
        counter(
            &mut encoder,
            "turnpike_proxy_refused",
            "Connections to a proxy-protocol listener closed before they carried a client (source not in proxy-from, missing or invalid header)",
            counters_now.workers.proxy_refused,
        )?;
        let redis_up = api.redis.as_ref().map_or(0, |r| {
            i64::from(r.store.health(unix_now()) == Health::Connected)
        });
        gauge(
            &mut encoder,
            "turnpike_redis_up",
            "1 when the Redis store is connected (0 when disconnected or not configured)",
            redis_up,
        )?;
        gauge(
            &mut encoder,
            "turnpike_draining",
            "1 while the node drains",
            i64::from(api.node.draining()),
        )?;
        let reloads = api.reloads.snapshot();
        counters(
            &mut encoder,
            "turnpike_config_reloads",
            "Configuration reloads (SIGHUP), by result",
            "result",
            &[("applied", reloads.applied), ("rejected", reloads.rejected)],
        )?;
        gauge(
            &mut encoder,
            "turnpike_config_last_reload_successful",
            "0 when the last reload was rejected (the old configuration runs), else 1",
            i64::from(reloads.last.as_ref().is_none_or(|l| l.error.is_none())),
        )?;
        gauge(
            &mut encoder,
            "turnpike_config_pending_restart_keys",
            "Changed keys the running node takes only after a restart (as of the last applied reload)",
            i64::try_from(reloads.pending_restart.len()).unwrap_or(i64::MAX),
        )?;
        let (offload_active, offload) = api.node.offload();
        gauge(
            &mut encoder,
            "turnpike_offload_active",
            "1 when the kernel fast path relays UDP channel traffic",
            i64::from(offload_active),
        )?;
        counter(
            &mut encoder,
            "turnpike_offload_carried_packets",
            "Datagrams the kernel fast path relayed (both directions; also counted in the relayed packet counters)",
            offload.carried,
        )?;
        counters(
            &mut encoder,
            "turnpike_offload_passed_up_packets",
            "Datagrams of channels in the kernel fast path's tables that it left to user space, by reason",
            "reason",
            &[
                ("checksum_partial", offload.checksum_partial),
                ("too_big", offload.too_big),
                ("local_off_lo", offload.local_off_lo),
            ],
        )?;
        gauge(
            &mut encoder,
            "turnpike_uptime_seconds",
            "Seconds since start",
            api.started.elapsed().as_secs() as i64,
        )?;
        {
            let info = prometheus_client::metrics::info::Info::new([(
                "version",
                env!("CARGO_PKG_VERSION"),
            )]);
            info.encode(encoder.encode_descriptor(
                "turnpike_build",
                "Build information",
                None,
                info.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

pub(super) async fn metrics(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if !api.settings.load().public_metrics && !authorized(&api, &headers) {
        return unauthorized();
    }
    let summary = match api.node.summary(false).await {
        Ok(summary) => summary,
        Err(unanswered) => return super::ops::unanswered_error(&unanswered),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(api, summary)));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
