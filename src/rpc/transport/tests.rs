//! End-to-end tests of `serve` on a temporary socket with a small test-only RpcModule.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonrpsee::server::{RpcModule, SubscriptionMessage};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::raw::{NotificationFrame, RawSubscription, RawSubscriptions};
use super::{serve, ServeReport, TransportConfig};
use crate::rpc::error::{error_object, ErrorData};

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct TestContext {
    active_subscriptions: AtomicUsize,
    /// Raw (`countRaw`) subscriptions that exist.
    raw_subscriptions: AtomicUsize,
    /// Calls of `sleep` that have begun sleeping: tells a test that a call is in flight.
    sleeping_calls: AtomicUsize,
}

fn subtract(params: Params) -> Result<i64, ErrorObjectOwned> {
    #[derive(serde::Deserialize)]
    struct Named {
        minuend: i64,
        subtrahend: i64,
    }
    if params.is_object() {
        let named: Named = params.parse()?;
        Ok(named.minuend - named.subtrahend)
    } else {
        let (minuend, subtrahend): (i64, i64) = params.parse()?;
        Ok(minuend - subtrahend)
    }
}

fn test_module() -> (RpcModule<TestContext>, Arc<TestContext>) {
    let context = Arc::new(TestContext::default());
    let mut module = RpcModule::from_arc(context.clone());
    module
        .register_method("echo", |params, _, _| params.parse::<Value>())
        .unwrap();
    module
        .register_method("subtract", |params, _, _| subtract(params))
        .unwrap();
    module
        .register_method("sum", |params, _, _| {
            params.parse::<Vec<i64>>().map(|v| v.iter().sum::<i64>())
        })
        .unwrap();
    module
        .register_method("notify_hello", |_, _, _| "hello")
        .unwrap();
    module
        .register_method("get_data", |_, _, _| json!(["hello", 5]))
        .unwrap();
    module
        .register_method("fail", |_, _, _| {
            Err::<(), _>(error_object(
                "job 'j' not found",
                ErrorData::JobNotFound { job_id: "j".into() },
            ))
        })
        .unwrap();
    module
        .register_async_method("sleep", |params, ctx, _| async move {
            let ms: u64 = params.one().unwrap_or(0);
            ctx.sleeping_calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            "slept"
        })
        .unwrap();
    module
        .register_method("activeSubscriptions", |_, ctx: &TestContext, _| {
            ctx.active_subscriptions.load(Ordering::SeqCst)
        })
        .unwrap();
    module
        .register_subscription("subscribeTicks", "tick", "unsubscribeTicks", |params, pending, ctx, _| async move {
            let interval_ms: u64 = params.one().unwrap_or(20);
            let sink = pending.accept().await?;
            ctx.active_subscriptions.fetch_add(1, Ordering::SeqCst);
            let mut count = 0u64;
            loop {
                tokio::select! {
                    _ = sink.closed() => break,
                    _ = tokio::time::sleep(Duration::from_millis(interval_ms)) => {
                        let message = SubscriptionMessage::new(sink.method_name(), sink.subscription_id(), &count)?;
                        if sink.send(message).await.is_err() {
                            break;
                        }
                        count += 1;
                    }
                }
            }
            ctx.active_subscriptions.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
    (module, context)
}

/// `countRaw {count?, hold?}`: the numbers from 0 (to `count`, else without end) as notifications written
/// as bytes; `hold` writes none and never ends.
struct Counting {
    next: u64,
    end: Option<u64>,
    hold: bool,
    context: Arc<TestContext>,
}

impl RawSubscription for Counting {
    fn fill<'a>(
        &'a mut self,
        frame: &'a NotificationFrame,
        out: &'a mut Vec<u8>,
        max_bytes: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            if self.hold {
                std::future::pending::<()>().await;
            }
            while out.len() < max_bytes {
                if self.end.is_some_and(|end| self.next >= end) {
                    return false;
                }
                frame.write(out, self.next.to_string().as_bytes());
                self.next += 1;
            }
            // A fast stream still lets others run between its buffers.
            tokio::task::yield_now().await;
            true
        })
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.context
            .raw_subscriptions
            .fetch_sub(1, Ordering::SeqCst);
    }
}

