//! The JSON-RPC transport on one Unix socket: three framings chosen per connection (SPEC §11).
//!
//! Owns: accepting connections, the peer check (SO_PEERCRED), the connection limit, sniffing the framing
//! from the first non-whitespace byte (`{`/`[` → NDJSON, `A`–`Z` → HTTP/WebSocket through jsonrpsee's tower
//! service, anything else → one parse-error line), and graceful shutdown. It is generic over a
//! `jsonrpsee::Methods` and the subscriptions the NDJSON framing serves as bytes ([`raw`]); it knows no
//! method. It does not bind, chmod or remove the socket file (`daemon::socket` does).
//!
//! Public API:
//! - [`serve`]`(listener, methods, raw, cfg, shutdown) -> ServeReport` — runs until `shutdown` resolves,
//!   then stops accepting, stops every connection gracefully and waits up to `cfg.shutdown_timeout`.
//! - [`TransportConfig`] (limits and timeouts, `Default` = production values), [`ServeReport`].
//! - [`peer`]: the peer-credential policy. [`raw`]: subscriptions written as ready bytes.

mod counting;
mod http_support;
pub mod metrics_http;
mod ndjson;
pub mod peer;
pub mod raw;
/// `unsubscribe*` with named params (`{"subscription": id}`, the documented canonical form) as the
/// positional `[id]` jsonrpsee's unsubscribe handlers parse; `None` when nothing is to change. Without it a
/// named unsubscribe answered `false` and left the subscription live.
fn unsubscribe_params(
    method: &str,
    params: Option<&serde_json::value::RawValue>,
) -> Option<Box<serde_json::value::RawValue>> {
    if !method.starts_with("unsubscribe") {
        return None;
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Named<'a> {
        #[serde(borrow)]
        subscription: &'a serde_json::value::RawValue,
    }
    let named: Named = serde_json::from_str(params?.get()).ok()?;
    serde_json::value::RawValue::from_string(format!("[{}]", named.subscription.get())).ok()
}

/// A reply with the limit errors jsonrpsee makes itself (their `data` a bare string) made like every other
/// error of the daemon, `data: {code, limit}`; any other reply as it is.
fn with_typed_limit_errors(
    id: jsonrpsee::types::Id<'static>,
    response: jsonrpsee::server::MethodResponse,
    limits: ReplyLimits,
) -> jsonrpsee::server::MethodResponse {
    let error = match response.as_error_code() {
        Some(crate::rpc::error::RESPONSE_TOO_LARGE) => {
            crate::rpc::error::response_too_large(limits.max_response_size)
        }
        Some(crate::rpc::error::TOO_MANY_SUBSCRIPTIONS) => {
            crate::rpc::error::too_many_subscriptions(limits.max_subscriptions)
        }
        _ => return response,
    };
    jsonrpsee::server::MethodResponse::error(id, error)
}

/// The limits [`with_typed_limit_errors`] names.
#[derive(Debug, Clone, Copy)]
struct ReplyLimits {
    max_response_size: u32,
    max_subscriptions: u32,
}

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::server::{
    serve_with_graceful_shutdown, stop_channel, ConnectionId, IdProvider, Methods,
    RandomIntegerIdProvider, Server, ServerConfig, StopHandle, TowerServiceBuilder,
};
use jsonrpsee::types::error::ErrorCode;
use jsonrpsee::types::ErrorObjectOwned;
use nix::sys::socket::MsgFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::layer::util::{Identity, Stack};
use tower::util::MapRequestLayer;

use self::counting::{CallCounter, CountLayer};
use self::metrics_http::MetricsRoute;
use self::ndjson::NdjsonLimits;
use self::peer::{proc_supplementary_groups, PeerCredentials, PeerPolicy};
use self::raw::RawSubscriptions;
use crate::metrics::Metrics;
use crate::rpc::error::{permission_denied, server_busy};

