//! The event queue: a bounded priority queue of timestamped events, popped in time order,
//! ties broken by scheduling order. The simulator's drivers own the event type.
//!
//! Time never runs backwards, so the queue is a radix heap: keys `(time, order)` are
//! bucketed by the highest bit in which they differ from the last key popped. A push appends
//! to a bucket; a pop takes the one key in bucket 0, or first moves the smallest non-empty
//! bucket down (each key moves at most 128 times over its life). That is the order a binary
//! heap gives, without sifting through a large heap's scattered levels on every pop.

use crate::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error(
        "event queue is full ({max} events): a runaway feedback loop in the simulated system?"
    )]
    QueueFull { max: usize },
    #[error("event scheduled at {at}, before the current time {now}")]
    InThePast { at: Instant, now: Instant },
    #[error(
        "the run fired its budget of {max} events by {at}: a runaway feedback loop in the simulated system, or more than it can simulate"
    )]
    BudgetSpent { max: u64, at: Instant },
}

/// Events waiting in the queue at once; a bound, so a bug that schedules without end fails
/// loudly instead of eating memory.
pub const EVENTS_MAX_DEFAULT: usize = 1 << 22;

pub struct Kernel<E> {
    now: Instant,
    seq: u64,
    queue: RadixQueue,
    /// The events, by slot; `free` lists the empty slots.
    slab: Vec<Option<E>>,
    free: Vec<u32>,
    events_max: usize,
    fired: u64,
    /// Events that may fire over the kernel's life: past it nothing more pops, so a run
    /// that would go on without end (in wall time) stops where it is.
    fired_max: u64,
}

impl<E> Default for Kernel<E> {
    fn default() -> Self {
        Self::with_capacity(EVENTS_MAX_DEFAULT)
    }
}

impl<E> Kernel<E> {
    pub fn with_capacity(events_max: usize) -> Self {
        Self {
            now: Instant::ZERO,
            seq: 0,
            queue: RadixQueue::default(),
            slab: Vec::new(),
            free: Vec::new(),
            events_max: events_max.min(u32::MAX as usize),
            fired: 0,
            fired_max: u64::MAX,
        }
    }

    /// Lets at most `max` events fire in all (see [`Kernel::budget_spent`]).
    pub fn set_budget(&mut self, max: u64) {
        self.fired_max = max;
    }

    /// The budget is spent: pops return nothing and the clock stands still, so the driver
    /// tells this apart from an empty queue here and reports it.
    pub fn budget_spent(&self) -> Option<KernelError> {
        (self.fired >= self.fired_max).then_some(KernelError::BudgetSpent {
            max: self.fired_max,
            at: self.now,
        })
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Events popped so far.
    pub fn fired(&self) -> u64 {
        self.fired
    }

    pub fn schedule_at(&mut self, at: Instant, event: E) -> Result<(), KernelError> {
        if at < self.now {
            return Err(KernelError::InThePast { at, now: self.now });
        }
        if self.queue.len() >= self.events_max {
            return Err(KernelError::QueueFull {
                max: self.events_max,
            });
        }
        let slot = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(event);
                i
            }
            None => {
                self.slab.push(Some(event));
                (self.slab.len() - 1) as u32
            }
        };
        self.queue.push(key(at, self.seq), slot);
        // Scheduling 2^64 events would take millennia: reaching it is a bug.
        self.seq = self
            .seq
            .checked_add(1)
            .expect("event sequence number overflow");
        Ok(())
    }

    pub fn schedule_in(&mut self, delay: Duration, event: E) -> Result<(), KernelError> {
        self.schedule_at(self.now + delay, event)
    }

    /// The time of the next event, without popping it.
    pub fn peek_time(&self) -> Option<Instant> {
        self.queue
            .peek()
            .map(|k| Instant::from_micros((k >> 64) as u64))
    }

    /// Pops the next event and advances the clock to it.
    pub fn pop(&mut self) -> Option<(Instant, E)> {
        self.pop_at_most(u128::MAX)
    }

    fn pop_at_most(&mut self, max: u128) -> Option<(Instant, E)> {
        if self.fired >= self.fired_max {
            return None;
        }
        let (k, slot) = self.queue.pop_at_most(max)?;
        let at = Instant::from_micros((k >> 64) as u64);
        debug_assert!(at >= self.now, "time never runs backwards");
        let event = self.slab[slot as usize]
            .take()
            .expect("a queued slot holds its event");
        self.free.push(slot);
        self.now = at;
        self.fired += 1;
        Some((at, event))
    }

    pub fn pop_until(&mut self, deadline: Instant) -> Option<(Instant, E)> {
        // Everything at the deadline, whatever its scheduling order.
        let e = self.pop_at_most(key(deadline, u64::MAX));
        if e.is_none() && self.budget_spent().is_none() {
            self.now = self.now.max(deadline);
        }
        e
    }
}