fn raw_subscriptions(context: Arc<TestContext>) -> RawSubscriptions {
    let mut raw = RawSubscriptions::default();
    raw.register(
        "countRaw",
        "count",
        "unsubscribeCount",
        Arc::new(move |params: Params<'_>| {
            #[derive(serde::Deserialize, Default)]
            struct CountParams {
                count: Option<u64>,
                #[serde(default)]
                hold: bool,
            }
            let p: CountParams = if params.as_str().is_some() {
                params.parse()?
            } else {
                CountParams::default()
            };
            context.raw_subscriptions.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Counting {
                next: 0,
                end: p.count,
                hold: p.hold,
                context: context.clone(),
            }) as Box<dyn RawSubscription>)
        }),
    );
    raw
}

struct TestServer {
    path: PathBuf,
    context: Arc<TestContext>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<ServeReport>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start(cfg: TransportConfig) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (module, context) = test_module();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            module,
            raw_subscriptions(context.clone()),
            cfg,
            async move {
                let _ = stop.await;
            },
        ));
        TestServer {
            path,
            context,
            shutdown: Some(shutdown),
            task,
            _dir: dir,
        }
    }

    async fn stop(mut self) -> ServeReport {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(REPLY_TIMEOUT, self.task)
            .await
            .unwrap()
            .unwrap()
    }

    async fn ndjson(&self) -> Client {
        Client::connect(&self.path).await
    }

    async fn wait_for_active_subscriptions(&self, expected: usize) {
        Self::wait_for(
            &self.context.active_subscriptions,
            expected,
            "active subscriptions",
        )
        .await;
    }

    async fn wait_for_raw_subscriptions(&self, expected: usize) {
        Self::wait_for(
            &self.context.raw_subscriptions,
            expected,
            "raw subscriptions",
        )
        .await;
    }

    async fn wait_for_sleeping_calls(&self, expected: usize) {
        Self::wait_for(&self.context.sleeping_calls, expected, "sleeping calls").await;
    }

    async fn wait_for(counter: &AtomicUsize, expected: usize, what: &str) {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while counter.load(Ordering::SeqCst) != expected {
            assert!(Instant::now() < deadline, "{what} never became {expected}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct Client {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Client {
    async fn connect(path: &Path) -> Client {
        let (reader, writer) = UnixStream::connect(path).await.unwrap().into_split();
        Client {
            lines: BufReader::new(reader).lines(),
            writer,
        }
    }

    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Value {
        let line = self
            .recv_line()
            .await
            .expect("connection closed while waiting for a reply");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"))
    }

    async fn recv_line(&mut self) -> Option<String> {
        tokio::time::timeout(REPLY_TIMEOUT, self.lines.next_line())
            .await
            .expect("no reply in time")
            .unwrap()
    }

    async fn call(&mut self, line: &str) -> Value {
        self.send(line).await;
        self.recv().await
    }
}

/// The JSON-RPC 2.0 specification's error messages capitalise "Invalid Request"; jsonrpsee (and so all our
/// framings) says "Invalid request". Compare messages case-insensitively, everything else exactly.
fn normalized(mut value: Value) -> Value {
    match &mut value {
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = normalized(item.take());
            }
        }
        Value::Object(fields) => {
            if let Some(Value::Object(error)) = fields.get_mut("error") {
                if let Some(Value::String(message)) = error.get_mut("message") {
                    *message = message.to_lowercase();
                }
            }
        }
        _ => {}
    }
    value
}