// jsonrpsee numbers HTTP/WS connections with u32 ids from 0; NDJSON connections count up from above
// u32::MAX so subscription keys (ConnectionId, SubscriptionId) never collide between framings.
const _: () = assert!(
    usize::BITS >= 64,
    "NDJSON connection ids need a 64-bit usize"
);
const FIRST_NDJSON_CONNECTION_ID: usize = u32::MAX as usize + 1;

/// Refused connections (permission, connection limit) being answered at once; beyond this they are
/// closed without an answer, so refusing costs a bounded amount.
const MAX_PENDING_REFUSALS: usize = 64;
/// How long a refused connection may take to show its framing before it gets the NDJSON error line.
const REFUSAL_SNIFF_TIMEOUT: Duration = Duration::from_secs(2);
/// Before closing a connection we refused, read at most this much of its unread input …
const CLOSE_DRAIN_BYTES: usize = 64 * 1024;
/// … for at most this long.
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after `accept` fails for lack of file descriptors, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits and timeouts of the transport. `Default` gives the production values of SPEC §11.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest request (NDJSON line, HTTP body, WS message) in bytes.
    pub max_request_size: u32,
    /// Largest response in bytes.
    pub max_response_size: u32,
    /// Connections open at once, all framings together.
    pub max_connections: u32,
    /// Requests (lines) processed at once per NDJSON connection; at the cap reading pauses.
    pub max_in_flight_per_connection: u32,
    pub max_subscriptions_per_connection: u32,
    /// Responses and notifications queued per connection before senders wait.
    pub message_buffer_capacity: u32,
    /// How long an NDJSON connection may sit on an unfinished line before it is closed.
    pub partial_line_timeout: Duration,
    /// How long a new connection may stay silent before its first byte.
    pub first_byte_timeout: Duration,
    /// On shutdown, how long an NDJSON connection waits for its in-flight calls.
    pub connection_drain_timeout: Duration,
    /// On shutdown, how long `serve` waits for every connection to close.
    pub shutdown_timeout: Duration,
    /// Peers in this group (primary or supplementary) may connect too, besides our uid and root.
    pub allowed_gid: Option<u32>,
    /// Where calls are counted and what `GET /metrics` serves; `None`: no counting, no `/metrics`.
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_request_size: 1024 * 1024,
            max_response_size: 10 * 1024 * 1024,
            max_connections: 1024,
            max_in_flight_per_connection: 256,
            max_subscriptions_per_connection: 1024,
            message_buffer_capacity: 1024,
            partial_line_timeout: Duration::from_secs(60),
            first_byte_timeout: Duration::from_secs(600),
            connection_drain_timeout: Duration::from_secs(3),
            shutdown_timeout: Duration::from_secs(5),
            allowed_gid: None,
            metrics: None,
        }
    }
}

/// What happened while serving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections served (peer allowed, under the limit).
    pub accepted: u64,
    /// Connections refused by the peer check.
    pub refused_permission: u64,
    /// Connections refused by the connection limit.
    pub refused_busy: u64,
    /// Whether every connection closed within `shutdown_timeout`.
    pub all_closed: bool,
    /// Time from the shutdown signal to the last connection closing (or the timeout).
    pub shutdown_duration: Duration,
}

type RelabelPost = fn(::http::Request<Incoming>) -> ::http::Request<Incoming>;
type HttpServiceBuilder =
    TowerServiceBuilder<Stack<CountLayer, Identity>, Stack<MapRequestLayer<RelabelPost>, Identity>>;

/// State shared by every connection task.
struct Shared {
    methods: Methods,
    /// Subscriptions the NDJSON framing serves as bytes (`raw`); the other framings use `methods`.
    raw: RawSubscriptions,
    http: HttpServiceBuilder,
    ndjson: NdjsonLimits,
    id_provider: Arc<dyn IdProvider>,
    next_ndjson_id: AtomicUsize,
    first_byte_timeout: Duration,
    metrics: Option<Arc<Metrics>>,
    counter: Option<CallCounter>,
}

