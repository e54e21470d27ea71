//! The event queue: a bounded priority queue of timestamped events, popped in time order,
//! ties broken by scheduling order. The simulator's drivers own the event type.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error(
        "event queue is full ({max} events): a runaway feedback loop in the simulated system?"
    )]
    QueueFull { max: usize },
    #[error("event scheduled at {at}, before the current time {now}")]
    InThePast { at: Instant, now: Instant },
}

/// Events waiting in the queue at once; a bound, so a bug that schedules without end fails
/// loudly instead of eating memory.
pub const EVENTS_MAX_DEFAULT: usize = 1 << 22;

pub struct Kernel<E> {
    now: Instant,
    seq: u64,
    /// (time, scheduling order, slab slot): small keys, so sifting moves 24 bytes, not the
    /// event.
    queue: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    /// The events, by slot; `free` lists the empty slots.
    slab: Vec<Option<E>>,
    free: Vec<u32>,
    events_max: usize,
    fired: u64,
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
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            events_max: events_max.min(u32::MAX as usize),
            fired: 0,
        }
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
        self.queue.push(Reverse((at, self.seq, slot)));
        self.seq += 1;
        Ok(())
    }

    pub fn schedule_in(&mut self, delay: Duration, event: E) -> Result<(), KernelError> {
        self.schedule_at(self.now + delay, event)
    }

    /// The time of the next event, without popping it.
    pub fn peek_time(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pops the next event and advances the clock to it.
    pub fn pop(&mut self) -> Option<(Instant, E)> {
        let Reverse((at, _, slot)) = self.queue.pop()?;
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
        match self.peek_time() {
            Some(at) if at <= deadline => self.pop(),
            _ => {
                self.now = self.now.max(deadline);
                None
            }
        }
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
