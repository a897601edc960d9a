//! The raw newline-delimited JSON framing (`socat - UNIX-CONNECT:sock`), built on jsonrpsee's public
//! method-callback API so that it behaves like jsonrpsee's WebSocket transport.
//!
//! One request or batch per line in, one response per line out; notifications are run and get no reply. Each line
//! runs in its own task (responses may come back out of order; clients match on `id`). Every response and
//! subscription notification goes through one `MethodSink` drained by one writer task.
//!
//! Limits, each answered and none costing anything lasting: a line above `max_request_size` gets
//! REQUEST_TOO_LARGE and the rest of it is discarded without being buffered; at most `max_in_flight` lines
//! are processed at once (beyond that we stop reading, so the socket applies back-pressure); subscriptions
//! are bounded per connection; a half line followed by silence is closed after `partial_line_timeout`.
//!
//! Half-close: after read EOF (`echo req | socat …`) in-flight calls are still answered and subscriptions
//! keep streaming until the peer really goes away (checked every [`PEER_GONE_CHECK`]) or they end.
//!
//! jsonrpsee's own `RpcService` is `pub(crate)`, so its dispatch (`call`/`batch`) is mirrored here; keep
//! this module in step with jsonrpsee (pinned `=0.26.1`).

use std::borrow::Cow;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::server::{
    BatchResponseBuilder, BoundedSubscriptions, ConnectionId, IdProvider, MethodCallback,
    MethodResponse, MethodSink, Methods, ResponsePayload, StopHandle, SubscriptionPermit,
    SubscriptionState,
};
use jsonrpsee::types::error::ErrorCode;
use jsonrpsee::types::{
    ErrorObject, ErrorObjectOwned, Extensions, Id, InvalidRequest, Notification, Params, Request,
    SubscriptionId,
};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use super::counting::CallCounter;
use super::raw::{NotificationFrame, RawMethod, RawSubscription, RawSubscriptions};
use crate::rpc::error::request_too_large;

/// How often a half-closed connection checks whether its peer is gone for good.
pub(super) const PEER_GONE_CHECK: Duration = Duration::from_millis(250);
/// Bytes read from the socket at a time; lines longer than this are assembled across reads. Allocated per
/// connection up front, so small: a thousand idle connections cost 8 MiB, not 64 (and glibc keeps what a
/// burst of connections once used).
const READ_CHUNK: usize = 8 * 1024;
/// The writer gathers queued messages into one write up to about this many bytes.
const WRITE_BATCH: usize = 64 * 1024;
/// Bytes of notifications a raw subscription writes per buffer it hands the writer.
const RAW_BATCH: usize = 64 * 1024;
/// Buffers of raw subscriptions queued per connection before they wait: their memory is bounded by this
/// times [`RAW_BATCH`], and a reader that does not read holds them back.
const RAW_QUEUE: usize = 4;

/// The per-connection limits of the NDJSON framing.
#[derive(Debug, Clone, Copy)]
pub(super) struct NdjsonLimits {
    pub max_request_size: u32,
    pub max_response_size: u32,
    pub max_in_flight: u32,
    pub max_subscriptions: u32,
    pub message_buffer_capacity: u32,
    pub partial_line_timeout: Duration,
    pub stop_drain_timeout: Duration,
}

/// What every NDJSON connection is served: the methods, the subscriptions written as bytes, the call
/// counter and the subscription ids.
pub(super) struct Served {
    pub methods: Methods,
    pub raw: RawSubscriptions,
    pub counter: Option<CallCounter>,
    pub id_provider: Arc<dyn IdProvider>,
}

