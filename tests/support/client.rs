//! The tests' client: the library's `herdctld::rpc::client::Client` (the one `herdctl` uses), over any of
//! the socket's framings, with calls that fail the test instead of returning errors. The JSON-RPC part —
//! ids, matching replies, holding notifications — is the library's; this adds the WebSocket and HTTP
//! framings, deadlines and a stash of notifications by subscription.
//!
//! [`RawNdjson`] is not a client: it writes and reads lines as they are, for tests of what the daemon does
//! with bytes no client would send.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herdctld::rpc::client::{self as rpc, ClientError, Notification};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use super::{http_post, REPLY_TIMEOUT};

/// The socket's framings (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Ndjson,
    WebSocket,
    Http,
}

type WsSender = soketto::connection::Sender<Compat<UnixStream>>;
type WsReceiver = soketto::connection::Receiver<Compat<UnixStream>>;

/// One connection in one framing, as the library client's transport.
pub enum Connection {
    Ndjson(rpc::Ndjson),
    /// A task reads messages into `incoming`: soketto's `receive_data` is not cancel-safe, and the
    /// client's reads must be. A receive error ends the channel after being printed. The channel is
    /// small, so that a test that does not read stops reading the socket, as over NDJSON (a slow reader).
    WebSocket {
        sender: WsSender,
        incoming: tokio::sync::mpsc::Receiver<String>,
    },
    /// HTTP answers each message on a connection of its own (`Connection: close`); the replies wait here
    /// to be received. A notification has none.
    Http {
        socket: PathBuf,
        replies: VecDeque<String>,
    },
}

impl Connection {
    pub async fn connect(socket: &Path, framing: Framing) -> Connection {
        match framing {
            Framing::Ndjson => {
                Connection::Ndjson(rpc::Ndjson::new(UnixStream::connect(socket).await.unwrap()))
            }
            Framing::WebSocket => {
                let stream = UnixStream::connect(socket).await.unwrap().compat();
                let mut handshake = soketto::handshake::Client::new(stream, "localhost", "/");
                match handshake.handshake().await.unwrap() {
                    soketto::handshake::ServerResponse::Accepted { .. } => {}
                    other => panic!("websocket handshake refused: {other:?}"),
                }
                let (sender, receiver) = handshake.into_builder().finish();
                let (forward, incoming) = tokio::sync::mpsc::channel(WEBSOCKET_READ_AHEAD);
                tokio::spawn(read_websocket(receiver, forward));
                Connection::WebSocket { sender, incoming }
            }
            Framing::Http => Connection::Http {
                socket: socket.to_owned(),
                replies: VecDeque::new(),
            },
        }
    }
}

impl rpc::Framing for Connection {
    async fn send(&mut self, message: &str) -> io::Result<()> {
        match self {
            Connection::Ndjson(ndjson) => ndjson.send(message).await,
            Connection::WebSocket { sender, .. } => {
                sender.send_text(message).await.map_err(io::Error::other)?;
                sender.flush().await.map_err(io::Error::other)
            }
            Connection::Http { socket, replies } => {
                let (_, body) = http_post(socket, message).await;
                if !body.trim().is_empty() {
                    replies.push_back(body);
                }
                Ok(())
            }
        }
    }

    async fn recv(&mut self) -> io::Result<Option<String>> {
        match self {
            Connection::Ndjson(ndjson) => ndjson.recv().await,
            Connection::WebSocket { incoming, .. } => Ok(incoming.recv().await),
            // Nothing comes unasked over HTTP: no reply waiting is the end of what there is.
            Connection::Http { replies, .. } => Ok(replies.pop_front()),
        }
    }
}

/// Messages a WebSocket connection reads ahead of the test.
const WEBSOCKET_READ_AHEAD: usize = 16;