fn compact(json_text: &str) -> String {
    // The spec writes some requests over several lines; NDJSON needs one line. Invalid JSON is kept as is.
    match serde_json::from_str::<Value>(json_text) {
        Ok(value) => value.to_string(),
        Err(_) => json_text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

#[tokio::test]
async fn every_example_of_the_json_rpc_specification_over_ndjson() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut client = server.ndjson().await;
    // Verbatim from https://www.jsonrpc.org/specification#examples; None = no reply expected.
    let examples: &[(&str, Option<&str>)] = &[
        (
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#,
            Some(r#"{"jsonrpc": "2.0", "result": 19, "id": 1}"#),
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}"#,
            Some(r#"{"jsonrpc": "2.0", "result": -19, "id": 2}"#),
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}"#,
            Some(r#"{"jsonrpc": "2.0", "result": 19, "id": 3}"#),
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}"#,
            Some(r#"{"jsonrpc": "2.0", "result": 19, "id": 4}"#),
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}"#,
            None,
        ),
        (r#"{"jsonrpc": "2.0", "method": "foobar"}"#, None),
        (
            r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#,
            Some(
                r#"{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}"#,
            ),
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#,
            Some(
                r#"{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}"#,
            ),
        ),
        (
            r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
            Some(
                r#"{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}"#,
            ),
        ),
        (
            r#"[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]"#,
            Some(
                r#"{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}"#,
            ),
        ),
        (
            "[]",
            Some(
                r#"{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}"#,
            ),
        ),
        (
            "[1]",
            Some(
                r#"[
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}
]"#,
            ),
        ),
        (
            "[1,2,3]",
            Some(
                r#"[
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}
]"#,
            ),
        ),
        (
            r#"[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"#,
            Some(
                r#"[
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
    ]"#,
            ),
        ),
        (
            r#"[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]"#,
            None,
        ),
    ];
    for (request, expected) in examples {
        client.send(&compact(request)).await;
        if let Some(expected) = expected {
            let expected: Value = serde_json::from_str(expected).unwrap();
            assert_eq!(
                normalized(client.recv().await),
                normalized(expected),
                "reply to {request}"
            );
        }
    }
    // Nothing was sent for the notifications: the next line is the reply to this call.
    let marker = client
        .call(r#"{"jsonrpc":"2.0","id":"last","method":"echo","params":["x"]}"#)
        .await;
    assert_eq!(
        marker,
        json!({"jsonrpc": "2.0", "id": "last", "result": ["x"]})
    );
    server.stop().await;
}

#[tokio::test]
async fn domain_errors_keep_their_data() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut client = server.ndjson().await;
    let reply = client
        .call(r#"{"jsonrpc":"2.0","id":1,"method":"fail"}"#)
        .await;
    assert_eq!(
        reply["error"],
        json!({"code": 1003, "message": "job 'j' not found", "data": {"code": "JOB_NOT_FOUND", "jobId": "j"}})
    );
    server.stop().await;
}

#[tokio::test]
async fn leading_whitespace_and_blank_lines_are_ignored() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut client = server.ndjson().await;
    client.send("\n  \n").await;
    let reply = client
        .call(r#"  {"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}"#)
        .await;
    assert_eq!(reply["result"], json!([1]));
    server.stop().await;
}

#[tokio::test]
async fn batch_with_a_subscription_answers_both_and_streams() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut client = server.ndjson().await;
    client
        .send(r#"[{"jsonrpc":"2.0","id":1,"method":"subscribeTicks","params":[5]},{"jsonrpc":"2.0","id":2,"method":"echo","params":[2]}]"#)
        .await;
    let (mut batch, mut ticks) = (None, 0);
    while batch.is_none() || ticks < 2 {
        let message = client.recv().await;
        match &message {
            Value::Array(_) => batch = Some(message),
            Value::Object(fields) if fields.get("method") == Some(&json!("tick")) => ticks += 1,
            // jsonrpsee's accept() also sends the subscription's response on its own line (as over WS).
            Value::Object(fields) => assert_eq!(fields["id"], json!(1)),
            other => panic!("unexpected {other}"),
        }
    }
    let batch = batch.unwrap();
    let subscription = &batch[0]["result"];
    assert!(subscription.is_u64(), "subscription id in {batch}");
    assert_eq!(batch[1], json!({"jsonrpc": "2.0", "id": 2, "result": [2]}));
    server.stop().await;
}

