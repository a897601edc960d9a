//! Subscriptions the NDJSON framing serves itself (issue 16): their notifications are written as ready
//! bytes, many per buffer, straight into the connection's writer, instead of one message at a time through
//! jsonrpsee's subscription sink (an allocation, a serialisation and a channel send per notification).
//! Job output is the one that needs it: a flooding job makes hundreds of thousands of lines a second.
//!
//! The transport knows no method: the method table hands it, per subscribe method, how to open one
//! ([`RawSubscriptions`]); the same method stays registered with jsonrpsee for the other framings.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use jsonrpsee::types::{ErrorObjectOwned, Params, SubscriptionId};

/// The start of every notification of one subscription, `{"jsonrpc":"2.0","method":M,"params":
/// {"subscription":ID,"result":`, made once when it is opened; [`NotificationFrame::write`] closes each.
#[derive(Debug, Clone)]
pub struct NotificationFrame {
    prefix: Vec<u8>,
}

impl NotificationFrame {
    pub(crate) fn new(method: &str, subscription: &SubscriptionId<'_>) -> NotificationFrame {
        let mut prefix = br#"{"jsonrpc":"2.0","method":"#.to_vec();
        // A string and a subscription id always serialise.
        let _ = serde_json::to_writer(&mut prefix, method);
        prefix.extend_from_slice(br#","params":{"subscription":"#);
        let _ = serde_json::to_writer(&mut prefix, subscription);
        prefix.extend_from_slice(br#","result":"#);
        NotificationFrame { prefix }
    }

    /// Appends one notification whose result is `result` (one JSON text without a line feed) as a line.
    pub fn write(&self, out: &mut Vec<u8>, result: &[u8]) {
        self.write_with(out, |out| out.extend_from_slice(result));
    }

    /// Appends one notification whose result `write_result` appends (one JSON text, no line feed).
    pub fn write_with(&self, out: &mut Vec<u8>, write_result: impl FnOnce(&mut Vec<u8>)) {
        out.extend_from_slice(&self.prefix);
        write_result(out);
        out.extend_from_slice(b"}}\n");
    }
}

/// One subscription served as bytes.
pub trait RawSubscription: Send + 'static {
    /// Appends the next notifications to `out` (whole lines, written with `frame`), waiting until there
    /// is at least one and stopping at about `max_bytes`. False once the stream has ended (its last
    /// notifications appended).
    fn fill<'a>(
        &'a mut self,
        frame: &'a NotificationFrame,
        out: &'a mut Vec<u8>,
        max_bytes: usize,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

/// Opens a subscription from its params, or refuses it with the error to answer.
pub type OpenRawSubscription =
    Arc<dyn Fn(Params<'_>) -> Result<Box<dyn RawSubscription>, ErrorObjectOwned> + Send + Sync>;

/// What a subscribe method needs to be served as bytes.
#[derive(Clone)]
pub(crate) struct RawMethod {
    pub(crate) notification: &'static str,
    pub(crate) unsubscribe: &'static str,
    pub(crate) open: OpenRawSubscription,
}

/// The subscribe methods the NDJSON framing serves itself, by name.
#[derive(Clone, Default)]
pub struct RawSubscriptions {
    methods: HashMap<&'static str, RawMethod>,
}

impl RawSubscriptions {
    /// Serves `subscribe` (notifications named `notification`, ended by `unsubscribe`) with `open`.
    pub fn register(
        &mut self,
        subscribe: &'static str,
        notification: &'static str,
        unsubscribe: &'static str,
        open: OpenRawSubscription,
    ) {
        self.methods.insert(
            subscribe,
            RawMethod {
                notification,
                unsubscribe,
                open,
            },
        );
    }

    pub(crate) fn get(&self, subscribe: &str) -> Option<&RawMethod> {
        self.methods.get(subscribe)
    }

    /// Whether `method` ends one of these subscriptions.
    pub(crate) fn is_unsubscribe(&self, method: &str) -> bool {
        self.methods.values().any(|raw| raw.unsubscribe == method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_makes_the_notification_jsonrpsee_would() {
        let frame = NotificationFrame::new("jobOutput", &SubscriptionId::Num(42));
        let mut out = Vec::new();
        frame.write(&mut out, br#"{"seq":1}"#);
        frame.write_with(&mut out, |out| out.extend_from_slice(b"true"));
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"jsonrpc": "2.0", "method": "jobOutput",
                "params": {"subscription": 42, "result": {"seq": 1}}})
        );
        assert_eq!(lines[1]["params"]["result"], true);
        assert!(text.ends_with("}}\n"));
    }
}