/// Serves JSON-RPC on `listener` until `shutdown` resolves; see the module docs.
pub async fn serve(
    listener: UnixListener,
    methods: impl Into<Methods>,
    raw: RawSubscriptions,
    cfg: TransportConfig,
    shutdown: impl Future<Output = ()>,
) -> ServeReport {
    let server_cfg = ServerConfig::builder()
        .max_request_body_size(cfg.max_request_size)
        .max_response_body_size(cfg.max_response_size)
        .max_connections(cfg.max_connections)
        .max_subscriptions_per_connection(cfg.max_subscriptions_per_connection)
        .set_message_buffer_capacity(cfg.message_buffer_capacity)
        .set_id_provider(RandomIntegerIdProvider)
        .build();
    let methods: Methods = methods.into();
    let counter = cfg
        .metrics
        .clone()
        .map(|metrics| CallCounter::new(metrics, &methods));
    let relabel: RelabelPost = http_support::force_json_content_type;
    let http = Server::builder()
        .set_config(server_cfg)
        .set_http_middleware(tower::ServiceBuilder::new().map_request(relabel))
        .set_rpc_middleware(RpcServiceBuilder::new().layer(CountLayer {
            counter: counter.clone(),
            limits: ReplyLimits {
                max_response_size: cfg.max_response_size,
                max_subscriptions: cfg.max_subscriptions_per_connection,
            },
        }))
        .to_service_builder();
    let shared = Arc::new(Shared {
        methods,
        raw,
        http,
        ndjson: NdjsonLimits {
            max_request_size: cfg.max_request_size,
            max_response_size: cfg.max_response_size,
            max_in_flight: cfg.max_in_flight_per_connection,
            max_subscriptions: cfg.max_subscriptions_per_connection,
            message_buffer_capacity: cfg.message_buffer_capacity,
            partial_line_timeout: cfg.partial_line_timeout,
            stop_drain_timeout: cfg.connection_drain_timeout,
        },
        counter,
        id_provider: Arc::new(RandomIntegerIdProvider),
        next_ndjson_id: AtomicUsize::new(FIRST_NDJSON_CONNECTION_ID),
        first_byte_timeout: cfg.first_byte_timeout,
        metrics: cfg.metrics.clone(),
    });
    let policy = PeerPolicy {
        our_euid: nix::unistd::geteuid().as_raw(),
        allowed_gid: cfg.allowed_gid,
    };
    let connections = Arc::new(Semaphore::new(cfg.max_connections as usize));
    let refusals = Arc::new(Semaphore::new(MAX_PENDING_REFUSALS));
    let (stop, server_handle) = stop_channel();
    let mut report = ServeReport::default();

    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "accepting a connection failed");
                    if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        let peer = match stream.peer_cred() {
            Ok(cred) => PeerCredentials {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
            Err(err) => {
                tracing::warn!(%err, "cannot read the peer's credentials (SO_PEERCRED); closing the connection");
                continue;
            }
        };
        if !policy.allows(&peer, proc_supplementary_groups) {
            report.refused_permission += 1;
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                "refusing a peer that may not use the socket"
            );
            refuse(
                stream,
                permission_denied(peer.uid),
                "403 Forbidden",
                &refusals,
                &stop,
            );
            continue;
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            report.refused_busy += 1;
            tracing::warn!(
                limit = cfg.max_connections,
                "connection limit reached; refusing a connection"
            );
            refuse(
                stream,
                server_busy(cfg.max_connections),
                "503 Service Unavailable",
                &refusals,
                &stop,
            );
            continue;
        };
        report.accepted += 1;
        tokio::spawn(serve_connection(
            stream,
            shared.clone(),
            stop.clone(),
            permit,
        ));
    }

    // New clients now get ECONNREFUSED instead of waiting in the backlog.
    drop(listener);
    let started = Instant::now();
    if server_handle.stop().is_err() {
        tracing::debug!("the server was already stopped");
    }
    drop(stop);
    report.all_closed = tokio::time::timeout(cfg.shutdown_timeout, server_handle.stopped())
        .await
        .is_ok();
    report.shutdown_duration = started.elapsed();
    if report.all_closed {
        tracing::info!(
            after_ms = report.shutdown_duration.as_millis() as u64,
            "all connections closed"
        );
    } else {
        tracing::warn!(
            timeout_ms = cfg.shutdown_timeout.as_millis() as u64,
            "connections still open after the shutdown timeout"
        );
    }
    report
}