#[tokio::test]
async fn subscriptions_are_per_connection_and_end_with_it() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut owner = server.ndjson().await;
    let reply = owner
        .call(r#"{"jsonrpc":"2.0","id":1,"method":"subscribeTicks","params":[5]}"#)
        .await;
    let subscription = reply["result"].clone();
    let tick = owner.recv().await;
    assert_eq!(tick["method"], "tick");
    assert_eq!(tick["params"]["subscription"], subscription);

    let mut other = server.ndjson().await;
    let unsubscribe =
        json!({"jsonrpc":"2.0","id":2,"method":"unsubscribeTicks","params":[subscription]})
            .to_string();
    assert_eq!(other.call(&unsubscribe).await["result"], json!(false));
    server.wait_for_active_subscriptions(1).await;

    owner
        .send(r#"{"jsonrpc":"2.0","id":3,"method":"subscribeTicks","params":[5]}"#)
        .await;
    server.wait_for_active_subscriptions(2).await;
    drop(owner);
    server.wait_for_active_subscriptions(0).await;
    server.stop().await;
}

#[tokio::test]
async fn unsubscribe_on_the_same_connection_returns_true() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut client = server.ndjson().await;
    let subscription = client
        .call(r#"{"jsonrpc":"2.0","id":1,"method":"subscribeTicks","params":[1000]}"#)
        .await["result"]
        .clone();
    let unsubscribe =
        json!({"jsonrpc":"2.0","id":2,"method":"unsubscribeTicks","params":[subscription]})
            .to_string();
    assert_eq!(
        client.call(&unsubscribe).await,
        json!({"jsonrpc":"2.0","id":2,"result":true})
    );
    server.wait_for_active_subscriptions(0).await;
    server.stop().await;
}

#[tokio::test]
async fn half_closed_connection_gets_its_answer_and_keeps_streaming() {
    let server = TestServer::start(TransportConfig::default()).await;
    // `echo '{…slow call…}' | socat - UNIX-CONNECT:sock`
    let mut client = server.ndjson().await;
    client
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"sleep","params":[100]}"#)
        .await;
    client.writer.shutdown().await.unwrap();
    assert_eq!(client.recv().await["result"], "slept");
    assert_eq!(client.recv_line().await, None, "closed after the answer");

    // `echo '{…subscribe…}' | socat …` behaves like tail -f until the client goes away.
    let mut client = server.ndjson().await;
    client
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"subscribeTicks","params":[5]}"#)
        .await;
    client.writer.shutdown().await.unwrap();
    let subscription = client.recv().await["result"].clone();
    for _ in 0..3 {
        assert_eq!(client.recv().await["params"]["subscription"], subscription);
    }
    server.wait_for_active_subscriptions(1).await;
    drop(client);
    server.wait_for_active_subscriptions(0).await;
    server.stop().await;
}

async fn http_exchange(path: &Path, request: &str) -> (String, Value) {
    let mut stream = UnixStream::connect(path).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(REPLY_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {response:?}"));
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (head.to_owned(), body)
}

fn http_post(content_type: &str, body: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn http_post_works_with_curl_default_content_type() {
    let server = TestServer::start(TransportConfig::default()).await;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"subtract","params":[5,3]}"#;
    let (head, reply) = http_exchange(
        &server.path,
        &http_post("application/x-www-form-urlencoded", body),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(reply, json!({"jsonrpc":"2.0","id":1,"result":2}));

    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]},{"jsonrpc":"2.0","id":2,"method":"nope"}]"#;
    let (_, reply) = http_exchange(&server.path, &http_post("application/json", batch)).await;
    assert_eq!(reply[0]["result"], json!([1]));
    assert_eq!(reply[1]["error"]["code"], json!(-32601));
    server.stop().await;
}

async fn ws_receive(receiver: &mut soketto::connection::Receiver<WsStream>) -> Value {
    let mut data = Vec::new();
    tokio::time::timeout(REPLY_TIMEOUT, receiver.receive_data(&mut data))
        .await
        .unwrap()
        .unwrap();
    serde_json::from_slice(&data).unwrap()
}

type WsStream = tokio_util::compat::Compat<UnixStream>;