/// Serves one NDJSON connection until it closes. `stop` is held until the end, so the server's
/// `stopped()` also waits for this connection.
pub(super) async fn serve_connection(
    stream: UnixStream,
    served: Served,
    conn_id: ConnectionId,
    limits: NdjsonLimits,
    stop: StopHandle,
) {
    let Served {
        methods,
        raw,
        counter,
        id_provider,
    } = served;
    let (input, output) = stream.into_split();
    let (tx, rx) = mpsc::channel(limits.message_buffer_capacity.max(1) as usize);
    let (raw_tx, raw_rx) = mpsc::channel(RAW_QUEUE);
    let sink = MethodSink::new_with_limit(tx, limits.max_response_size);
    let (mode_tx, mode_rx) = watch::channel(WriterMode::Open);
    let mut writer = tokio::spawn(write_loop(
        rx,
        raw_rx,
        output,
        mode_rx,
        limits.stop_drain_timeout,
    ));
    let dispatcher = Arc::new(Dispatcher {
        methods,
        conn_id,
        sink,
        subscriptions: BoundedSubscriptions::new(limits.max_subscriptions),
        id_provider,
        max_response_size: limits.max_response_size as usize,
        counter,
        raw,
        raw_tx,
        raw_streams: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1) as usize));

    let end = read_loop(
        input,
        dispatcher,
        in_flight.clone(),
        limits,
        stop.clone().shutdown(),
    )
    .await;
    tracing::debug!(conn = conn_id.0, ?end, "ndjson reader finished");
    match end {
        ReadEnd::Eof => {
            let _ = mode_tx.send(WriterMode::HalfClosed);
            tokio::select! {
                _ = &mut writer => return,
                _ = stop.clone().shutdown() => {
                    drain_in_flight(&in_flight, limits).await;
                }
            }
        }
        ReadEnd::Stopped => drain_in_flight(&in_flight, limits).await,
        ReadEnd::Closed => {}
    }
    let _ = mode_tx.send(WriterMode::Close);
    let _ = writer.await;
    drop(stop);
}

/// Waits (bounded) until every in-flight line has queued its response.
async fn drain_in_flight(in_flight: &Semaphore, limits: NdjsonLimits) {
    let all = limits.max_in_flight.max(1);
    let _ = tokio::time::timeout(limits.stop_drain_timeout, in_flight.acquire_many(all)).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterMode {
    /// Reading goes on; write whatever is queued.
    Open,
    /// The peer shut down its write side; keep writing until it is gone or nothing can be sent any more.
    HalfClosed,
    /// Write what is already queued, then close.
    Close,
}

async fn write_loop(
    mut rx: mpsc::Receiver<Box<RawValue>>,
    mut raw_rx: mpsc::Receiver<Vec<u8>>,
    mut output: OwnedWriteHalf,
    mut mode: watch::Receiver<WriterMode>,
    close_drain_timeout: Duration,
) {
    // Grows on the first write: a connection that never gets an answer costs nothing here.
    let mut buf = Vec::new();
    let mut peer_check = tokio::time::interval(PEER_GONE_CHECK);
    peer_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut calls_open, mut raw_open) = (true, true);
    loop {
        let current = *mode.borrow_and_update();
        // Done once every sender of both queues is gone (reader finished, no call in flight, no
        // subscription left).
        if current == WriterMode::Close || !(calls_open || raw_open) {
            break;
        }
        tokio::select! {
            message = rx.recv(), if calls_open => match message {
                Some(message) => {
                    append_line(&mut buf, &message);
                    while buf.len() < WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(message) => append_line(&mut buf, &message),
                            Err(_) => break,
                        }
                    }
                    if output.write_all(&buf).await.is_err() {
                        // The peer is gone: closing the queues ends every subscription of this connection.
                        rx.close();
                        raw_rx.close();
                        return;
                    }
                    buf.clear();
                    buf.shrink_to(WRITE_BATCH);
                }
                None => calls_open = false,
            },
            // Whole notification lines, written as they are.
            bytes = raw_rx.recv(), if raw_open => match bytes {
                Some(bytes) => {
                    if output.write_all(&bytes).await.is_err() {
                        rx.close();
                        raw_rx.close();
                        return;
                    }
                }
                None => raw_open = false,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = peer_check.tick(), if current == WriterMode::HalfClosed => {
                if peer_hung_up(&output) {
                    rx.close();
                    raw_rx.close();
                    return;
                }
            }
        }
    }
    rx.close();
    raw_rx.close();
    let flush_queued = async {
        while let Some(message) = rx.recv().await {
            buf.clear();
            append_line(&mut buf, &message);
            if output.write_all(&buf).await.is_err() {
                return;
            }
        }
        while let Some(bytes) = raw_rx.recv().await {
            if output.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = output.shutdown().await;
    };
    let _ = tokio::time::timeout(close_drain_timeout, flush_queued).await;
}

