//! The HTTP server under the test fakes (`tests/support/fake_github.rs`, `tests/claude_stub`): hyper speaks
//! HTTP/1.1 (keep-alive, chunked bodies, `HEAD`), so a fake is only a function from a request to an answer and
//! no fake parses requests or formats responses itself.
//!
//! API: [`HttpFake::start`]`(handler)`, [`HttpFake::base_url`], [`HttpFake::requests`]; [`Recorded`],
//! [`Answer::new`], [`Answer::json`].

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query as sent (percent-encoded).
    pub target: String,
    /// Lower-case names; of a repeated header, the last value.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// When the whole request had arrived.
    #[allow(
        dead_code,
        reason = "the GitHub fake's retry tests read it, the Messages stub's tests do not"
    )]
    pub at: SystemTime,
}

/// What a fake answers to one request.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: &Value) -> Answer {
        Answer::new(status, "application/json", body.to_string())
    }
}

type Handler = dyn Fn(&Recorded) -> Answer + Send + Sync;

/// A server on a free port of 127.0.0.1, stopped (with every connection it has open) when dropped.
pub struct HttpFake {
    base_url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    server: JoinHandle<()>,
}

impl HttpFake {
    /// Records every request, then answers it with what `handler` returns.
    pub async fn start(
        handler: impl Fn(&Recorded) -> Answer + Send + Sync + 'static,
    ) -> io::Result<HttpFake> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let server = tokio::spawn(accept(listener, Arc::clone(&requests), Arc::new(handler)));
        Ok(HttpFake {
            base_url,
            requests,
            server,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpFake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves each connection in a task of this one's set: clients keep connections alive, and aborting this task
/// must close them too, or a stopped fake would go on answering.
async fn accept(listener: TcpListener, requests: Arc<Mutex<Vec<Recorded>>>, handler: Arc<Handler>) {
    let mut connections = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let requests = Arc::clone(&requests);
        let handler = Arc::clone(&handler);
        let service =
            service_fn(move |request| answer(request, Arc::clone(&requests), Arc::clone(&handler)));
        connections.spawn(async move {
            // A client that hangs up mid-request is its own test's concern, not the server's.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Forget the connections that have ended, so the set holds only open ones.
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(
    request: Request<Incoming>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    handler: Arc<Handler>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (head, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let recorded = Recorded {
        method: head.method.to_string(),
        target: head.uri.to_string(),
        headers: head
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: SystemTime::now(),
    };
    requests.lock().unwrap().push(recorded.clone());
    let answer = handler(&recorded);
    let mut response = Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        response = response.header(name, value);
    }
    // An answer hyper cannot send (a status or header name out of range) is a bug in the test that gave it.
    Ok(response
        .body(Full::new(Bytes::from(answer.body)))
        .expect("a valid status and headers"))
}