/// A WebSocket connection to the socket, its handshake accepted.
async fn ws_connect(
    path: &Path,
) -> (
    soketto::connection::Sender<WsStream>,
    soketto::connection::Receiver<WsStream>,
) {
    use tokio_util::compat::TokioAsyncReadCompatExt;

    let stream = UnixStream::connect(path).await.unwrap().compat();
    let mut handshake = soketto::handshake::Client::new(stream, "localhost", "/");
    match handshake.handshake().await.unwrap() {
        soketto::handshake::ServerResponse::Accepted { .. } => {}
        other => panic!("websocket handshake refused: {other:?}"),
    }
    handshake.into_builder().finish()
}

#[tokio::test]
async fn websocket_calls_and_subscriptions_work() {
    let server = TestServer::start(TransportConfig::default()).await;
    let (mut sender, mut receiver) = ws_connect(&server.path).await;
    sender
        .send_text(r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":["ws"]}"#)
        .await
        .unwrap();
    sender.flush().await.unwrap();
    assert_eq!(ws_receive(&mut receiver).await["result"], json!(["ws"]));

    sender
        .send_text(r#"{"jsonrpc":"2.0","id":2,"method":"subscribeTicks","params":[5]}"#)
        .await
        .unwrap();
    sender.flush().await.unwrap();
    let subscription = ws_receive(&mut receiver).await["result"].clone();
    assert!(subscription.is_u64());
    for _ in 0..2 {
        assert_eq!(
            ws_receive(&mut receiver).await["params"]["subscription"],
            subscription
        );
    }
    server.wait_for_active_subscriptions(1).await;
    drop((sender, receiver));
    server.wait_for_active_subscriptions(0).await;
    server.stop().await;
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_100_mb_line_is_refused_without_buffering_it() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut client = server.ndjson().await;
    let before = vm_rss_kib();
    let chunk = vec![b'1'; 1024 * 1024];
    client.writer.write_all(b"[").await.unwrap();
    let (mut lines, mut writer) = (client.lines, client.writer);
    let write = tokio::spawn(async move {
        for _ in 0..100 {
            writer.write_all(&chunk).await.unwrap();
        }
        writer.write_all(b"]\n").await.unwrap();
        writer
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"echo\",\"params\":[2]}\n")
            .await
            .unwrap();
        writer
    });
    let first: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["error"]["code"], json!(-32007));
    assert_eq!(
        first["error"]["data"],
        json!({"code": "REQUEST_TOO_LARGE", "limit": 1024 * 1024})
    );
    let second: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(second["result"], json!([2]), "the connection stays usable");
    let _writer = write.await.unwrap();
    let grown_mib = vm_rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 40,
        "RSS grew by {grown_mib} MiB while a 100 MB line was refused"
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_input_is_answered_and_the_connection_survives() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut client = server.ndjson().await;
    assert_eq!(
        client.call("{garbage").await["error"]["code"],
        json!(-32700)
    );
    assert_eq!(
        client.call("nonsense").await["error"]["code"],
        json!(-32700)
    );

    client
        .writer
        .write_all(
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"params\":[\"\xff\xfe\"]}\n",
        )
        .await
        .unwrap();
    assert_eq!(
        client.recv().await["error"]["code"],
        json!(-32700),
        "invalid UTF-8 is a parse error"
    );

    // Deep nesting must not overflow the stack: either serde_json's recursion limit answers, or the
    // value is skipped without recursion and found not to be a request.
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let reply = client.call(&deep_array).await;
    assert_eq!(
        reply,
        json!([{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}}])
    );
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let reply = client.call(&deep_object).await;
    assert_eq!(reply["error"]["code"], json!(-32600), "{reply}");
    let deep_params = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"echo","params":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let reply = client.call(&deep_params).await;
    assert_eq!(reply["id"], json!(5), "{reply}");
    assert_eq!(
        reply["error"]["code"],
        json!(-32602),
        "the method's own parse hits the recursion limit: {reply}"
    );

    let reply = client
        .call(r#"{"jsonrpc":"2.0","id":9,"method":"echo","params":[9]}"#)
        .await;
    assert_eq!(reply["result"], json!([9]));
    server.stop().await;
}

#[tokio::test]
async fn a_connection_starting_with_garbage_gets_one_parse_error_and_is_closed() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut client = server.ndjson().await;
    client.send("hello").await;
    assert_eq!(client.recv().await["error"]["code"], json!(-32700));
    assert_eq!(client.recv_line().await, None);
    server.stop().await;
}