/// Appends `message` as one line. A raw line feed in valid JSON can only be insignificant whitespace (inside
/// strings it is escaped), so it becomes a space: a pretty-printed raw result (the OpenRPC document) must
/// not split the message across lines.
fn append_line(buf: &mut Vec<u8>, message: &RawValue) {
    let start = buf.len();
    buf.extend_from_slice(message.get().as_bytes());
    for byte in &mut buf[start..] {
        if *byte == b'\n' {
            *byte = b' ';
        }
    }
    buf.push(b'\n');
}

/// True when the peer has closed both directions (POLLHUP), not merely shut down its write side.
fn peer_hung_up(output: &OwnedWriteHalf) -> bool {
    let stream: &UnixStream = output.as_ref();
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|ev| ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => true,
    }
}

#[derive(Debug)]
enum ReadEnd {
    /// The peer shut down its write side.
    Eof,
    /// The server is stopping.
    Stopped,
    /// Read error, or a half line timed out: close now.
    Closed,
}

/// What one look at the read buffer found.
enum LineEvent {
    Complete,
    TooLarge,
}

async fn read_loop(
    input: OwnedReadHalf,
    dispatcher: Arc<Dispatcher>,
    in_flight: Arc<Semaphore>,
    limits: NdjsonLimits,
    stop: impl std::future::Future<Output = ()>,
) -> ReadEnd {
    let mut reader = BufReader::with_capacity(READ_CHUNK, input);
    let mut line: Vec<u8> = Vec::new();
    let mut discarding = false;
    let max = limits.max_request_size as usize;
    tokio::pin!(stop);
    loop {
        let partial = !line.is_empty() || discarding;
        let read = fill_buf_within(&mut reader, partial.then_some(limits.partial_line_timeout));
        let (consumed, event) = tokio::select! {
            _ = &mut stop => return ReadEnd::Stopped,
            read = read => match read {
                Err(_elapsed) => {
                    let message = format!(
                        "Parse error: no end of line within {}s; closing the connection",
                        limits.partial_line_timeout.as_secs_f64()
                    );
                    let err = ErrorObjectOwned::owned(ErrorCode::ParseError.code(), message, None::<()>);
                    let _ = dispatcher.sink.send_error(Id::Null, err).await;
                    return ReadEnd::Closed;
                }
                Ok(Err(err)) => {
                    tracing::debug!(conn = dispatcher.conn_id.0, %err, "ndjson read failed");
                    return ReadEnd::Closed;
                }
                Ok(Ok([])) => {
                    // A last line without a newline is still a request.
                    if !line.is_empty() && !discarding {
                        if let Err(end) = dispatch(&dispatcher, &in_flight, std::mem::take(&mut line), &mut stop).await {
                            return end;
                        }
                    }
                    return ReadEnd::Eof;
                }
                Ok(Ok(buf)) => scan(buf, &mut line, &mut discarding, max),
            }
        };
        reader.consume(consumed);
        match event {
            None => {}
            Some(LineEvent::TooLarge) => {
                let err = request_too_large(limits.max_request_size);
                if dispatcher.sink.send_error(Id::Null, err).await.is_err() {
                    return ReadEnd::Closed;
                }
            }
            Some(LineEvent::Complete) => {
                if let Err(end) = dispatch(
                    &dispatcher,
                    &in_flight,
                    std::mem::take(&mut line),
                    &mut stop,
                )
                .await
                {
                    return end;
                }
            }
        }
    }
}

/// Reads more bytes, giving up after `limit` when one is set (a half line must not wait forever).
async fn fill_buf_within<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: Option<Duration>,
) -> Result<std::io::Result<&[u8]>, tokio::time::error::Elapsed> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, reader.fill_buf()).await,
        None => Ok(reader.fill_buf().await),
    }
}

/// Finds the end of the current line in `buf`, appending to `line` unless it grew beyond `max`, in which
/// case the line is dropped and the rest of it is skipped. Returns the bytes consumed.
fn scan(
    buf: &[u8],
    line: &mut Vec<u8>,
    discarding: &mut bool,
    max: usize,
) -> (usize, Option<LineEvent>) {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let consumed = end + 1;
            if *discarding {
                *discarding = false;
                return (consumed, None);
            }
            if line.len() + end > max {
                *line = Vec::new();
                return (consumed, Some(LineEvent::TooLarge));
            }
            line.extend_from_slice(&buf[..end]);
            (consumed, Some(LineEvent::Complete))
        }
        None => {
            if *discarding {
                return (buf.len(), None);
            }
            if line.len() + buf.len() > max {
                *line = Vec::new();
                *discarding = true;
                return (buf.len(), Some(LineEvent::TooLarge));
            }
            line.extend_from_slice(buf);
            (buf.len(), None)
        }
    }
}

