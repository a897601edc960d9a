//! A JSON-RPC 2.0 client of the daemon: the one `herdctl` uses, and the tests and the bench with it.
//!
//! Owns: connecting over the socket's newline-delimited JSON framing (with a message that tells a missing
//! daemon from a stale socket from a permission problem), request ids, matching responses to requests, and
//! holding notifications that arrive while a call waits. Knows nothing about what the methods mean. The
//! socket's other framings (WebSocket, HTTP; the tests speak them) plug in as a [`Framing`].
//!
//! API: [`Client::connect`] (NDJSON), [`Client::new`] (any framing), [`Client::call`],
//! [`Client::subscribe`], [`Client::next_notification`]; errors are [`ClientError`], a server's error object
//! is [`RpcError`].

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::PathBuf;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// An error object the server answered with.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no daemon listening on {} (no such socket) — start it with `herdctld --config …`, or point herdctl at the socket herdctld printed (--socket PATH or HERDCTL_SOCKET)",
        display_paths(.tried)
    )]
    NoSocket { tried: Vec<PathBuf> },
    #[error(
        "no daemon listening on {} (connection refused: the socket is stale) — start it with `herdctld --config …`",
        .path.display()
    )]
    Refused { path: PathBuf },
    #[error(
        "permission denied connecting to {} — the daemon runs as another user; run herdctl as that user, or start the daemon with --socket-mode 0660 and join the socket's group",
        .path.display()
    )]
    Denied { path: PathBuf },
    #[error("cannot connect to {}: {source}", .path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("lost the connection to the daemon: {0}")]
    Io(#[from] io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("unexpected reply from the daemon: {0}")]
    Protocol(String),
    #[error("{}", .0.message)]
    Rpc(RpcError),
}

/// A subscription notification: `{"method": M, "params": {"subscription": S, "result": R}}`.
#[derive(Debug, Clone)]
pub struct Notification {
    pub method: String,
    pub subscription: Value,
    pub result: Value,
}

/// How messages travel on one connection. [`Ndjson`] is the socket's own framing; a framing must deliver
/// whole messages in order.
pub trait Framing: Send {
    /// Sends one message, a JSON text.
    fn send(&mut self, message: &str) -> impl Future<Output = io::Result<()>> + Send;
    /// The next message, or `None` once the daemon closed the connection. Must be cancel-safe (a message
    /// is never half consumed): [`Client::next_notification`] is used in `select!`.
    fn recv(&mut self) -> impl Future<Output = io::Result<Option<String>>> + Send;
}

/// Newline-delimited JSON on the Unix socket: one message a line.
pub struct Ndjson {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Ndjson {
    pub fn new(stream: UnixStream) -> Ndjson {
        let (reader, writer) = stream.into_split();
        Ndjson {
            lines: BufReader::new(reader).lines(),
            writer,
        }
    }
}

impl Framing for Ndjson {
    async fn send(&mut self, message: &str) -> io::Result<()> {
        let mut line = String::with_capacity(message.len() + 1);
        line.push_str(message);
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await
    }

    async fn recv(&mut self) -> io::Result<Option<String>> {
        // `next_line` is cancel-safe: a partial line stays buffered.
        self.lines.next_line().await
    }
}

/// One connection to the daemon.
pub struct Client<F = Ndjson> {
    framing: F,
    next_id: u64,
    /// Notifications that arrived while a call was waiting for its response.
    held: VecDeque<Notification>,
}

/// `a`, `a or b`, `a, b or c`: the sockets a [`ClientError::NoSocket`] tried, in order.
fn display_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    match shown.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

impl Client {
    /// Connects over NDJSON to the first of `candidates` that exists, in order. A missing socket moves on to
    /// the next candidate; any other failure (stale, permission) is about a socket that is there and is
    /// reported for it, so an operator sees why the daemon they meant did not answer. If none exists, the
    /// error names every path tried.
    pub async fn connect(candidates: &[PathBuf]) -> Result<Client, ClientError> {
        let mut stream = None;
        for path in candidates {
            match UnixStream::connect(path).await {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(source) if source.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    let path = path.clone();
                    return Err(match source.kind() {
                        io::ErrorKind::ConnectionRefused => ClientError::Refused { path },
                        io::ErrorKind::PermissionDenied => ClientError::Denied { path },
                        _ => ClientError::Connect { path, source },
                    });
                }
            }
        }
        let stream = stream.ok_or_else(|| ClientError::NoSocket {
            tried: candidates.to_vec(),
        })?;
        Ok(Client::new(Ndjson::new(stream)))
    }
}

impl<F: Framing> Client<F> {
    /// A client on a connection already made.
    pub fn new(framing: F) -> Client<F> {
        Client {
            framing,
            next_id: 1,
            held: VecDeque::new(),
        }
    }