#[tokio::test]
async fn a_half_line_then_silence_times_out_without_blocking_others() {
    let cfg = TransportConfig {
        partial_line_timeout: Duration::from_millis(300),
        ..TransportConfig::default()
    };
    let server = TestServer::start(cfg).await;
    let mut stalled = server.ndjson().await;
    stalled
        .writer
        .write_all(br#"{"jsonrpc":"2.0","id":1,"met"#)
        .await
        .unwrap();
    let started = Instant::now();
    let mut other = server.ndjson().await;
    assert_eq!(
        other
            .call(r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}"#)
            .await["result"],
        json!([1])
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "served while the other connection stalled"
    );
    let reply = stalled.recv().await;
    assert_eq!(reply["error"]["code"], json!(-32700));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(stalled.recv_line().await, None, "closed after the timeout");
    server.stop().await;
}

#[tokio::test]
async fn in_flight_requests_are_capped_per_connection() {
    let cfg = TransportConfig {
        max_in_flight_per_connection: 1,
        ..TransportConfig::default()
    };
    let server = TestServer::start(cfg).await;
    let mut client = server.ndjson().await;
    let started = Instant::now();
    for id in 0..3 {
        client
            .send(&format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"sleep","params":[100]}}"#
            ))
            .await;
    }
    for _ in 0..3 {
        assert_eq!(client.recv().await["result"], "slept");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "ran one at a time: {:?}",
        started.elapsed()
    );

    let cfg = TransportConfig {
        max_in_flight_per_connection: 3,
        ..TransportConfig::default()
    };
    let server = TestServer::start(cfg).await;
    let mut client = server.ndjson().await;
    let started = Instant::now();
    for id in 0..3 {
        client
            .send(&format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"sleep","params":[100]}}"#
            ))
            .await;
    }
    for _ in 0..3 {
        assert_eq!(client.recv().await["result"], "slept");
    }
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "ran together: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let cfg = TransportConfig {
        max_subscriptions_per_connection: 2,
        ..TransportConfig::default()
    };
    let server = TestServer::start(cfg).await;
    let mut client = server.ndjson().await;
    let subscribe = r#"{"jsonrpc":"2.0","id":1,"method":"subscribeTicks","params":[100000]}"#;
    assert!(client.call(subscribe).await["result"].is_u64());
    assert!(client.call(subscribe).await["result"].is_u64());
    assert_eq!(client.call(subscribe).await["error"]["code"], json!(-32006));
    server.stop().await;
}

/// jsonrpsee's own limit errors carry a bare string as `data`; on every framing they carry the daemon's
/// typed `{code, limit}` instead.
#[tokio::test]
async fn limit_errors_carry_typed_data_on_every_framing() {
    let cfg = TransportConfig {
        max_response_size: 200,
        max_subscriptions_per_connection: 1,
        ..TransportConfig::default()
    };
    let server = TestServer::start(cfg).await;
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"echo","params":["{}"]}}"#,
        "x".repeat(300)
    );
    let subscribe = r#"{"jsonrpc":"2.0","id":2,"method":"subscribeTicks","params":[100000]}"#;
    let too_large = json!({"code": "RESPONSE_TOO_LARGE", "limit": 200});
    let too_many = json!({"code": "TOO_MANY_SUBSCRIPTIONS", "limit": 1});

    let mut client = server.ndjson().await;
    let reply = client.call(&big).await;
    assert_eq!(
        (&reply["error"]["code"], &reply["error"]["data"]),
        (&json!(-32008), &too_large)
    );
    assert!(client.call(subscribe).await["result"].is_u64());
    let reply = client.call(subscribe).await;
    assert_eq!(
        (&reply["error"]["code"], &reply["error"]["data"]),
        (&json!(-32006), &too_many)
    );

    let (_, reply) = http_exchange(&server.path, &http_post("application/json", &big)).await;
    assert_eq!(
        (&reply["error"]["code"], &reply["error"]["data"]),
        (&json!(-32008), &too_large)
    );

    let (mut sender, mut receiver) = ws_connect(&server.path).await;
    for expected in [None, Some(&too_many)] {
        sender.send_text(subscribe).await.unwrap();
        sender.flush().await.unwrap();
        let reply = ws_receive(&mut receiver).await;
        match expected {
            None => assert!(reply["result"].is_u64(), "{reply}"),
            Some(data) => assert_eq!(&reply["error"]["data"], data, "{reply}"),
        }
    }
    sender.send_text(&big).await.unwrap();
    sender.flush().await.unwrap();
    let reply = ws_receive(&mut receiver).await;
    assert_eq!(&reply["error"]["data"], &too_large, "{reply}");
    drop((sender, receiver, client));
    server.stop().await;
}

