//! Delivering a bus's items (events, log entries) to its subscribers, filter first.
//!
//! Every subscriber has a bounded queue of its own, which the emitter fills only with the items the
//! subscriber's filter takes: traffic it did not ask for costs it neither room nor a lag. Emission never
//! waits: a full queue drops its oldest item and counts it, and the reader is handed the count
//! ([`Received::Lagged`]) before what follows the gap. Items are shared between the queues (`Arc`), so a
//! subscriber's memory is bounded by its capacity.
//!
//! Ending, at a host's shutdown: [`Fanout::end`] tells every stream, present and future, to hand out what
//! its queue holds and then end; [`Fanout::ended`] resolves once no stream is left, so that the host closes
//! its connections only after the last events (`stopped` among them) reached every subscriber.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{watch, Notify};

/// Whether a subscriber wants an item.
pub(super) type Filter<T> = Box<dyn Fn(&T) -> bool + Send + Sync>;

/// The emitting side. Cloning shares it; once every clone is gone, the streams end when empty.
pub(super) struct Fanout<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Fanout<T> {
    fn clone(&self) -> Self {
        Fanout {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<T> {
    subscribers: Mutex<Subscribers<T>>,
    /// How many streams exist.
    open: watch::Sender<usize>,
}

struct Subscribers<T> {
    list: Vec<Subscriber<T>>,
    next_id: u64,
    /// Set by [`Fanout::end`]: streams opened from now on start ended.
    ended: bool,
}

struct Subscriber<T> {
    id: u64,
    filter: Filter<T>,
    queue: Arc<Queue<T>>,
}

struct Queue<T> {
    state: Mutex<QueueState<T>>,
    /// Woken when an item arrives or the stream ends (one reader per queue).
    ready: Notify,
}

struct QueueState<T> {
    items: VecDeque<Arc<T>>,
    capacity: usize,
    /// Items dropped since the reader was last told.
    missed: u64,
    /// Nothing more is pushed; the reader ends once the queue is empty.
    ended: bool,
}

impl<T> Queue<T> {
    fn end(&self) {
        lock(&self.state).ended = true;
        self.ready.notify_one();
    }
}

/// What a stream hands out.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Received<T> {
    Item(T),
    /// This many items the filter took were dropped (the reader read too slowly).
    Lagged(u64),
}

/// One subscriber's stream; dropping it unsubscribes.
pub(super) struct Receiver<T> {
    id: u64,
    queue: Arc<Queue<T>>,
    fanout: Weak<Shared<T>>,
}

impl<T> Fanout<T> {
    pub(super) fn new() -> Fanout<T> {
        Fanout {
            shared: Arc::new(Shared {
                subscribers: Mutex::new(Subscribers {
                    list: Vec::new(),
                    next_id: 0,
                    ended: false,
                }),
                open: watch::Sender::new(0),
            }),
        }
    }

    /// Queues `item` for every subscriber whose filter takes it; returns at once.
    pub(super) fn send(&self, item: T) {
        // Under the list's lock, so that every subscriber sees the items in the order they were sent.
        let subscribers = lock(&self.shared.subscribers);
        if subscribers.ended || subscribers.list.is_empty() {
            return;
        }
        let item = Arc::new(item);
        for subscriber in subscribers.list.iter().filter(|s| (s.filter)(&item)) {
            let mut state = lock(&subscriber.queue.state);
            if state.items.len() >= state.capacity {
                state.items.pop_front();
                state.missed += 1;
            }
            state.items.push_back(item.clone());
            drop(state);
            subscriber.queue.ready.notify_one();
        }
    }

    /// A stream of the items `filter` takes, from now on, at most `capacity` of them waiting.
    pub(super) fn subscribe(&self, capacity: usize, filter: Filter<T>) -> Receiver<T> {
        let mut subscribers = lock(&self.shared.subscribers);
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                capacity: capacity.max(1),
                missed: 0,
                ended: subscribers.ended,
            }),
            ready: Notify::new(),
        });
        let id = subscribers.next_id;
        subscribers.next_id += 1;
        subscribers.list.push(Subscriber {
            id,
            filter,
            queue: queue.clone(),
        });
        self.shared.open.send_replace(subscribers.list.len());
        Receiver {
            id,
            queue,
            fanout: Arc::downgrade(&self.shared),
        }
    }

    /// Tells every stream, present and future, to end once it has handed out what it holds.
    pub(super) fn end(&self) {
        let mut subscribers = lock(&self.shared.subscribers);
        subscribers.ended = true;
        for subscriber in &subscribers.list {
            subscriber.queue.end();
        }
    }

    /// Resolves when no stream is left.
    pub(super) async fn ended(&self) {
        let mut open = self.shared.open.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = open.wait_for(|open| *open == 0).await;
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Nothing will be sent any more: readers end once they have what they hold.
        let subscribers = self
            .subscribers
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for subscriber in &subscribers.list {
            subscriber.queue.end();
        }
    }
}