/// A queue key: the time in the high half, the scheduling order in the low half.
fn key(at: Instant, seq: u64) -> u128 {
    (u128::from(at.as_micros()) << 64) | u128::from(seq)
}

/// A monotone priority queue of unique `u128` keys (each with a slot): no key pushed may
/// be smaller than the last one popped.
#[derive(Debug)]
struct RadixQueue {
    /// Bucket 0 holds keys equal to `last`; bucket `i` > 0 those whose highest bit
    /// differing from `last` is bit `i - 1`.
    buckets: Vec<Vec<(u128, u32)>>,
    last: u128,
    len: usize,
}

impl Default for RadixQueue {
    fn default() -> Self {
        Self {
            buckets: (0..=128).map(|_| Vec::new()).collect(),
            last: 0,
            len: 0,
        }
    }
}

impl RadixQueue {
    fn bucket(&self, k: u128) -> usize {
        128 - (k ^ self.last).leading_zeros() as usize
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, k: u128, slot: u32) {
        debug_assert!(k >= self.last, "keys never go below the last popped");
        let b = self.bucket(k);
        self.buckets[b].push((k, slot));
        self.len += 1;
    }

    /// The smallest key and the bucket holding it.
    fn min(&self) -> Option<(u128, usize)> {
        let i = self.buckets.iter().position(|b| !b.is_empty())?;
        let k = self.buckets[i]
            .iter()
            .map(|(k, _)| *k)
            .min()
            .expect("not empty");
        Some((k, i))
    }

    fn peek(&self) -> Option<u128> {
        self.min().map(|(k, _)| k)
    }

