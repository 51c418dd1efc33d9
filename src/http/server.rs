//! How the API is served: our own accept loop over hyper's HTTP/1 connections, with caps on
//! open connections (in total and per source), timeouts for headers, bodies and idle
//! keep-alive, bodies read only after the token checked out, and the security headers every
//! response carries.
//!
//! A connection is *fresh* until its first request head is complete; it becomes *trusted* when
//! a request carries the right token. At a cap, a new connection closes the oldest fresh one
//! (of the same source at the per-source cap) and takes its place; when there is none, the new
//! connection is closed at once, unread. A slowloris flood can therefore never lock a client
//! out that sends its request promptly: a fresh connection lives as long as it takes the flood
//! to open `max-connections` newer ones. Untrusted connections serve one request (the answer
//! says `Connection: close`) and live at most [`UNTRUSTED_LIFETIME`].

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::net::AcceptBackoff;

use super::{Api, authorized, error};

/// How long a client has to send a complete request head, counted from the connection's
/// start or, on a keep-alive connection, from the end of the previous response (so it is the
/// keep-alive idle timeout too). A head is a few hundred bytes: a byte-a-second sender is cut
/// off here.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an authorized client has to send its (at most [`MAX_BODY`]) body once its head
/// is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest an untrusted connection (no request with the right token yet) stays open,
/// whatever it does: its head, one answer and that answer's delivery. It bounds a client that
/// never reads its answer.
pub const UNTRUSTED_LIFETIME: Duration = Duration::from_secs(20);
/// The largest request body read (`POST /api/v1/credentials` takes `{"user":…,"ttl":…}`, whose
/// user is at most 400 bytes); a larger one gets 413.
pub const MAX_BODY: usize = 4096;
/// The largest request head (request line and headers); a larger one gets 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// The warning about connections closed at a cap is repeated at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Longest pause after failed accepts (e.g. EMFILE); the pause doubles from 10 ms up to this.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The connection caps (`[http] max-connections`, `max-connections-per-source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_source: usize,
}

/// What the accept loop counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Open connections.
    pub open: AtomicU64,
    /// Closed at accept: at a cap with no fresh connection to make room.
    pub refused: AtomicU64,
    /// Fresh connections closed to make room for a newer one.
    pub evicted: AtomicU64,
    /// Closed because the head, the body or the untrusted lifetime took too long.
    pub timeouts: AtomicU64,
}

/// The address a source is counted by: an IPv4 address (IPv4-mapped IPv6 included), or the
/// /64 an IPv6 address is in (one subscriber's usual assignment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4.to_bits()),
            IpAddr::V6(v6) => Source::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

/// One open connection, shared by its task, its requests and the table.
#[derive(Debug)]
struct Connection {
    source: Source,
    /// A request head has come in: no longer evictable.
    engaged: AtomicBool,
    /// A request carried the right token.
    trusted: AtomicBool,
    /// Tells the connection's task to close it (it was evicted).
    evict: Notify,
}

/// The open connections, oldest first (ids grow), and how many each source holds.
#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Arc<Connection>>,
    /// Remote-chosen keys in std's randomly keyed SipHash map.
    per_source: HashMap<Source, usize>,
}

/// One of the two caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cap {
    Total,
    Source,
}

impl Cap {
    fn key(self) -> &'static str {
        match self {
            Cap::Total => "http.max-connections",
            Cap::Source => "http.max-connections-per-source",
        }
    }
}

/// What making room for a connection took.
#[derive(Debug, Default)]
struct Crowding {
    /// Fresh connections closed.
    evicted: u64,
    /// The cap that was met, if one was.
    cap: Option<Cap>,
}

