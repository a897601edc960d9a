//! `GET /metrics`: the Prometheus scrape, on the socket's HTTP framing ([`MetricsRoute`]) and on a TCP
//! listener that serves nothing else ([`serve_metrics`], the daemon's `--metrics-listen`).
//!
//! The body is [`Metrics::encode`] with `content-type: text/plain; version=0.0.4; charset=utf-8`. Other
//! methods on `/metrics` get 405; on TCP every other path gets 404 (no JSON-RPC over TCP).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE};
use http::{Method, StatusCode};
use hyper::body::Incoming;
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{serve_with_graceful_shutdown, HttpBody, HttpResponse};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::metrics::{Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};

/// The scrape's path.
pub const METRICS_PATH: &str = "/metrics";
/// TCP connections served at once; scrapers are few, so more only cost.
const MAX_TCP_CONNECTIONS: usize = 32;
/// A TCP connection is closed after this long, so a stuck client frees its slot; a scraper reconnects.
const TCP_CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// The answer to a request for [`METRICS_PATH`]; `None` for any other path.
fn respond<B>(metrics: &Metrics, request: &http::Request<B>) -> Option<HttpResponse> {
    if request.uri().path() != METRICS_PATH {
        return None;
    }
    let response = if matches!(*request.method(), Method::GET | Method::HEAD) {
        http::Response::builder()
            .header(CONTENT_TYPE, METRICS_CONTENT_TYPE)
            .body(HttpBody::from(metrics.encode()))
    } else {
        http::Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(ALLOW, "GET, HEAD")
            .body(HttpBody::empty())
    };
    // Only static, valid header values are used above, so building cannot fail; answer 500 if it did.
    Some(response.unwrap_or_else(|_| server_error()))
}

fn status_only(status: StatusCode) -> HttpResponse {
    let mut response = http::Response::new(HttpBody::empty());
    *response.status_mut() = status;
    response
}

fn server_error() -> HttpResponse {
    status_only(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The socket's HTTP service: `/metrics` answered here when there are metrics, everything else passed to
/// jsonrpsee (POST calls, WebSocket upgrades, its own errors).
#[derive(Clone)]
pub(super) struct MetricsRoute<S> {
    pub(super) inner: S,
    pub(super) metrics: Option<Arc<Metrics>>,
}

impl<S> tower::Service<http::Request<Incoming>> for MetricsRoute<S>
where
    S: tower::Service<http::Request<Incoming>, Response = HttpResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        if let Some(response) = self.metrics.as_ref().and_then(|m| respond(m, &request)) {
            return Box::pin(std::future::ready(Ok(response)));
        }
        Box::pin(self.inner.call(request))
    }
}

/// Serves only `GET /metrics` on `listener` until the returned future is dropped (which also closes every
/// connection it serves).
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!(%err, "accepting a metrics connection failed");
                        // Out of descriptors: pause rather than spin.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!("too many metrics connections; closing one");
                    continue;
                };
                let metrics = metrics.clone();
                connections.spawn(async move {
                    let service = tower::service_fn(move |request: http::Request<Incoming>| {
                        let response = respond(&metrics, &request)
                            .unwrap_or_else(|| status_only(StatusCode::NOT_FOUND));
                        std::future::ready(Ok::<_, std::convert::Infallible>(response))
                    });
                    let served = serve_with_graceful_shutdown(
                        stream,
                        service,
                        tokio::time::sleep(TCP_CONNECTION_LIFETIME),
                    );
                    if let Err(err) = served.await {
                        tracing::debug!(%err, "metrics connection ended with an error");
                    }
                    drop(slot);
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    #[test]
    fn only_the_metrics_path_is_answered() {
        let metrics = Metrics::new();
        metrics.output(1, 2);
        let ok = respond(&metrics, &request(Method::GET, "/metrics")).unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[CONTENT_TYPE], METRICS_CONTENT_TYPE);
        let post = respond(&metrics, &request(Method::POST, "/metrics")).unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(respond(&metrics, &request(Method::GET, "/")).is_none());
        assert!(respond(&metrics, &request(Method::GET, "/metrics/x")).is_none());
    }
}
