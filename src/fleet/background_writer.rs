//! What the fleet's two writers share (`state_writer`, `record_writer`): changes are pending under the
//! fleet lock, and a task writes them soon after it is woken, one batch at a time in the blocking pool; a
//! batch is taken while `io` is held, so batches land in the order they were taken. A flush writes what
//! is pending now and returns when it is written; dropping the writer writes what is left, on the
//! dropping thread, before anything the fleet holds after it (the state directory's lock) is released.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::events::{report_state_error, EventBus};

/// What a writer keeps pending and how it writes it.
pub(super) trait Batches: Send + Sync + 'static {
    /// What it writes, for error messages ("job records").
    const WHAT: &'static str;

    /// Takes what is pending and writes it; blocking. Called with the writer's `io` held.
    fn write_batch(&self);
}

struct Inner<B> {
    batches: B,
    io: Mutex<()>,
    wake: Notify,
    closed: AtomicBool,
    events: EventBus,
}

/// A lock whose holder panicked still guards consistent data in the writers: every update is one
/// assignment or one push.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: Batches> Inner<B> {
    fn write(&self) {
        let _io = lock(&self.io);
        self.batches.write_batch();
    }
}

/// A writer's handle: what it writes, and the task that writes it.
pub(super) struct BackgroundWriter<B: Batches> {
    inner: Arc<Inner<B>>,
}

impl<B: Batches> BackgroundWriter<B> {
    /// Starts the writing task; errors of the task itself are reported on `events`.
    pub(super) fn start(batches: B, events: EventBus) -> BackgroundWriter<B> {
        let inner = Arc::new(Inner {
            batches,
            io: Mutex::new(()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            events,
        });
        tokio::spawn(write_when_woken(inner.clone()));
        BackgroundWriter { inner }
    }

    pub(super) fn batches(&self) -> &B {
        &self.inner.batches
    }

    /// Something was made pending: write it soon.
    pub(super) fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// A handle to write what is pending, usable without holding the fleet lock.
    pub(super) fn flusher(&self) -> Flusher<B> {
        Flusher(self.inner.clone())
    }
}

impl<B: Batches> Drop for BackgroundWriter<B> {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
        self.inner.write();
    }
}

/// Writes what a [`BackgroundWriter`] has pending.
pub(super) struct Flusher<B: Batches>(Arc<Inner<B>>);

impl<B: Batches> Flusher<B> {
    /// Writes whatever is pending now, in the blocking pool; returns when it is on disk (or reported).
    pub(super) async fn flush(self) {
        let inner = self.0.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || inner.write()).await {
            report_state_error(&self.0.events, &format!("writing {} failed: {e}", B::WHAT));
        }
    }
}

async fn write_when_woken<B: Batches>(inner: Arc<Inner<B>>) {
    loop {
        inner.wake.notified().await;
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let writing = inner.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || writing.write()).await {
            report_state_error(&inner.events, &format!("writing {} failed: {e}", B::WHAT));
        }
    }
}