    /// Pops the smallest key if it is at most `max`. Only a key about to be popped becomes
    /// `last` (a key pushed later may lie anywhere above the last popped one).
    fn pop_at_most(&mut self, max: u128) -> Option<(u128, u32)> {
        let (k, i) = self.min().filter(|(k, _)| *k <= max)?;
        if i > 0 {
            self.last = k;
            let mut moving = std::mem::take(&mut self.buckets[i]);
            for &(k, slot) in &moving {
                let b = self.bucket(k);
                self.buckets[b].push((k, slot));
            }
            // Every key moved to a lower bucket: keep the allocation for later pushes.
            moving.clear();
            self.buckets[i] = moving;
        }
        self.len -= 1;
        // Keys are unique: the smallest is alone in bucket 0.
        self.buckets[0].pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    #[test]
    fn equal_times_fire_in_scheduling_order() {
        let mut k = Kernel::default();
        for i in 0..5 {
            k.schedule_at(Instant::from_micros(10), i).unwrap();
        }
        k.schedule_at(Instant::from_micros(5), 99).unwrap();
        let order: Vec<i32> = std::iter::from_fn(|| k.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, vec![99, 0, 1, 2, 3, 4]);
        assert_eq!(k.now(), Instant::from_micros(10));
    }

    #[test]
    fn bounds_and_the_past_are_errors() {
        let mut k = Kernel::with_capacity(2);
        k.schedule_in(Duration::from_secs(1), ()).unwrap();
        k.schedule_in(Duration::from_secs(2), ()).unwrap();
        assert_eq!(
            k.schedule_in(Duration::from_secs(3), ()),
            Err(KernelError::QueueFull { max: 2 })
        );
        k.pop().unwrap();
        assert!(matches!(
            k.schedule_at(Instant::ZERO, ()),
            Err(KernelError::InThePast { .. })
        ));
    }

    /// Issue 19: a scenario that schedules without end (a churn of a crash every nanosecond,
    /// a storm of retransmits) ran until memory ran out. A budget of fired events stops it
    /// where it stands, and says so.
    #[test]
    fn r19_a_run_without_end_spends_its_event_budget() {
        let mut k = Kernel::default();
        k.set_budget(3);
        k.schedule_at(Instant::from_micros(1), 0u32).unwrap();
        let mut fired = 0;
        // Each event schedules the next: without the budget this never ends.
        while let Some((at, n)) = k.pop_until(Instant::from_micros(1_000)) {
            fired += 1;
            k.schedule_at(at + Duration::from_micros(1), n + 1).unwrap();
        }
        assert_eq!(fired, 3);
        assert_eq!(k.now(), Instant::from_micros(3), "the clock stands still");
        assert_eq!(
            k.budget_spent(),
            Some(KernelError::BudgetSpent {
                max: 3,
                at: Instant::from_micros(3)
            })
        );
    }

    #[test]
    fn next_until_advances_to_the_deadline() {
        let mut k = Kernel::default();
        k.schedule_at(Instant::from_micros(100), "late").unwrap();
        assert_eq!(k.pop_until(Instant::from_micros(50)), None);
        assert_eq!(k.now(), Instant::from_micros(50));
        assert_eq!(
            k.pop_until(Instant::from_micros(100)).map(|(_, e)| e),
            Some("late")
        );
    }

    /// A toy system that schedules random follow-ups: the trace is a function of the seed.
    fn trace(seed: u64) -> Vec<(u64, u32)> {
        let mut k = Kernel::default();
        let mut rng = Rng::seed(seed);
        for n in 0..10u32 {
            k.schedule_in(Duration::from_micros(rng.below(1000)), n)
                .unwrap();
        }
        let mut out = Vec::new();
        while let Some((at, n)) = k.pop() {
            out.push((at.as_micros(), n));
            if out.len() < 500 {
                k.schedule_in(Duration::from_micros(rng.below(1000)), (n * 7 + 3) % 100)
                    .unwrap();
            }
        }
        out
    }

    #[test]
    fn runs_replay_bit_for_bit_from_the_seed() {
        assert_eq!(trace(42), trace(42));
        assert_ne!(trace(42), trace(43));
    }

    proptest! {
        /// Any mix of pushes (never before the current time) and pops comes out in the
        /// order a binary heap of `(time, scheduling order)` gives.
        #[test]
        fn the_queue_pops_what_a_binary_heap_pops(
            ops in proptest::collection::vec((0u64..4, 0u64..50), 1..400),
        ) {
            use std::cmp::Reverse;
            use std::collections::BinaryHeap;
            let mut k = Kernel::default();
            let mut reference = BinaryHeap::new();
            let mut seq = 0u64;
            for (op, dt) in ops {
                if op == 0 {
                    let (a, b) = (k.pop(), reference.pop());
                    prop_assert_eq!(a, b.map(|Reverse((t, s))| (Instant::from_micros(t), s)));
                } else if op == 3 {
                    // Up to a deadline: the clock may stop short of the next event, and
                    // later events may be scheduled before it.
                    let deadline = k.now().as_micros() + dt % 8;
                    let b = match reference.peek() {
                        Some(Reverse((t, _))) if *t <= deadline => reference.pop(),
                        _ => None,
                    };
                    let a = k.pop_until(Instant::from_micros(deadline));
                    prop_assert_eq!(a, b.map(|Reverse((t, s))| (Instant::from_micros(t), s)));
                } else {
                    // Offsets from now, repeated often (ties), now and then far ahead.
                    let at = k.now().as_micros() + if op == 2 { dt << 20 } else { dt % 4 };
                    k.schedule_at(Instant::from_micros(at), seq).unwrap();
                    reference.push(Reverse((at, seq)));
                    seq += 1;
                }
            }
            while let Some(b) = reference.pop() {
                let Reverse((t, s)) = b;
                prop_assert_eq!(k.pop(), Some((Instant::from_micros(t), s)));
            }
            prop_assert_eq!(k.pop(), None);
            prop_assert_eq!(k.pending(), 0);
        }

        #[test]
        fn events_pop_in_nondecreasing_time(times in proptest::collection::vec(0u64..1_000, 1..200)) {
            let mut k = Kernel::default();
            for (i, t) in times.iter().enumerate() {
                k.schedule_at(Instant::from_micros(*t), i).unwrap();
            }
            let mut last = (Instant::ZERO, 0usize);
            let mut first = true;
            while let Some((at, i)) = k.pop() {
                if !first {
                    prop_assert!(at > last.0 || (at == last.0 && i > last.1));
                }
                first = false;
                last = (at, i);
            }
        }
    }
}