/// Runs one line in its own task once an in-flight slot is free (waiting here is the back-pressure).
async fn dispatch(
    dispatcher: &Arc<Dispatcher>,
    in_flight: &Arc<Semaphore>,
    line: Vec<u8>,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), ReadEnd> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let permit = tokio::select! {
        _ = stop.as_mut() => return Err(ReadEnd::Stopped),
        permit = in_flight.clone().acquire_owned() => match permit {
            Ok(permit) => permit,
            // The semaphore is never closed; treat it like a dead connection rather than panic.
            Err(_) => return Err(ReadEnd::Closed),
        },
    };
    let dispatcher = dispatcher.clone();
    tokio::spawn(async move {
        let response = tokio::select! {
            // Nobody would read the answer.
            _ = dispatcher.sink.closed() => return,
            response = dispatcher.handle_line(&line) => response,
        };
        // Subscription responses were already sent by `accept()`; notifications get no reply.
        if response.is_method_call() || response.is_batch() {
            let success = response.is_success();
            let (json, on_sent, _) = response.into_parts();
            if dispatcher.sink.send(json).await.is_ok() {
                if let Some(on_sent) = on_sent {
                    on_sent.notify(success);
                }
            }
        }
        drop(permit);
    });
    Ok(())
}

/// Per-connection dispatch state: mirrors jsonrpsee's private `RpcService` with subscriptions enabled.
struct Dispatcher {
    methods: Methods,
    conn_id: ConnectionId,
    sink: MethodSink,
    subscriptions: BoundedSubscriptions,
    id_provider: Arc<dyn IdProvider>,
    max_response_size: usize,
    counter: Option<CallCounter>,
    /// Subscriptions served as bytes, and the writer's queue for them (their replies go there too, so
    /// that no notification overtakes the reply that names its subscription).
    raw: RawSubscriptions,
    raw_tx: mpsc::Sender<Vec<u8>>,
    /// This connection's raw subscriptions, by subscription id (as JSON).
    raw_streams: std::sync::Mutex<std::collections::HashMap<String, RawStream>>,
}

/// A raw subscription being pumped.
struct RawStream {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

type NotificationParams<'a> = Option<Cow<'a, RawValue>>;

impl Dispatcher {
    /// One line: a request, a notification, or a batch. `line` is never whitespace only.
    async fn handle_line(&self, line: &[u8]) -> MethodResponse {
        // Checked once for the whole line: serde_json does not validate strings it skips (ignored values,
        // raw params), and a line that is not UTF-8 is not JSON.
        if std::str::from_utf8(line).is_err() {
            return MethodResponse::error(Id::Null, ErrorObject::from(ErrorCode::ParseError));
        }
        let start = line
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(0);
        let body = &line[start..];
        match body.first() {
            Some(b'{') => self.handle_single(body).await,
            Some(b'[') => self.handle_batch(body).await,
            _ => MethodResponse::error(Id::Null, ErrorObject::from(ErrorCode::ParseError)),
        }
    }

    fn extensions(&self) -> Extensions {
        let mut extensions = Extensions::new();
        extensions.insert(self.conn_id);
        extensions
    }

    async fn handle_single(&self, body: &[u8]) -> MethodResponse {
        if let Ok(mut request) = serde_json::from_slice::<Request>(body) {
            request.extensions = self.extensions();
            self.call_single(request).await
        } else if let Ok(notification) =
            serde_json::from_slice::<Notification<NotificationParams>>(body)
        {
            self.notify(notification).await;
            MethodResponse::notification()
        } else {
            invalid_entry(body)
        }
    }