impl<T: Clone> Receiver<T> {
    /// The next item, or first the count of those dropped before it; `None` once the stream ended (or the
    /// fanout is gone) and its queue is empty.
    pub(super) async fn recv(&mut self) -> Option<Received<T>> {
        loop {
            {
                let mut state = lock(&self.queue.state);
                if state.missed > 0 {
                    return Some(Received::Lagged(std::mem::take(&mut state.missed)));
                }
                if let Some(item) = state.items.pop_front() {
                    return Some(Received::Item(Arc::unwrap_or_clone(item)));
                }
                if state.ended {
                    return None;
                }
            }
            // A wake-up that came between the check and here is kept as a permit: nothing is lost.
            self.queue.ready.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.fanout.upgrade() {
            let mut subscribers = lock(&shared.subscribers);
            subscribers.list.retain(|s| s.id != self.id);
            shared.open.send_replace(subscribers.list.len());
        }
    }
}

fn lock<S>(mutex: &Mutex<S>) -> MutexGuard<'_, S> {
    // Every critical section here leaves its state consistent (pushes, pops, flags), so a panic elsewhere
    // while holding the lock must not take the bus down with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything() -> Filter<u32> {
        Box::new(|_| true)
    }

    #[tokio::test]
    async fn each_subscriber_queues_only_what_its_filter_takes() {
        let fanout = Fanout::new();
        let mut even = fanout.subscribe(2, Box::new(|n: &u32| n % 2 == 0));
        let mut all = fanout.subscribe(2, everything());
        for n in 1..=5 {
            fanout.send(n);
        }
        // Two of the five fit its queue of two: no lag for the items it did not ask for.
        assert_eq!(even.recv().await, Some(Received::Item(2)));
        assert_eq!(even.recv().await, Some(Received::Item(4)));
        // A full queue drops its oldest: the count first, then the newest.
        assert_eq!(all.recv().await, Some(Received::Lagged(3)));
        assert_eq!(all.recv().await, Some(Received::Item(4)));
        assert_eq!(all.recv().await, Some(Received::Item(5)));
    }

    #[tokio::test]
    async fn an_ended_stream_hands_out_what_it_holds_then_ends() {
        let fanout = Fanout::new();
        let mut stream = fanout.subscribe(8, everything());
        fanout.send(1);
        fanout.send(2);
        fanout.end();
        // Sent after the end: not delivered.
        fanout.send(3);
        assert_eq!(stream.recv().await, Some(Received::Item(1)));
        assert_eq!(stream.recv().await, Some(Received::Item(2)));
        assert_eq!(stream.recv().await, None);
        // A stream opened after the end ends as soon as it is empty.
        let mut late = fanout.subscribe(8, everything());
        assert_eq!(late.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_for_an_item_and_for_the_end() {
        let fanout = Fanout::new();
        let mut stream = fanout.subscribe(8, everything());
        let reader = tokio::spawn(async move {
            let first = stream.recv().await;
            (first, stream.recv().await)
        });
        fanout.send(7);
        fanout.end();
        assert_eq!(reader.await.unwrap(), (Some(Received::Item(7)), None));
    }

    #[tokio::test]
    async fn streams_end_when_the_fanout_is_gone() {
        let fanout = Fanout::new();
        let mut stream = fanout.subscribe(8, everything());
        fanout.send(1);
        drop(fanout);
        assert_eq!(stream.recv().await, Some(Received::Item(1)));
        assert_eq!(stream.recv().await, None);
    }

    #[tokio::test]
    async fn ended_waits_for_the_last_stream_to_be_dropped() {
        let fanout = Fanout::<u32>::new();
        let first = fanout.subscribe(1, everything());
        let second = fanout.subscribe(1, everything());
        let ended = tokio::spawn({
            let fanout = fanout.clone();
            async move { fanout.ended().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!ended.is_finished(), "one stream is still open");
        drop(second);
        ended.await.unwrap();
        // With none open it resolves at once.
        fanout.ended().await;
    }
}
