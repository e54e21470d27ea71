//! A sans-IO phase tracker: the caller feeds console lines and the current time (ms since the
//! run started) and asks when the next deadline falls; the tracker says which phase passed or
//! timed out. It never reads a clock, so it runs the same under a real QEMU and in tests.

use crate::file::PhaseSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseEvent {
    Passed {
        phase: String,
        at_ms: u64,
        took_ms: u64,
    },
    TimedOut {
        phase: String,
        at_ms: u64,
        deadline_ms: u64,
    },
}

#[derive(Debug, Clone)]
pub struct PhaseTracker {
    phases: Vec<PhaseSpec>,
    current: usize,
    started_ms: u64,
    failed: bool,
}

impl PhaseTracker {
    pub fn new(phases: Vec<PhaseSpec>, now_ms: u64) -> Self {
        Self {
            phases,
            current: 0,
            started_ms: now_ms,
            failed: false,
        }
    }

    pub fn current(&self) -> Option<&str> {
        if self.failed {
            return None;
        }
        self.phases.get(self.current).map(|p| p.name.as_str())
    }

    pub fn done(&self) -> bool {
        !self.failed && self.current == self.phases.len()
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// When the current phase times out, if one is running.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.failed {
            return None;
        }
        self.phases
            .get(self.current)
            .map(|p| self.started_ms + p.deadline_s * 1000)
    }

    /// A console line arrived at `now_ms`. A line can complete several phases at once when
    /// their markers all appear in it.
    pub fn handle_line(&mut self, now_ms: u64, line: &str) -> Vec<PhaseEvent> {
        let mut out = self.handle_timeout(now_ms);
        while !self.failed {
            let Some(p) = self.phases.get(self.current) else {
                break;
            };
            if !line.contains(&p.marker) {
                break;
            }
            out.push(PhaseEvent::Passed {
                phase: p.name.clone(),
                at_ms: now_ms,
                took_ms: now_ms - self.started_ms,
            });
            self.current += 1;
            self.started_ms = now_ms;
        }
        out
    }

    /// Time has reached `now_ms`; fails the current phase if its deadline passed.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Vec<PhaseEvent> {
        match self.poll_timeout() {
            Some(deadline) if now_ms >= deadline => {
                self.failed = true;
                vec![PhaseEvent::TimedOut {
                    phase: self.phases[self.current].name.clone(),
                    at_ms: now_ms,
                    deadline_ms: deadline,
                }]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn phases() -> Vec<PhaseSpec> {
        vec![
            PhaseSpec {
                name: "bootloader".into(),
                deadline_s: 5,
                marker: "GRUB".into(),
            },
            PhaseSpec {
                name: "kernel".into(),
                deadline_s: 10,
                marker: "Linux version".into(),
            },
            PhaseSpec {
                name: "agent".into(),
                deadline_s: 20,
                marker: "boot-complete".into(),
            },
        ]
    }

    #[test]
    fn phases_pass_in_order_with_their_durations() {
        let mut t = PhaseTracker::new(phases(), 1000);
        assert_eq!(t.poll_timeout(), Some(6000));
        assert!(
            t.handle_line(1500, "Linux version 6.1").is_empty(),
            "a later marker does not skip a phase"
        );
        assert_eq!(
            t.handle_line(2000, "Welcome to GRUB"),
            vec![PhaseEvent::Passed {
                phase: "bootloader".into(),
                at_ms: 2000,
                took_ms: 1000
            }]
        );
        assert_eq!(t.poll_timeout(), Some(12_000));
        t.handle_line(4000, "Linux version 6.1");
        t.handle_line(9000, "bootyard: boot-complete");
        assert!(t.done());
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn a_missed_deadline_fails_the_phase_once() {
        let mut t = PhaseTracker::new(phases(), 0);
        t.handle_line(100, "GRUB");
        let ev = t.handle_timeout(10_100);
        assert_eq!(
            ev,
            vec![PhaseEvent::TimedOut {
                phase: "kernel".into(),
                at_ms: 10_100,
                deadline_ms: 10_100
            }]
        );
        assert!(t.failed());
        assert!(
            t.handle_line(10_200, "Linux version").is_empty(),
            "nothing passes after a failure"
        );
        assert!(t.handle_timeout(99_999).is_empty());
    }

    proptest! {
        /// Whatever the lines and times, the tracker ends either done, failed, or waiting with
        /// a deadline in the future, and phases pass in declaration order.
        #[test]
        fn never_passes_out_of_order(steps in proptest::collection::vec((0u64..3000, 0usize..4), 0..40)) {
            let markers = ["GRUB", "Linux version", "boot-complete", "noise"];
            let mut t = PhaseTracker::new(phases(), 0);
            let mut now = 0;
            let mut passed = Vec::new();
            for (dt, m) in steps {
                now += dt;
                for e in t.handle_line(now, markers[m]) {
                    if let PhaseEvent::Passed { phase, .. } = e { passed.push(phase); }
                }
                if let Some(d) = t.poll_timeout() { prop_assert!(d > now); }
            }
            let expected: Vec<String> = phases().into_iter().map(|p| p.name).take(passed.len()).collect();
            prop_assert_eq!(passed, expected);
        }
    }
}
