//! The exec-shim's output format: one JSON object per line, each tagged `"herdctl":1`, flushed as written.
//!
//! ```text
//! {"herdctl":1,"line":{"seq":0,"timestamp":"…","type":"stdout","chunk":"hello"}}
//! {"herdctl":1,"outcome":{"status":"completed","exit_reason":"success","exit_code":0,…}}
//! ```
//!
//! A `line` is the job's output line exactly as the daemon stores it (`OutputLine`, seq included: a relay
//! that starts again after a daemon restart skips the seqs it already has). The `outcome` is the runner's
//! `RunOutcome`, written once, last. Any other text in the file is not the shim's (an engine may write its
//! own notices into the job's files) and is skipped.

use serde::{Deserialize, Serialize};

use crate::job::OutputLine;
use crate::runner::RunOutcome;

/// The version of the format; a reader refuses frames of another.
pub(crate) const VERSION: u32 = 1;

/// One line of the shim's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Frame {
    pub(crate) herdctl: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) line: Option<OutputLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) outcome: Option<Box<RunOutcome>>,
}

impl Frame {
    pub(crate) fn line(line: OutputLine) -> Frame {
        Frame {
            herdctl: VERSION,
            line: Some(line),
            outcome: None,
        }
    }

    pub(crate) fn outcome(outcome: RunOutcome) -> Frame {
        Frame {
            herdctl: VERSION,
            line: None,
            outcome: Some(Box::new(outcome)),
        }
    }
}

/// What one line of a shim's output file is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Parsed {
    Line(OutputLine),
    Outcome(Box<RunOutcome>),
    /// Not a frame of this version: someone else's text, or a frame too new to read.
    NotOurs,
}

/// Reads one line (without its `\n`).
pub(crate) fn parse(line: &[u8]) -> Parsed {
    const TAG: &[u8] = b"{\"herdctl\":";
    if !line.starts_with(TAG) {
        return Parsed::NotOurs;
    }
    match serde_json::from_slice::<Frame>(line) {
        Ok(Frame {
            herdctl: VERSION,
            line: Some(line),
            outcome: None,
        }) => Parsed::Line(line),
        Ok(Frame {
            herdctl: VERSION,
            line: None,
            outcome: Some(outcome),
        }) => Parsed::Outcome(outcome),
        _ => Parsed::NotOurs,
    }
}

/// Splits complete lines off the front of `pending` (bytes read so far, the last line possibly still being
/// written): returns them parsed, keeping an unfinished last line in `pending` for the next read.
pub(crate) fn take_complete(pending: &mut Vec<u8>) -> Vec<Parsed> {
    let Some(last_newline) = memchr::memrchr(b'\n', pending) else {
        return Vec::new();
    };
    let rest = pending.split_off(last_newline + 1);
    let complete = std::mem::replace(pending, rest);
    complete
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::ExitReason;
    use crate::runner::RunStatus;

    fn text_line(seq: u64, chunk: &str) -> OutputLine {
        OutputLine {
            seq,
            timestamp: "2026-12-07T10:00:00Z".parse().unwrap(),
            kind: "stdout".into(),
            chunk: chunk.into(),
            message: None,
            truncated: false,
        }
    }

    #[test]
    fn frames_round_trip_and_other_text_is_not_ours() {
        let line = serde_json::to_vec(&Frame::line(text_line(3, "hi"))).unwrap();
        assert_eq!(parse(&line), Parsed::Line(text_line(3, "hi")));
        let outcome = RunOutcome::without_process(
            RunStatus::Failed,
            ExitReason::Error,
            "EXIT_CODE",
            "exit 3".into(),
        );
        let written = serde_json::to_vec(&Frame::outcome(outcome.clone())).unwrap();
        assert_eq!(parse(&written), Parsed::Outcome(Box::new(outcome)));
        for other in [
            &b"slurmstepd-vm: error: *** JOB 4 ON vm CANCELLED AT 2026-12-07T10:00:00 ***"[..],
            b"{\"herdctl\":2,\"line\":{}}",
            b"{\"herdctl\":1}",
            b"{\"herdctl\":1,\"line\":{\"seq\":",
        ] {
            assert_eq!(
                parse(other),
                Parsed::NotOurs,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn an_unfinished_last_line_waits_for_the_next_read() {
        let mut pending = serde_json::to_vec(&Frame::line(text_line(0, "a"))).unwrap();
        pending.extend_from_slice(b"\n{\"herdctl\":1,\"li");
        let parsed = take_complete(&mut pending);
        assert_eq!(parsed, vec![Parsed::Line(text_line(0, "a"))]);
        assert_eq!(pending, b"{\"herdctl\":1,\"li");
        assert!(take_complete(&mut pending).is_empty());
    }
}
