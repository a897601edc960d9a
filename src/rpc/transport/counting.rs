//! `herdctld_rpc_calls_total{method,code}`: every answered call counted where it is dispatched — the NDJSON
//! dispatcher calls [`CallCounter::count`], HTTP and WebSocket go through the [`CountLayer`] RPC middleware
//! (which also gives named unsubscribe params their positional form and jsonrpsee's limit errors their
//! typed data, as the NDJSON dispatcher does).
//!
//! The method label is a registered name or `unknown`, so a client cannot grow the label set; the code is
//! the reply's JSON-RPC error code or `ok`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use jsonrpsee::server::middleware::rpc::{Batch, BatchEntry, Notification, Request, RpcServiceT};
use jsonrpsee::server::{BatchResponseBuilder, MethodResponse, Methods};

use super::{with_typed_limit_errors, ReplyLimits};
use crate::metrics::Metrics;

/// Counts answered calls into the metrics.
#[derive(Clone)]
pub(super) struct CallCounter {
    metrics: Arc<Metrics>,
    known: Arc<HashSet<&'static str>>,
}

impl CallCounter {
    pub(super) fn new(metrics: Arc<Metrics>, methods: &Methods) -> CallCounter {
        CallCounter {
            metrics,
            known: Arc::new(methods.method_names().collect()),
        }
    }

    /// The method's label: its registered name, or `unknown`.
    pub(super) fn label(&self, method: &str) -> &'static str {
        self.known.get(method).copied().unwrap_or("unknown")
    }

    pub(super) fn count(&self, method: &'static str, response: &MethodResponse) {
        self.metrics.rpc_call(method, response.as_error_code());
    }
}

/// The RPC middleware of the HTTP and WebSocket framings; without a counter it only passes calls on.
#[derive(Clone)]
pub(super) struct CountLayer {
    pub(super) counter: Option<CallCounter>,
    /// The response limit (of a batch's response too, as jsonrpsee's own batch handling applies it) and
    /// the subscription limit, named in the errors that exceed them.
    pub(super) limits: ReplyLimits,
}

impl<S> tower::Layer<S> for CountLayer {
    type Service = Counting<S>;

    fn layer(&self, service: S) -> Counting<S> {
        Counting {
            service,
            counter: self.counter.clone(),
            limits: self.limits,
        }
    }
}

#[derive(Clone)]
pub(super) struct Counting<S> {
    service: S,
    counter: Option<CallCounter>,
    limits: ReplyLimits,
}

impl<S> RpcServiceT for Counting<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, request: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let service = self.service.clone();
        let counter = self.counter.clone();
        let limits = self.limits;
        async move {
            let mut request = request;
            if let Some(positional) =
                super::unsubscribe_params(request.method_name(), request.params.as_deref())
            {
                request.params = Some(std::borrow::Cow::Owned(positional));
            }
            let label = counter.as_ref().map(|c| c.label(request.method_name()));
            let id = request.id.clone().into_owned();
            let response = with_typed_limit_errors(id, service.call(request).await, limits);
            if let (Some(counter), Some(label)) = (counter, label) {
                counter.count(label, &response);
            }
            response
        }
    }

    /// jsonrpsee hands a batch to the middleware whole; its entries are run through [`Self::call`] so each
    /// is counted (this mirrors jsonrpsee's own batch handling, pinned `=0.26.1`).
    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let this = self.clone();
        async move {
            let mut responses =
                BatchResponseBuilder::new_with_limit(this.limits.max_response_size as usize);
            let mut got_notification = false;
            for entry in batch {
                let response = match entry {
                    Ok(BatchEntry::Call(request)) => this.call(request).await,
                    Ok(BatchEntry::Notification(notification)) => {
                        got_notification = true;
                        this.service.notification(notification).await;
                        continue;
                    }
                    Err(err) => {
                        let (err, id) = err.into_parts();
                        MethodResponse::error(id, err)
                    }
                };
                if let Err(too_large) = responses.append(response) {
                    return too_large;
                }
            }
            if responses.is_empty() && got_notification {
                MethodResponse::notification()
            } else {
                // An empty batch becomes a single "Invalid request" error here.
                MethodResponse::from_batch(responses.finish())
            }
        }
    }

    fn notification<'a>(
        &self,
        notification: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.service.notification(notification)
    }
}
