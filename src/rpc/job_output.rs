//! `streamJobOutput` served as bytes on the NDJSON framing (issue 16): a job's lines are already JSON
//! (serialised once by the job's pump, shared by every reader), so a notification is that text between
//! the subscription's frame and two closing braces, copied into the connection's next write. The
//! notifications are the ones the jsonrpsee path sends on the other framings, byte for byte in their
//! results.

use std::future::Future;
use std::pin::Pin;

use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde::Serialize;

use crate::fleet::{FleetManager, JobOutputStream, LineRun, OutputPiece};
use crate::metrics::SubscriberGuard;

use super::params::JobOutputParams;
use super::transport::raw::{NotificationFrame, RawSubscription};

/// The method's name.
pub(super) const STREAM_JOB_OUTPUT: &str = "streamJobOutput";

/// Lines taken from the stream at a time (each one notification, or a part of a batched one).
const LINES_PER_TAKE: usize = 256;

/// A job's output as `jobOutput` notifications: a line each, or with `batch: true` every ready line in
/// one `{lines: […]}`.
pub(super) struct OutputNotifications {
    stream: JobOutputStream,
    batch: bool,
    _counted: SubscriberGuard,
}

impl OutputNotifications {
    /// Opens the stream `params` ask for, counted as a `streamJobOutput` subscriber while it lives.
    pub(super) fn open(
        fleet: &FleetManager,
        params: Params<'_>,
    ) -> Result<OutputNotifications, ErrorObjectOwned> {
        let p: JobOutputParams = super::params::parse(&params)?;
        let stream = fleet
            .stream_job_output(&p.id, p.from_seq)
            .map_err(|e| super::error::fleet_error(&e))?;
        Ok(OutputNotifications {
            stream,
            batch: p.batch,
            _counted: fleet.metrics().subscriber(STREAM_JOB_OUTPUT),
        })
    }

    /// Appends the notifications of `piece` (a batched run continues with whatever else is ready);
    /// false when it was the end.
    fn write(
        &mut self,
        piece: OutputPiece,
        frame: &NotificationFrame,
        out: &mut Vec<u8>,
        max_bytes: usize,
    ) -> bool {
        match piece {
            OutputPiece::Lines(run) if self.batch => {
                frame.write_with(out, |out| {
                    out.extend_from_slice(br#"{"lines":["#);
                    write_joined(out, &run);
                    // Every run ready now joins this notification, up to its size.
                    while out.len() < max_bytes {
                        match self.stream.try_next_piece(LINES_PER_TAKE) {
                            Some(OutputPiece::Lines(more)) => {
                                out.push(b',');
                                write_joined(out, &more);
                            }
                            Some(mark) => {
                                self.stream.put_back(mark);
                                break;
                            }
                            None => break,
                        }
                    }
                    out.extend_from_slice(b"]}");
                });
                true
            }
            OutputPiece::Lines(run) => {
                for n in 0..run.len() {
                    frame.write(out, run.json(n));
                }
                true
            }
            OutputPiece::Gap(gap) => write_item(frame, out, &gap),
            OutputPiece::Replayed(end) => write_item(frame, out, &end),
            OutputPiece::Eof(end) => !write_item(frame, out, &end),
        }
    }
}

/// The run's lines, comma-separated.
fn write_joined(out: &mut Vec<u8>, run: &LineRun) {
    for n in 0..run.len() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(run.json(n));
    }
}

/// One notification whose result is `item`; true.
fn write_item(frame: &NotificationFrame, out: &mut Vec<u8>, item: &impl Serialize) -> bool {
    // The marks are plain structs of numbers, booleans and enums: they always serialise.
    frame.write_with(out, |out| {
        let _ = serde_json::to_writer(out, item);
    });
    true
}

impl RawSubscription for OutputNotifications {
    fn fill<'a>(
        &'a mut self,
        frame: &'a NotificationFrame,
        out: &'a mut Vec<u8>,
        max_bytes: usize,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let Some(first) = self.stream.next_piece(LINES_PER_TAKE).await else {
                return false;
            };
            if !self.write(first, frame, out, max_bytes) {
                return false;
            }
            while out.len() < max_bytes {
                let Some(piece) = self.stream.try_next_piece(LINES_PER_TAKE) else {
                    break;
                };
                if !self.write(piece, frame, out, max_bytes) {
                    return false;
                }
            }
            true
        })
    }
}
