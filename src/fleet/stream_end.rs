//! Ending a bus's live streams when its host shuts down. A stream that is told to end first hands out
//! what was already sent to it, then ends; the host waits until every stream has ended before it closes
//! the connections, so the last events (`stopped` among them) reach every subscriber.

use tokio::sync::{broadcast, watch};

/// Shared by a bus and its streams. Cloning shares it.
#[derive(Clone)]
pub(super) struct StreamEnd {
    /// True once streams are to end.
    ending: watch::Sender<bool>,
    /// How many streams exist.
    open: watch::Sender<usize>,
}

impl StreamEnd {
    pub(super) fn new() -> StreamEnd {
        StreamEnd {
            ending: watch::Sender::new(false),
            open: watch::Sender::new(0),
        }
    }

    /// A guard for one more stream; the stream holds it until it is dropped.
    pub(super) fn open(&self) -> OpenStream {
        self.open.send_modify(|open| *open += 1);
        OpenStream {
            ending: self.ending.subscribe(),
            open: self.open.clone(),
        }
    }

    /// Tells every stream, present and future, to end once it has handed out what it holds.
    pub(super) fn end(&self) {
        self.ending.send_replace(true);
    }

    /// Resolves when no stream is left.
    pub(super) async fn ended(&self) {
        let mut open = self.open.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = open.wait_for(|open| *open == 0).await;
    }
}

/// One stream's part: it counts as open until dropped, and receives through [`OpenStream::recv`].
pub(super) struct OpenStream {
    ending: watch::Receiver<bool>,
    open: watch::Sender<usize>,
}

impl OpenStream {
    /// The next message of `receiver`; once the streams are to end, only what it already holds, then
    /// `Closed`.
    pub(super) async fn recv<T: Clone>(
        &mut self,
        receiver: &mut broadcast::Receiver<T>,
    ) -> Result<T, broadcast::error::RecvError> {
        use broadcast::error::{RecvError, TryRecvError};
        let ending = &mut self.ending;
        tokio::select! {
            // What is already there comes first, even after the end was called.
            biased;
            received = receiver.recv() => received,
            _ = ending.wait_for(|ending| *ending) => match receiver.try_recv() {
                Ok(message) => Ok(message),
                Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                Err(TryRecvError::Empty | TryRecvError::Closed) => Err(RecvError::Closed),
            },
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.open.send_modify(|open| *open -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ended_stream_hands_out_what_it_holds_then_closes() {
        let end = StreamEnd::new();
        let (sender, mut receiver) = broadcast::channel(8);
        let mut stream = end.open();
        sender.send(1).unwrap();
        sender.send(2).unwrap();
        end.end();
        assert_eq!(stream.recv(&mut receiver).await.unwrap(), 1);
        assert_eq!(stream.recv(&mut receiver).await.unwrap(), 2);
        assert!(matches!(
            stream.recv(&mut receiver).await,
            Err(broadcast::error::RecvError::Closed)
        ));
        // A stream opened after the end ends as soon as it is empty.
        let mut late = end.open();
        let mut late_receiver = sender.subscribe();
        assert!(late.recv(&mut late_receiver).await.is_err());
    }

    #[tokio::test]
    async fn ended_waits_for_the_last_stream_to_be_dropped() {
        let end = StreamEnd::new();
        let first = end.open();
        let second = end.open();
        let ended = tokio::spawn({
            let end = end.clone();
            async move { end.ended().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!ended.is_finished(), "one stream is still open");
        drop(second);
        ended.await.unwrap();
        // With none open it resolves at once.
        end.ended().await;
    }
}