impl Table {
    /// Makes room for a connection from `source` within `limits`, closing the oldest fresh
    /// connections it must, and registers it; `Err` with the cap when nothing can make room.
    fn admit(
        &mut self,
        source: Source,
        limits: ConnectionLimits,
        crowding: &mut Crowding,
    ) -> Result<(u64, Arc<Connection>), Cap> {
        while self.per_source.get(&source).copied().unwrap_or(0) >= limits.per_source {
            crowding.cap = Some(Cap::Source);
            let id = self
                .oldest_fresh(|c| c.source == source)
                .ok_or(Cap::Source)?;
            self.remove(id).inspect(|c| c.evict.notify_one());
            crowding.evicted += 1;
        }
        while self.open.len() >= limits.total {
            crowding.cap = Some(Cap::Total);
            let id = self.oldest_fresh(|_| true).ok_or(Cap::Total)?;
            self.remove(id).inspect(|c| c.evict.notify_one());
            crowding.evicted += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        let connection = Arc::new(Connection {
            source,
            engaged: AtomicBool::new(false),
            trusted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        self.open.insert(id, connection.clone());
        *self.per_source.entry(source).or_default() += 1;
        Ok((id, connection))
    }

    fn oldest_fresh(&self, matches: impl Fn(&Connection) -> bool) -> Option<u64> {
        self.open
            .iter()
            .find(|(_, c)| !c.engaged.load(Ordering::Relaxed) && matches(c))
            .map(|(id, _)| *id)
    }

    /// Forgets connection `id` (evicted, or its task ended); `None` if it already was.
    fn remove(&mut self, id: u64) -> Option<Arc<Connection>> {
        let connection = self.open.remove(&id)?;
        if let Some(count) = self.per_source.get_mut(&connection.source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&connection.source);
            }
        }
        Some(connection)
    }
}

/// A connection's place in the table, given back when its task ends.
struct Slot {
    id: u64,
    table: Arc<Mutex<Table>>,
    api: Arc<Api>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(self.id);
        let open = table.open.len() as u64;
        drop(table);
        self.api.connections.open.store(open, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` until the process ends.
pub(super) async fn serve(listener: TcpListener, api: Arc<Api>, router: Router) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEAD)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let table = Arc::new(Mutex::new(Table::default()));
    let mut backoff = AcceptBackoff::new("HTTP", MAX_ACCEPT_BACKOFF);
    let mut warned: Option<Instant> = None;
    loop {
        // Out of descriptors (EMFILE, ENFILE) or memory, accept waits: what frees them is time.
        let (stream, peer) = backoff.accept(&listener).await;
        let limits = api.settings.load().connections;
        let mut crowding = Crowding::default();
        let admitted = {
            let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
            let admitted = table.admit(Source::of(peer.ip()), limits, &mut crowding);
            api.connections
                .open
                .store(table.open.len() as u64, Ordering::Relaxed);
            admitted
        };
        let counters = &api.connections;
        counters
            .evicted
            .fetch_add(crowding.evicted, Ordering::Relaxed);
        if admitted.is_err() {
            counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(cap) = crowding.cap
            && warned.is_none_or(|at| at.elapsed() >= WARN_EVERY)
        {
            warned = Some(Instant::now());
            tracing::warn!(
                cap = cap.key(),
                evicted_total = counters.evicted.load(Ordering::Relaxed),
                refused_total = counters.refused.load(Ordering::Relaxed),
                "HTTP connections at the cap: a new one closes the oldest that has sent no request, or is closed itself when all are in use"
            );
        }
        let Ok((id, connection)) = admitted else {
            // Closed unread: the kernel answers whatever the client sent with a reset.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = Slot {
            id,
            table: table.clone(),
            api: api.clone(),
        };
        tokio::spawn(serve_connection(
            builder.clone(),
            stream,
            slot,
            connection,
            router.clone(),
        ));
    }
}

async fn serve_connection(
    builder: Arc<hyper::server::conn::http1::Builder>,
    stream: tokio::net::TcpStream,
    slot: Slot,
    connection: Arc<Connection>,
    router: Router,
) {
    let api = slot.api.clone();
    let service = {
        let (connection, api) = (connection.clone(), api.clone());
        hyper::service::service_fn(move |request| {
            handle(request, connection.clone(), api.clone(), router.clone())
        })
    };
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let lifetime = tokio::time::sleep(UNTRUSTED_LIFETIME);
    tokio::pin!(lifetime);
    let mut untrusted = true;
    loop {
        tokio::select! {
            result = &mut served => {
                if let Err(error) = result {
                    if error.is_timeout() {
                        api.connections.timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(%error, "HTTP connection ended");
                }
                break;
            }
            _ = connection.evict.notified() => break,
            _ = &mut lifetime, if untrusted => {
                if connection.trusted.load(Ordering::Relaxed) {
                    untrusted = false;
                } else {
                    api.connections.timeouts.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    drop(slot);
}

/// One request: the token is checked from the head; a body is read only for a request that
/// carries it, up to [`MAX_BODY`] within [`BODY_TIMEOUT`]. An untrusted request's body is never
/// read (its handler sees none, and answers 401 where the token is needed).
async fn handle(
    request: Request<Incoming>,
    connection: Arc<Connection>,
    api: Arc<Api>,
    router: Router,
) -> Result<Response<Body>, Infallible> {
    connection.engaged.store(true, Ordering::Relaxed);
    let trusted = authorized(&api, request.headers());
    if trusted {
        connection.trusted.store(true, Ordering::Relaxed);
    }
    let (parts, body) = request.into_parts();
    let body = if body.is_end_stream() || !trusted {
        // Dropped unread: hyper drains what it already holds and otherwise closes the
        // connection after the answer.
        Body::empty()
    } else if body.size_hint().lower() > MAX_BODY as u64 {
        return Ok(finish(too_large(), false));
    } else {
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(collected)) => Body::from(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Ok(finish(too_large(), false));
            }
            Ok(Err(_)) => {
                let answer = error(StatusCode::BAD_REQUEST, "the request body was cut short");
                return Ok(finish(answer, false));
            }
            Err(_) => {
                api.connections.timeouts.fetch_add(1, Ordering::Relaxed);
                let message = format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                );
                let answer = error(StatusCode::REQUEST_TIMEOUT, &message);
                return Ok(finish(answer, false));
            }
        }
    };
    let response = match router.oneshot(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    Ok(finish(response, trusted))
}

fn too_large() -> axum::response::Response {
    let message = format!("the request body is larger than {MAX_BODY} bytes");
    error(StatusCode::PAYLOAD_TOO_LARGE, &message)
}

/// Adds the security headers and, unless the connection may go on, `Connection: close`.
fn finish(mut response: Response<Body>, keep_alive: bool) -> Response<Body> {
    secure(response.headers_mut());
    if !keep_alive {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The API's answers are data for scripts, never pages: nothing may run, load or frame them.
/// A handler that serves a page (the dashboard) sets its own policy, which must forbid framing
/// too.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// The headers every response carries.
pub(super) fn secure(headers: &mut HeaderMap) {
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(API_CSP));
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        total: 4,
        per_source: 2,
    };

    fn source(last: u8) -> Source {
        Source::of(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let v6 = |s: &str| Source::of(s.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:192.0.2.1"), source(1));
        assert_ne!(source(1), source(2));
    }

    #[test]
    fn a_cap_closes_the_oldest_fresh_connection_or_refuses() {
        let mut table = Table::default();
        let mut crowding = Crowding::default();
        let a1 = table.admit(source(1), LIMITS, &mut crowding).unwrap();
        let a2 = table.admit(source(1), LIMITS, &mut crowding).unwrap();
        assert_eq!((crowding.evicted, crowding.cap), (0, None));
        // Source 1 is at its cap: its oldest fresh connection makes room.
        let a3 = table.admit(source(1), LIMITS, &mut crowding).unwrap();
        assert_eq!((crowding.evicted, crowding.cap), (1, Some(Cap::Source)));
        assert!(!table.open.contains_key(&a1.0));
        // Once both of its connections are in use, source 1 is refused; others are not.
        a2.1.engaged.store(true, Ordering::Relaxed);
        a3.1.engaged.store(true, Ordering::Relaxed);
        assert_eq!(
            table.admit(source(1), LIMITS, &mut crowding).unwrap_err(),
            Cap::Source
        );
        let b1 = table.admit(source(2), LIMITS, &mut crowding).unwrap();
        let _b2 = table.admit(source(2), LIMITS, &mut crowding).unwrap();
        assert_eq!(table.open.len(), 4);
        // At the total cap, the oldest fresh connection of any source makes room.
        let _c1 = table.admit(source(3), LIMITS, &mut crowding).unwrap();
        assert_eq!((crowding.evicted, crowding.cap), (2, Some(Cap::Total)));
        assert!(!table.open.contains_key(&b1.0));
        for (_, c) in table.open.iter() {
            c.engaged.store(true, Ordering::Relaxed);
        }
        assert_eq!(
            table.admit(source(4), LIMITS, &mut crowding).unwrap_err(),
            Cap::Total
        );
        assert_eq!(table.per_source.values().sum::<usize>(), table.open.len());
        // A connection that ends frees its place and its source's count.
        table.remove(a2.0);
        table.remove(a2.0);
        assert_eq!(table.per_source[&source(1)], 1);
        assert!(table.admit(source(4), LIMITS, &mut crowding).is_ok());
    }

    #[test]
    fn a_lowered_cap_is_reached_again_by_closing_fresh_connections() {
        let mut table = Table::default();
        let mut crowding = Crowding::default();
        let wide = ConnectionLimits {
            total: 10,
            per_source: 10,
        };
        for _ in 0..6 {
            table.admit(source(1), wide, &mut crowding).unwrap();
        }
        table.admit(source(1), LIMITS, &mut crowding).unwrap();
        assert_eq!(table.per_source[&source(1)], 2);
        assert_eq!(crowding.evicted, 5);
    }

    #[test]
    fn security_headers_keep_a_page_policy() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        secure(&mut headers);
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], API_CSP);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let mut page = HeaderMap::new();
        page.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
        );
        secure(&mut page);
        assert_eq!(
            page[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'; frame-ancestors 'none'"
        );
        assert_eq!(page[header::X_FRAME_OPTIONS], "DENY");
    }
}