async fn read_websocket(mut receiver: WsReceiver, forward: tokio::sync::mpsc::Sender<String>) {
    loop {
        let mut data = Vec::new();
        match receiver.receive_data(&mut data).await {
            Ok(_) => {
                if forward
                    .send(String::from_utf8(data).unwrap())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(soketto::connection::Error::Closed) => return,
            Err(e) => {
                eprintln!("websocket receive failed: {e}");
                return;
            }
        }
    }
}

/// One client connection. Notifications of other subscriptions met while waiting for one are kept for
/// later [`Client::notification`]s.
pub struct Client {
    pub framing: Framing,
    client: rpc::Client<Connection>,
    stash: VecDeque<Notification>,
    /// What this client checked against `openrpc.json` (see `schema.rs`).
    checked: BTreeSet<String>,
}

impl Client {
    pub async fn connect(socket: &Path, framing: Framing) -> Client {
        Client {
            framing,
            client: rpc::Client::new(Connection::connect(socket, framing).await),
            stash: VecDeque::new(),
            checked: BTreeSet::new(),
        }
    }

    /// The methods, notifications (`notification:NAME`, with the kinds of item: `event/TYPE`, …) and error
    /// data (`error:CODE`) this client received and checked against `proto-docs/openrpc.json`.
    pub fn checked(&self) -> &BTreeSet<String> {
        &self.checked
    }

    /// The result, or the error object as the daemon sent it.
    pub async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let call = tokio::time::timeout(REPLY_TIMEOUT, self.client.call(method, params.clone()));
        match call.await {
            Err(_) => panic!(
                "no reply to {method}({params}) over {:?} within {REPLY_TIMEOUT:?}",
                self.framing
            ),
            Ok(Ok(result)) => {
                self.checked
                    .insert(super::schema::check_result(method, &result));
                Ok(result)
            }
            Ok(Err(ClientError::Rpc(error))) => {
                let mut object = json!({"code": error.code, "message": error.message});
                if let Some(data) = error.data {
                    object["data"] = data;
                }
                self.checked.extend(super::schema::check_error(&object));
                Err(object)
            }
            Ok(Err(e)) => panic!("{method}({params}) over {:?}: {e}", self.framing),
        }
    }

    /// The result of a call; fails the test on an error reply.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params.clone()).await {
            Ok(result) => result,
            Err(error) => panic!("{method}({params}) over {:?} failed: {error}", self.framing),
        }
    }

    /// The error object of a call; fails the test on success.
    pub async fn call_err(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params.clone()).await {
            Err(error) => error,
            Ok(result) => panic!(
                "{method}({params}) over {:?} should fail, got {result}",
                self.framing
            ),
        }
    }

    /// Subscribes; returns the subscription id.
    pub async fn subscribe(&mut self, method: &str, params: Value) -> Value {
        self.call(method, params).await
    }

    /// Unsubscribes and asserts it worked. jsonrpsee 0.26 sends the subscribe reply *before* it registers
    /// the subscription (`PendingSubscriptionSink::accept`), so an unsubscribe sent the instant the reply
    /// arrives can get `false`; retry briefly instead of failing on that known race.
    pub async fn unsubscribe(&mut self, method: &str, subscription: &Value) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.call(method, json!([subscription])).await != json!(true) {
            assert!(
                Instant::now() < deadline,
                "{method}({subscription}) never returned true"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The next notification not yet stashed, or `None` if none arrives within `timeout` (or the
    /// connection closed).
    async fn next_within(&mut self, timeout: Duration) -> Option<Notification> {
        let next = match tokio::time::timeout(timeout, self.client.next_notification()).await {
            Err(_) => None,
            Ok(next) => next.unwrap_or_else(|e| panic!("reading notifications: {e}")),
        };
        if let Some(notification) = &next {
            self.checked.extend(super::schema::check_notification(
                &notification.method,
                &notification.result,
            ));
        }
        next
    }

    /// Every notification already received (stashed, or held while a call waited), checked, without
    /// waiting for more. After an unsubscribe reply, that is every notification the subscription had.
    pub async fn received(&mut self) -> Vec<Notification> {
        let mut notifications: Vec<Notification> = self.stash.drain(..).collect();
        // A zero timeout still polls once: what is held or already readable comes, nothing is awaited.
        while let Some(next) = self.next_within(Duration::ZERO).await {
            notifications.push(next);
        }
        notifications
    }

    /// The `result` of the next notification of `subscription`; other notifications stay stashed.
    pub async fn notification(&mut self, subscription: &Value) -> Value {
        if let Some(index) = self
            .stash
            .iter()
            .position(|n| n.subscription == *subscription)
        {
            return self
                .stash
                .remove(index)
                .map(|n| n.result)
                .unwrap_or_default();
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let next = self.next_within(remaining).await.unwrap_or_else(|| {
                panic!("no notification for subscription {subscription} in time")
            });
            if next.subscription == *subscription {
                return next.result;
            }
            self.stash.push_back(next);
        }
    }

    /// Every notification stashed plus whatever arrives until `quiet` passes without one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Notification> {
        let mut notifications: Vec<Notification> = self.stash.drain(..).collect();
        while let Some(next) = self.next_within(quiet).await {
            notifications.push(next);
        }
        notifications
    }
}

/// An NDJSON connection written and read as bytes and lines, for what no client would send: garbage,
/// batches, notifications, a line of 100 MB. Not a client: it keeps no ids and matches nothing.
pub struct RawNdjson {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl RawNdjson {
    pub async fn connect(socket: &Path) -> RawNdjson {
        let (reader, writer) = UnixStream::connect(socket).await.unwrap().into_split();
        RawNdjson {
            lines: BufReader::new(reader).lines(),
            writer,
        }
    }

    /// Writes `bytes` as they are.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Writes `text` and a newline.
    pub async fn send(&mut self, text: &str) {
        self.write(format!("{text}\n").as_bytes()).await;
    }

    /// The next line, `None` on EOF or after `timeout`.
    pub async fn recv_line_within(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .ok()
            .and_then(|line| line.ok().flatten())
    }

    /// The next line, parsed; fails the test after [`REPLY_TIMEOUT`].
    pub async fn recv(&mut self) -> Value {
        let line = self
            .recv_line_within(REPLY_TIMEOUT)
            .await
            .expect("no line in time (or the connection closed)");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("line {line:?} is not JSON: {e}"))
    }

    /// Sends one line and returns the one reply line, parsed.
    pub async fn exchange(&mut self, line: &str) -> Value {
        self.send(line).await;
        self.recv().await
    }
}