    async fn handle_batch(&self, body: &[u8]) -> MethodResponse {
        let Ok(entries) = serde_json::from_slice::<Vec<&RawValue>>(body) else {
            return MethodResponse::error(Id::Null, ErrorObject::from(ErrorCode::ParseError));
        };
        let mut batch = BatchResponseBuilder::new_with_limit(self.max_response_size);
        let mut got_notification = false;
        for entry in entries {
            let entry = entry.get();
            let response = if let Ok(mut request) = serde_json::from_str::<Request>(entry) {
                request.extensions = self.extensions();
                self.call(request).await
            } else if let Ok(notification) =
                serde_json::from_str::<Notification<NotificationParams>>(entry)
            {
                self.notify(notification).await;
                got_notification = true;
                continue;
            } else {
                invalid_entry(entry.as_bytes())
            };
            if let Err(too_large) = batch.append(response) {
                return too_large;
            }
        }
        if batch.is_empty() && got_notification {
            MethodResponse::notification()
        } else {
            // An empty batch becomes a single "Invalid request" error here.
            MethodResponse::from_batch(batch.finish())
        }
    }

    /// Runs a notification (a request without an id) and drops its result: JSON-RPC 2.0 forbids a reply,
    /// not the effect, so `{"method":"trigger",...}` without an id still triggers. A subscription cannot
    /// be made this way (nothing could address its notifications); unknown methods are ignored silently.
    async fn notify(&self, notification: Notification<'_, NotificationParams<'_>>) {
        let params = Params::new(notification.params.as_ref().map(|p| p.get()));
        let Some((_, callback)) = self.methods.method_with_name(&notification.method) else {
            return;
        };
        match callback {
            MethodCallback::Sync(callback) => {
                callback(Id::Null, params, self.max_response_size, self.extensions());
            }
            MethodCallback::Async(callback) => {
                callback(
                    Id::Null,
                    params.into_owned(),
                    self.conn_id,
                    self.max_response_size,
                    self.extensions(),
                )
                .await;
            }
            MethodCallback::Unsubscription(callback) => {
                callback(
                    Id::Null,
                    params,
                    self.conn_id,
                    self.max_response_size,
                    self.extensions(),
                );
            }
            MethodCallback::Subscription(_) => {}
        }
    }

    /// Runs a call that is not part of a batch: a raw subscription is opened or ended here, every other
    /// call as in a batch.
    async fn call_single(&self, request: Request<'_>) -> MethodResponse {
        let raw = self.raw.get(&request.method).cloned();
        let ends_raw = self.raw.is_unsubscribe(&request.method);
        if raw.is_none() && !ends_raw {
            return self.call(request).await;
        }
        let label = self.counter.as_ref().map(|c| c.label(&request.method));
        let response = match raw {
            Some(raw) => self.raw_subscribe(request, raw).await,
            None => match self.raw_unsubscribe(&request).await {
                Some(response) => response,
                // Not one of ours: jsonrpsee's own subscription, if it serves the method.
                None if self.methods.method_with_name(&request.method).is_some() => {
                    self.run_call(request).await
                }
                // A subscription that ended, or never was: false, as jsonrpsee answers.
                None => MethodResponse::response(
                    request.id.into_owned(),
                    ResponsePayload::success(false),
                    self.max_response_size,
                ),
            },
        };
        if let (Some(counter), Some(label)) = (self.counter.as_ref(), label) {
            counter.count(label, &response);
        }
        response
    }

    /// Opens a raw subscription: its reply, then its notifications, on the raw queue. The returned
    /// response is a subscription's (already sent, so `dispatch` sends nothing more).
    async fn raw_subscribe(&self, request: Request<'_>, raw: RawMethod) -> MethodResponse {
        let id = request.id.into_owned();
        let Some(permit) = self.subscriptions.acquire() else {
            return MethodResponse::error(
                id,
                crate::rpc::error::too_many_subscriptions(self.subscriptions.max()),
            );
        };
        let params = Params::new(request.params.as_deref().map(RawValue::get));
        let subscription = match (raw.open)(params) {
            Ok(subscription) => subscription,
            Err(error) => return MethodResponse::error(id, error),
        };
        let subscription_id = self.id_provider.next_id();
        let response = MethodResponse::subscription_response(
            id,
            ResponsePayload::success(&subscription_id),
            self.max_response_size,
        );
        if self.raw_tx.send(reply_line(&response)).await.is_err() {
            return response;
        }
        let frame = NotificationFrame::new(raw.notification, &subscription_id);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(pump_raw(
            subscription,
            frame,
            self.raw_tx.clone(),
            stopped,
            permit,
        ));
        let key = serde_json::to_string(&subscription_id).unwrap_or_default();
        let mut streams = self
            .raw_streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Ended streams leave their entry until the next subscribe: bounded by the subscription limit.
        streams.retain(|_, stream| !stream.task.is_finished());
        streams.insert(key, RawStream { stop, task });
        response
    }