async fn connect_retrying(path: &Path) -> UnixStream {
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => return stream,
            // A full listen backlog makes a non-blocking connect fail with EAGAIN.
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(err) => panic!("connect failed: {err}"),
        }
    }
}

#[tokio::test]
async fn two_thousand_connections_at_once() {
    let cfg = TransportConfig {
        max_connections: 1000,
        ..TransportConfig::default()
    };
    let server = TestServer::start(cfg).await;
    let mut connecting = Vec::new();
    for _ in 0..2000 {
        let path = server.path.clone();
        connecting.push(tokio::spawn(async move { connect_retrying(&path).await }));
    }
    let mut streams = Vec::new();
    for task in connecting {
        streams.push(task.await.unwrap());
    }
    let mut replies = Vec::new();
    for stream in streams {
        replies.push(tokio::spawn(async move {
            let (reader, mut writer) = stream.into_split();
            let request = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"params\":[1]}\n";
            // A refused connection may already be closed by the server.
            let _ = writer.write_all(request).await;
            let mut lines = BufReader::new(reader).lines();
            let line = tokio::time::timeout(REPLY_TIMEOUT, lines.next_line())
                .await
                .unwrap()
                .ok()
                .flatten();
            (
                line.map(|l| serde_json::from_str::<Value>(&l).unwrap()),
                writer,
                lines,
            )
        }));
    }
    let (mut served, mut busy, mut closed) = (0, 0, 0);
    let mut keep_open = Vec::new();
    for reply in replies {
        let (reply, writer, lines) = reply.await.unwrap();
        match reply {
            Some(reply) if reply["result"] == json!([1]) => served += 1,
            Some(reply) => {
                assert_eq!(reply["error"]["data"]["code"], "SERVER_BUSY", "{reply}");
                busy += 1;
            }
            None => closed += 1,
        }
        keep_open.push((writer, lines));
    }
    eprintln!("served {served}, busy {busy}, closed without answer {closed}");
    assert_eq!(
        served, 1000,
        "served {served}, busy {busy}, closed without answer {closed}"
    );
    assert!(
        busy >= 1,
        "refused connections are told why (busy {busy}, closed {closed})"
    );
    drop(keep_open);

    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let mut client = server.ndjson().await;
        client
            .send(r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}"#)
            .await;
        if client.recv().await["result"] == json!([1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server answers again once connections closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = server.stop().await;
    assert!(report.refused_busy >= 1000, "{report:?}");
}

#[tokio::test]
async fn shutdown_answers_in_flight_calls_and_ends_subscriptions() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut subscriber = server.ndjson().await;
    subscriber
        .call(r#"{"jsonrpc":"2.0","id":1,"method":"subscribeTicks","params":[10]}"#)
        .await;
    let mut caller = server.ndjson().await;
    caller
        .send(r#"{"jsonrpc":"2.0","id":7,"method":"sleep","params":[300]}"#)
        .await;
    server.wait_for_active_subscriptions(1).await;
    server.wait_for_sleeping_calls(1).await;
    let path = server.path.clone();
    let context = server.context.clone();
    let report = server.stop().await;
    assert!(report.all_closed, "{report:?}");
    assert_eq!(report.accepted, 2);
    assert_eq!(
        caller.recv().await,
        json!({"jsonrpc":"2.0","id":7,"result":"slept"})
    );
    assert_eq!(caller.recv_line().await, None);
    while let Some(line) = subscriber.recv_line().await {
        assert!(line.contains("tick"), "{line}");
    }
    assert_eq!(context.active_subscriptions.load(Ordering::SeqCst), 0);
    assert!(
        UnixStream::connect(&path).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn a_raw_subscription_is_answered_before_its_notifications_and_silent_after_its_unsubscribe()
{
    let server = TestServer::start(TransportConfig::default()).await;
    let mut client = server.ndjson().await;
    client
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"countRaw","params":{}}"#)
        .await;
    // The reply comes first, though the stream fills the connection as fast as it can.
    let reply = client.recv().await;
    assert_eq!(reply["id"], 1, "{reply}");
    let subscription = reply["result"].clone();
    for expected in 0..1000 {
        let notification = client.recv().await;
        assert_eq!(notification["method"], "count");
        assert_eq!(notification["params"]["subscription"], subscription);
        assert_eq!(notification["params"]["result"], expected);
    }
    // Named params, the documented form; then a call whose reply marks the end of what may arrive.
    client
        .send(&format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"unsubscribeCount","params":{{"subscription":{subscription}}}}}"#
        ))
        .await;
    loop {
        let message = client.recv().await;
        if message["id"] == 2 {
            assert_eq!(message["result"], true, "{message}");
            break;
        }
        assert_eq!(message["method"], "count", "{message}");
    }
    client
        .send(r#"{"jsonrpc":"2.0","id":3,"method":"echo","params":["after"]}"#)
        .await;
    assert_eq!(
        client.recv().await["id"],
        3,
        "no notification follows the unsubscribe reply"
    );
    server.wait_for_raw_subscriptions(0).await;
    // A subscription that is gone answers false, as jsonrpsee's do.
    let again = client
        .call(&format!(
            r#"{{"jsonrpc":"2.0","id":4,"method":"unsubscribeCount","params":[{subscription}]}}"#
        ))
        .await;
    assert_eq!(again["result"], false, "{again}");
    server.stop().await;
}

#[tokio::test]
async fn raw_subscriptions_count_against_the_connection_limit() {
    let cfg = TransportConfig {
        max_subscriptions_per_connection: 2,
        ..TransportConfig::default()
    };
    let server = TestServer::start(cfg).await;
    let mut client = server.ndjson().await;
    let subscribe = r#"{"jsonrpc":"2.0","id":1,"method":"countRaw","params":{"hold":true}}"#;
    let first = client.call(subscribe).await["result"].clone();
    assert!(client.call(subscribe).await["result"].is_u64());
    let refused = client.call(subscribe).await;
    assert_eq!(refused["error"]["code"], json!(-32006), "{refused}");
    let ended = client
        .call(&format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"unsubscribeCount","params":[{first}]}}"#
        ))
        .await;
    assert_eq!(ended["result"], true);
    assert!(client.call(subscribe).await["result"].is_u64());
    server.stop().await;
}