    /// Calls `method` with named `params` and waits for its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if !params.is_null() {
            request["params"] = params;
        }
        self.framing.send(&request.to_string()).await?;
        loop {
            let message = self.read_message().await?.ok_or(ClientError::Closed)?;
            if let Some(notification) = as_notification(&message) {
                self.held.push_back(notification);
                continue;
            }
            // A null id answers a request the server could not attribute (e.g. a refused peer).
            let matches = message.get("id").is_some_and(|v| v == id || v.is_null());
            if !matches {
                continue;
            }
            if let Some(error) = message.get("error") {
                return Err(ClientError::Rpc(RpcError {
                    code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("error without a message")
                        .to_owned(),
                    data: error.get("data").cloned(),
                }));
            }
            return message
                .get("result")
                .cloned()
                .ok_or_else(|| ClientError::Protocol(format!("no result in {message}")));
        }
    }

    /// Subscribes; returns the subscription id. Its notifications then come from [`Self::next_notification`].
    pub async fn subscribe(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.call(method, params).await
    }

    /// The next notification, or `None` when the daemon closed the connection. Cancel-safe: a line is never
    /// half consumed, so this can sit in a `select!` against a timer or Ctrl-C.
    pub async fn next_notification(&mut self) -> Result<Option<Notification>, ClientError> {
        if let Some(held) = self.held.pop_front() {
            return Ok(Some(held));
        }
        loop {
            let Some(message) = self.read_message().await? else {
                return Ok(None);
            };
            if let Some(notification) = as_notification(&message) {
                return Ok(Some(notification));
            }
        }
    }

    async fn read_message(&mut self) -> Result<Option<Value>, ClientError> {
        loop {
            let Some(line) = self.framing.recv().await? else {
                return Ok(None);
            };
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| ClientError::Protocol(format!("{e} in {line:.200}")));
        }
    }
}

fn as_notification(message: &Value) -> Option<Notification> {
    if message.get("id").is_some() {
        return None;
    }
    let method = message.get("method")?.as_str()?.to_owned();
    let params = message.get("params")?;
    Some(Notification {
        method,
        subscription: params.get("subscription").cloned().unwrap_or(Value::Null),
        result: params.get("result").cloned().unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_told_from_responses() {
        let notification = json!({"jsonrpc": "2.0", "method": "log",
            "params": {"subscription": 7, "result": {"message": "hi"}}});
        let parsed = as_notification(&notification).unwrap();
        assert_eq!(parsed.method, "log");
        assert_eq!(parsed.subscription, 7);
        assert_eq!(parsed.result["message"], "hi");
        assert!(as_notification(&json!({"jsonrpc": "2.0", "id": 1, "result": 3})).is_none());
    }

    #[tokio::test]
    async fn connect_errors_name_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.sock");
        let err = Client::connect(std::slice::from_ref(&missing))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::NoSocket { .. }), "{err:?}");
        assert!(err.to_string().contains("no daemon listening on"));

        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let err = Client::connect(std::slice::from_ref(&stale))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Refused { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn connect_takes_the_first_socket_that_exists_and_names_all_it_tried() {
        let dir = tempfile::tempdir().unwrap();
        let [first, second, third] = ["a.sock", "b.sock", "c.sock"].map(|n| dir.path().join(n));
        let err = Client::connect(&[first.clone(), second.clone(), third.clone()])
            .await
            .err()
            .unwrap();
        let message = err.to_string();
        assert!(
            message.contains(&format!(
                "no daemon listening on {}, {} or {} (no such socket)",
                first.display(),
                second.display(),
                third.display()
            )),
            "{message}"
        );

        // Only the second exists: the missing first is skipped, the third never tried.
        let _listener = tokio::net::UnixListener::bind(&second).unwrap();
        assert!(Client::connect(&[first.clone(), second.clone(), third])
            .await
            .is_ok());

        // A socket that is there but stale is reported as such rather than skipped.
        drop(std::os::unix::net::UnixListener::bind(&first).unwrap());
        let err = Client::connect(&[first, second]).await.err().unwrap();
        assert!(matches!(err, ClientError::Refused { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn calls_match_ids_and_hold_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (reader, mut writer) = stream.into_split();
            let mut lines = BufReader::new(reader).lines();
            let request: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            assert_eq!(request["method"], "streamLogs");
            let id = request["id"].clone();
            let reply = format!(
                "{}\n{}\n",
                json!({"jsonrpc": "2.0", "method": "log", "params": {"subscription": 1, "result": "early"}}),
                json!({"jsonrpc": "2.0", "id": id, "result": 1}),
            );
            writer.write_all(reply.as_bytes()).await.unwrap();
            let request: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            let reply = json!({"jsonrpc": "2.0", "id": request["id"],
                "error": {"code": 1002, "message": "agent \"x\" not found", "data": {"code": "AGENT_NOT_FOUND"}}});
            writer
                .write_all(format!("{reply}\n").as_bytes())
                .await
                .unwrap();
        });
        let mut client = Client::connect(std::slice::from_ref(&path)).await.unwrap();
        assert_eq!(client.subscribe("streamLogs", json!({})).await.unwrap(), 1);
        let early = client.next_notification().await.unwrap().unwrap();
        assert_eq!(early.result, "early");
        match client.call("getAgent", json!({"name": "x"})).await {
            Err(ClientError::Rpc(e)) => {
                assert_eq!(e.code, 1002);
                assert_eq!(e.data.unwrap()["code"], "AGENT_NOT_FOUND");
            }
            other => panic!("expected an rpc error, got {other:?}"),
        }
        server.await.unwrap();
        assert!(client.next_notification().await.unwrap().is_none());
    }
}