/// One allowed connection: sniff the framing, then hand it to the NDJSON or HTTP/WS transport.
async fn serve_connection(
    stream: UnixStream,
    shared: Arc<Shared>,
    stop: StopHandle,
    _permit: OwnedSemaphorePermit,
) {
    let first = tokio::select! {
        _ = stop.clone().shutdown() => return,
        first = tokio::time::timeout(shared.first_byte_timeout, first_significant_byte(&stream)) => first,
    };
    match first {
        Ok(Ok(Some(b'{' | b'['))) => {
            let conn_id = ConnectionId(shared.next_ndjson_id.fetch_add(1, Ordering::Relaxed));
            let served = ndjson::Served {
                methods: shared.methods.clone(),
                raw: shared.raw.clone(),
                counter: shared.counter.clone(),
                id_provider: shared.id_provider.clone(),
            };
            ndjson::serve_connection(stream, served, conn_id, shared.ndjson, stop).await;
        }
        Ok(Ok(Some(b'A'..=b'Z'))) => {
            let service = MetricsRoute {
                inner: shared
                    .http
                    .clone()
                    .build(shared.methods.clone(), stop.clone()),
                metrics: shared.metrics.clone(),
            };
            if let Err(err) = serve_with_graceful_shutdown(stream, service, stop.shutdown()).await {
                tracing::debug!(%err, "HTTP connection ended with an error");
            }
        }
        Ok(Ok(Some(_))) => {
            let err = ErrorObjectOwned::from(ErrorCode::ParseError);
            write_and_close(stream, &http_support::error_line(&err)).await;
        }
        Ok(Ok(None)) => {}
        Ok(Err(err)) => tracing::debug!(%err, "connection failed before its first byte"),
        Err(_elapsed) => {
            tracing::debug!("connection sent nothing within the first-byte timeout; closing")
        }
    }
}

/// Answers a refused connection with `err` in its framing (HTTP `status` or an NDJSON line), then closes.
fn refuse(
    stream: UnixStream,
    err: ErrorObjectOwned,
    status: &'static str,
    refusals: &Arc<Semaphore>,
    stop: &StopHandle,
) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let stop = stop.clone();
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = stop.shutdown() => return,
            first = tokio::time::timeout(REFUSAL_SNIFF_TIMEOUT, first_significant_byte(&stream)) => first,
        };
        let answer = match first {
            Ok(Ok(Some(b'A'..=b'Z'))) => http_support::error_response(status, &err),
            _ => http_support::error_line(&err),
        };
        write_and_close(stream, &answer).await;
        drop(permit);
    });
}

/// Writes a last message and closes. Unread input is drained (bounded) first: closing a Unix socket with
/// unread data makes the peer's next read fail with ECONNRESET instead of a clean end of file.
async fn write_and_close(mut stream: UnixStream, bytes: &[u8]) {
    if stream.write_all(bytes).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < CLOSE_DRAIN_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, drain).await;
}

/// The first byte that is not ASCII whitespace, without consuming it (leading whitespace is consumed, e.g.
/// a user pressing Enter in socat). `None` on EOF.
async fn first_significant_byte(stream: &UnixStream) -> io::Result<Option<u8>> {
    let mut buf = [0u8; 256];
    loop {
        let peeked = stream
            .async_io(Interest::READABLE, || {
                nix::sys::socket::recv(stream.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK)
                    .map_err(io::Error::from)
            })
            .await?;
        if peeked == 0 {
            return Ok(None);
        }
        let whitespace = buf[..peeked]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        if whitespace > 0 {
            // These bytes were just peeked, so this read cannot block.
            let mut skipped = [0u8; 256];
            stream.try_read(&mut skipped[..whitespace])?;
        }
        if whitespace < peeked {
            return Ok(Some(buf[whitespace]));
        }
    }
}