#[tokio::test]
async fn a_raw_subscription_streams_to_its_end_after_the_peer_shuts_its_write_side() {
    let server = TestServer::start(TransportConfig::default()).await;
    // `echo '{…streamJobOutput…}' | socat - UNIX-CONNECT:sock`
    let mut client = server.ndjson().await;
    client
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"countRaw","params":{"count":20000}}"#)
        .await;
    client.writer.shutdown().await.unwrap();
    assert_eq!(client.recv().await["id"], 1);
    for expected in 0..20000 {
        let Some(line) = client.recv_line().await else {
            panic!("closed after {expected} notifications");
        };
        let notification: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(notification["params"]["result"], expected);
    }
    assert_eq!(
        client.recv_line().await,
        None,
        "closed once the stream ended"
    );
    server.wait_for_raw_subscriptions(0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_raw_subscription_ends_when_its_reader_goes_away() {
    let server = TestServer::start(TransportConfig::default()).await;
    let mut client = server.ndjson().await;
    // One that fills the connection and one that waits: both end with it.
    for params in ["{}", r#"{"hold":true}"#] {
        client
            .send(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"countRaw","params":{params}}}"#
            ))
            .await;
    }
    server.wait_for_raw_subscriptions(2).await;
    drop(client);
    server.wait_for_raw_subscriptions(0).await;
    server.stop().await;
}