    /// Ends a raw subscription of this connection named by `request` (`[id]` or `{"subscription": id}`);
    /// `None` when it names none. Answers once its last notification is queued, on the same queue: none
    /// follows the reply.
    async fn raw_unsubscribe(&self, request: &Request<'_>) -> Option<MethodResponse> {
        let positional = super::unsubscribe_params(&request.method, request.params.as_deref());
        let params = positional.as_deref().or(request.params.as_deref())?;
        let ids: Vec<SubscriptionId> = serde_json::from_str(params.get()).ok()?;
        let key = serde_json::to_string(ids.first()?).ok()?;
        let stream = self
            .raw_streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key)?;
        // False when the stream had already ended, as jsonrpsee answers for a subscription it no longer has.
        let was_live = stream.stop.send(()).is_ok();
        let _ = stream.task.await;
        let response = MethodResponse::subscription_response(
            request.id.clone().into_owned(),
            ResponsePayload::success(was_live),
            self.max_response_size,
        );
        let _ = self.raw_tx.send(reply_line(&response)).await;
        Some(response)
    }

    /// Runs one call and counts its answer.
    async fn call(&self, request: Request<'_>) -> MethodResponse {
        let Some(counter) = self.counter.as_ref() else {
            return self.run_call(request).await;
        };
        let label = counter.label(&request.method);
        let response = self.run_call(request).await;
        counter.count(label, &response);
        response
    }

    /// Runs one call; the limit errors jsonrpsee makes get typed data.
    async fn run_call(&self, request: Request<'_>) -> MethodResponse {
        let id = request.id.clone().into_owned();
        let limits = super::ReplyLimits {
            max_response_size: u32::try_from(self.max_response_size).unwrap_or(u32::MAX),
            max_subscriptions: self.subscriptions.max(),
        };
        super::with_typed_limit_errors(id, self.dispatch_call(request).await, limits)
    }

    async fn dispatch_call(&self, request: Request<'_>) -> MethodResponse {
        let Request {
            id,
            method,
            params,
            extensions,
            ..
        } = request;
        let positional = super::unsubscribe_params(&method, params.as_deref());
        let params = Params::new(
            positional
                .as_deref()
                .or(params.as_deref())
                .map(RawValue::get),
        );
        let Some((_, callback)) = self.methods.method_with_name(&method) else {
            return MethodResponse::error(id, ErrorObject::from(ErrorCode::MethodNotFound));
        };
        match callback {
            MethodCallback::Sync(callback) => {
                callback(id, params, self.max_response_size, extensions)
            }
            MethodCallback::Async(callback) => {
                let future = callback(
                    id.into_owned(),
                    params.into_owned(),
                    self.conn_id,
                    self.max_response_size,
                    extensions,
                );
                future.await
            }
            MethodCallback::Subscription(callback) => match self.subscriptions.acquire() {
                Some(subscription_permit) => {
                    let state = SubscriptionState {
                        conn_id: self.conn_id,
                        id_provider: &*self.id_provider,
                        subscription_permit,
                    };
                    callback(id, params, self.sink.clone(), state, extensions).await
                }
                None => MethodResponse::error(
                    id,
                    crate::rpc::error::too_many_subscriptions(self.subscriptions.max()),
                ),
            },
            // Unsubscribing is never limited.
            MethodCallback::Unsubscription(callback) => {
                callback(id, params, self.conn_id, self.max_response_size, extensions)
            }
        }
    }
}

/// A reply as one line of the raw queue.
fn reply_line(response: &MethodResponse) -> Vec<u8> {
    let mut line = Vec::new();
    append_line(&mut line, response.as_json());
    line
}

