//! The results that are the protocol's own rather than a FleetManager type's: the wire shapes `methods`
//! builds and `openrpc` describes.

use schemars::JsonSchema;
use serde::Serialize;

use crate::fleet::{FleetState, FleetStatus};
use crate::job::{Job, OutputLine};

/// `getJob`'s result: the job, and its output when asked for (`null` otherwise).
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobDetail {
    #[serde(flatten)]
    pub(super) job: Job,
    /// The output lines asked for; null when none were.
    pub(super) output: Option<Vec<OutputLine>>,
    /// The `outputFromSeq` of the next page; null at the end of the output or without output.
    pub(super) output_next_seq: Option<u64>,
}

/// The result of `initialize`, `start` and `stop`: the state the fleet is in afterwards.
#[derive(Serialize, JsonSchema)]
pub(super) struct StateResult {
    pub(super) state: FleetState,
}

/// `getStatus`'s result: the fleet's status and the protocol version the daemon speaks.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatusResult {
    #[serde(flatten)]
    pub(super) status: FleetStatus,
    /// The version of this protocol (`info.version` of `rpc.discover`).
    pub(super) protocol_version: &'static str,
}
