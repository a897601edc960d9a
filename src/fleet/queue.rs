//! The queue of manual jobs waiting for a free slot.
//!
//! Ordering: priority first (1 highest … 10 lowest), then arrival (FIFO within a priority), across all
//! agents. A job whose agent is at its limit does not hold back jobs of other agents. Bounded: the owner
//! checks `len()` against its `maxQueued` before pushing. Pure data; the FleetManager owns the limits.

use std::collections::BTreeMap;

use crate::job::JobId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub agent: String,
    pub job_id: JobId,
    pub priority: u8,
}

#[derive(Debug, Default)]
pub struct JobQueue {
    /// Keyed by (priority, arrival number): iteration order is dispatch order.
    entries: BTreeMap<(u8, u64), QueuedJob>,
    arrivals: u64,
}

impl JobQueue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a job; returns its 1-based position among its agent's queued jobs.
    pub fn push(&mut self, agent: &str, job_id: JobId, priority: u8) -> usize {
        self.arrivals += 1;
        self.entries.insert(
            (priority, self.arrivals),
            QueuedJob {
                agent: agent.to_string(),
                job_id: job_id.clone(),
                priority,
            },
        );
        self.position(&job_id).unwrap_or(1)
    }

    /// Removes a queued job; false if it was not queued.
    pub fn remove(&mut self, job_id: &JobId) -> bool {
        let key = self
            .entries
            .iter()
            .find(|(_, q)| &q.job_id == job_id)
            .map(|(k, _)| *k);
        key.is_some_and(|k| self.entries.remove(&k).is_some())
    }

    /// Removes and returns every queued job of `agent` (for an agent removed by reload).
    pub fn drain_agent(&mut self, agent: &str) -> Vec<QueuedJob> {
        let keys: Vec<(u8, u64)> = self
            .entries
            .iter()
            .filter(|(_, q)| q.agent == agent)
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| self.entries.remove(k)).collect()
    }

    /// Removes and returns the first job, in dispatch order, whose agent `can_start` says may run now.
    pub fn pop_runnable(&mut self, mut can_start: impl FnMut(&str) -> bool) -> Option<QueuedJob> {
        let key = self
            .entries
            .iter()
            .find(|(_, q)| can_start(&q.agent))
            .map(|(k, _)| *k)?;
        self.entries.remove(&key)
    }

    /// 1-based position of a job among its agent's queued jobs.
    pub fn position(&self, job_id: &JobId) -> Option<usize> {
        let target = self.entries.values().find(|q| &q.job_id == job_id)?;
        Some(
            self.entries
                .values()
                .filter(|q| q.agent == target.agent)
                .take_while(|q| &q.job_id != job_id)
                .count()
                + 1,
        )
    }

    /// Queued jobs in dispatch order.
    pub fn iter(&self) -> impl Iterator<Item = &QueuedJob> {
        self.entries.values()
    }

    pub fn count_for(&self, agent: &str) -> usize {
        self.entries.values().filter(|q| q.agent == agent).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn id() -> JobId {
        JobId::generate(Utc::now())
    }

    #[test]
    fn fifo_within_priority_and_higher_priority_first() {
        let mut queue = JobQueue::default();
        let (a, b, c, d) = (id(), id(), id(), id());
        assert_eq!(queue.push("x", a.clone(), 5), 1);
        assert_eq!(queue.push("x", b.clone(), 5), 2);
        assert_eq!(queue.push("x", c.clone(), 1), 1);
        assert_eq!(queue.push("x", d.clone(), 10), 4);
        let order: Vec<JobId> = std::iter::from_fn(|| queue.pop_runnable(|_| true))
            .map(|q| q.job_id)
            .collect();
        assert_eq!(order, [c, a, b, d]);
    }

    #[test]
    fn a_blocked_agent_does_not_hold_back_others() {
        let mut queue = JobQueue::default();
        let (a, b) = (id(), id());
        queue.push("busy", a.clone(), 1);
        queue.push("free", b.clone(), 9);
        let next = queue.pop_runnable(|agent| agent == "free").unwrap();
        assert_eq!(next.job_id, b);
        assert_eq!(queue.position(&a), Some(1));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn remove_and_drain() {
        let mut queue = JobQueue::default();
        let (a, b, c) = (id(), id(), id());
        queue.push("x", a.clone(), 5);
        queue.push("y", b.clone(), 5);
        queue.push("x", c.clone(), 5);
        assert!(queue.remove(&b));
        assert!(!queue.remove(&b));
        assert_eq!(queue.position(&c), Some(2));
        let drained = queue.drain_agent("x");
        assert_eq!(drained.len(), 2);
        assert!(queue.is_empty());
    }
}