/// Writes a raw subscription's notifications to the connection's raw queue until the stream ends, it is
/// unsubscribed, or the writer is gone. Holds its slot of the connection's subscription limit meanwhile.
async fn pump_raw(
    mut subscription: Box<dyn RawSubscription>,
    frame: NotificationFrame,
    queue: mpsc::Sender<Vec<u8>>,
    stop: oneshot::Receiver<()>,
    _permit: SubscriptionPermit,
) {
    // Only an unsubscribe stops it: the connection's dispatcher (which holds the sender) goes away at the
    // peer's end of input, and a half-closed connection still streams.
    let stop = async move {
        if stop.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(stop);
    loop {
        let mut buf = Vec::with_capacity(RAW_BATCH);
        let more = tokio::select! {
            biased;
            _ = &mut stop => return,
            () = queue.closed() => return,
            more = subscription.fill(&frame, &mut buf, RAW_BATCH) => more,
        };
        if !buf.is_empty() {
            tokio::select! {
                biased;
                _ = &mut stop => return,
                sent = queue.send(buf) => if sent.is_err() {
                    return;
                },
            }
        }
        if !more {
            return;
        }
    }
}

/// The reply to something that is not a valid request: "Invalid request" (with its id when one can be
/// read) if it is well-formed JSON, "Parse error" otherwise — as the JSON-RPC 2.0 specification's examples
/// require (jsonrpsee itself answers `{"method": 1}` with a parse error).
fn invalid_entry(body: &[u8]) -> MethodResponse {
    if serde_json::from_slice::<IgnoredAny>(body).is_err() {
        return MethodResponse::error(Id::Null, ErrorObject::from(ErrorCode::ParseError));
    }
    let id = serde_json::from_slice::<InvalidRequest>(body)
        .map(|r| r.id)
        .unwrap_or(Id::Null);
    MethodResponse::error(id, ErrorObject::from(ErrorCode::InvalidRequest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_assembles_lines_across_reads() {
        let (mut line, mut discarding) = (Vec::new(), false);
        let (n, ev) = scan(b"{\"a\":", &mut line, &mut discarding, 100);
        assert_eq!((n, ev.is_none()), (5, true));
        let (n, ev) = scan(b"1}\n{", &mut line, &mut discarding, 100);
        assert_eq!(n, 3);
        assert!(matches!(ev, Some(LineEvent::Complete)));
        assert_eq!(line, b"{\"a\":1}");
    }

    #[test]
    fn scan_drops_an_oversized_line_and_skips_its_rest() {
        let (mut line, mut discarding) = (Vec::new(), false);
        let (_, ev) = scan(b"0123456789", &mut line, &mut discarding, 8);
        assert!(matches!(ev, Some(LineEvent::TooLarge)));
        assert!(discarding && line.capacity() == 0);
        let (n, ev) = scan(b"more bytes", &mut line, &mut discarding, 8);
        assert_eq!((n, ev.is_none(), discarding), (10, true, true));
        let (n, ev) = scan(b"end\nnext", &mut line, &mut discarding, 8);
        assert_eq!((n, ev.is_none(), discarding), (4, true, false));
        let (_, ev) = scan(b"{}\n", &mut line, &mut discarding, 8);
        assert!(matches!(ev, Some(LineEvent::Complete)));
        assert_eq!(line, b"{}");
    }

    #[test]
    fn scan_rejects_a_complete_line_over_the_limit() {
        let (mut line, mut discarding) = (Vec::new(), false);
        let (n, ev) = scan(b"123456789\n", &mut line, &mut discarding, 8);
        assert_eq!(n, 10);
        assert!(matches!(ev, Some(LineEvent::TooLarge)));
        assert!(!discarding);
    }

    #[test]
    fn a_message_with_raw_line_feeds_stays_on_one_line() {
        let pretty = RawValue::from_string("{\n  \"a\": \"x\\ny\"\n}".to_owned()).unwrap();
        let mut buf = Vec::new();
        append_line(&mut buf, &pretty);
        assert_eq!(buf, b"{   \"a\": \"x\\ny\" }\n");
        let value: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(value["a"], "x\ny");
    }

    #[test]
    fn invalid_entries_are_told_apart_from_garbage() {
        let code = |body: &[u8]| invalid_entry(body).as_error_code();
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","method":1,"params":"bar"}"#),
            Some(-32600)
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","method":"x","params":"bar","baz]"#),
            Some(-32700)
        );
        assert_eq!(code(b"1"), Some(-32600));
        // Deeply nested but well-formed: not a request (serde_json skips it without recursing).
        let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code(nested.as_bytes()), Some(-32600));
        let response = invalid_entry(br#"{"jsonrpc":"1.0","id":7,"method":"x"}"#);
        assert!(response.as_json().get().contains(r#""id":7"#));
    }
}
