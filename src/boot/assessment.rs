//! The boot-assessment model: a pure state machine of what the slots hold, how many boot
//! attempts a new slot has left, and which slot GRUB boots next. The GRUB script, the agent's
//! `upgrade`, `boot-complete` and `rollback`, and the harness's checks of real boots all
//! follow it.
//!
//! The rules. Installing writes a good `active` (and the same image as `passive`). An upgrade
//! writes the new image as `active` with `tries` attempts; when the node runs from `active`,
//! the old active becomes `passive` first (rotation); when it runs from `passive` (the active
//! failed), the failed active is simply replaced. At each boot GRUB boots `active` if it is
//! good, or spends one attempt if it is being tried; with no attempts left it marks `active`
//! bad and boots `passive` if good, else `recovery`. A boot whose health checks pass marks its
//! slot good. Kairos allows one attempt and no counter; this model allows `tries` (default 3),
//! never rotates an unproven image into `passive`, and so never loses the last good image.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Attempts a newly written slot gets unless told otherwise.
pub const TRIES_DEFAULT: u8 = 3;
/// Upper bound on attempts: GRUB stores the counter as a decimal string, and a node that
/// needs more than this many tries to boot is broken anyway.
pub const TRIES_MAX: u8 = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Active,
    Passive,
    Recovery,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::Active => "active",
            Slot::Passive => "passive",
            Slot::Recovery => "recovery",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Health {
    /// Nothing installed here.
    Empty,
    /// Booted and passed its health checks.
    Good,
    /// Written, not yet proven; `left` more boot attempts.
    Trying { left: u8 },
    /// Used up its attempts without passing its health checks.
    Bad,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    pub health: Health,
    /// The image version the slot holds, for `status` and for the harness's checks.
    pub version: Option<String>,
}

impl SlotState {
    fn empty() -> Self {
        Self {
            health: Health::Empty,
            version: None,
        }
    }
}

/// Why the last boot went where it went, for `bootyard status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum BootReason {
    ActiveGood,
    ActiveTrying {
        attempt: u8,
        of: u8,
    },
    /// The active slot ran out of attempts; `version` is what it held.
    ActiveFailed {
        version: Option<String>,
    },
    ActiveNotBootable,
    NoGoodSlot,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssessmentError {
    #[error("tries must be 1..={TRIES_MAX}, got {0}")]
    Tries(u8),
    #[error("the running {0} slot has not passed its health checks yet; mark it good (boot-complete) or roll back before upgrading")]
    UnprovenBoot(Slot),
    #[error("cannot roll back: the passive slot is {0:?}, not a good image")]
    NothingToRollBackTo(Health),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootModel {
    pub active: SlotState,
    pub passive: SlotState,
    pub recovery: SlotState,
    /// Attempts a new slot gets.
    pub tries: u8,
    /// Where the last boot went and why.
    pub last_boot: Option<(Slot, BootReason)>,
    /// The slot the running system was booted from, under its current name: a rollback
    /// renames the slot the node is running from.
    pub running: Option<Slot>,
    /// `active.img` is not on COS_STATE (an upgrade cut off between its two renames).
    /// GRUB still spends the attempt, then finds nothing to boot and falls back.
    #[serde(default)]
    pub active_missing: bool,
}

impl BootModel {
    /// A fresh install: `version` in active and passive (both good), and in recovery.
    pub fn installed(version: &str, tries: u8) -> Result<Self, AssessmentError> {
        if tries == 0 || tries > TRIES_MAX {
            return Err(AssessmentError::Tries(tries));
        }
        let good = || SlotState {
            health: Health::Good,
            version: Some(version.to_string()),
        };
        Ok(Self {
            active: good(),
            passive: good(),
            recovery: good(),
            tries,
            last_boot: None,
            running: None,
            active_missing: false,
        })
    }

    pub fn slot(&self, s: Slot) -> &SlotState {
        match s {
            Slot::Active => &self.active,
            Slot::Passive => &self.passive,
            Slot::Recovery => &self.recovery,
        }
    }

    /// What GRUB does at power-on: picks a slot, spending an attempt or marking the active
    /// slot bad as needed. Returns `None` only when nothing at all is bootable.
    pub fn boot(&mut self) -> Option<Slot> {
        let (slot, reason) = match self.active.health {
            Health::Good => (Slot::Active, BootReason::ActiveGood),
            Health::Trying { left } if left > 0 => {
                self.active.health = Health::Trying { left: left - 1 };
                (
                    Slot::Active,
                    BootReason::ActiveTrying {
                        attempt: self.tries - left + 1,
                        of: self.tries,
                    },
                )
            }
            Health::Trying { .. } => {
                self.active.health = Health::Bad;
                (
                    self.fallback()?,
                    BootReason::ActiveFailed {
                        version: self.active.version.clone(),
                    },
                )
            }
            Health::Bad | Health::Empty => {
                let reason = match &self.last_boot {
                    // Keep saying why we left the active slot, boot after boot.
                    Some((_, r @ BootReason::ActiveFailed { .. })) => r.clone(),
                    _ => BootReason::ActiveNotBootable,
                };
                (self.fallback()?, reason)
            }
        };
        let (slot, reason) = if slot == Slot::Active && self.active_missing {
            (self.fallback()?, BootReason::ActiveNotBootable)
        } else {
            (slot, reason)
        };
        let reason = if slot == Slot::Recovery {
            BootReason::NoGoodSlot
        } else {
            reason
        };
        self.last_boot = Some((slot, reason));
        self.running = Some(slot);
        Some(slot)
    }

    fn fallback(&self) -> Option<Slot> {
        if self.passive.health == Health::Good {
            Some(Slot::Passive)
        } else if self.recovery.health == Health::Good {
            Some(Slot::Recovery)
        } else {
            None
        }
    }

    /// The running system passed its health checks.
    pub fn boot_complete(&mut self) {
        let Some(booted) = self.running else { return };
        let s = match booted {
            Slot::Active => &mut self.active,
            Slot::Passive => &mut self.passive,
            Slot::Recovery => &mut self.recovery,
        };
        if matches!(s.health, Health::Trying { .. }) {
            s.health = Health::Good;
        }
    }

    /// Writes `version` as the new active slot, from the running system (or, before the
    /// first boot, from the installer).
    pub fn upgrade(&mut self, version: &str) -> Result<(), AssessmentError> {
        self.active_missing = false;
        let new = SlotState {
            health: Health::Trying { left: self.tries },
            version: Some(version.to_string()),
        };
        // The image the node runs from must be proven before anything is overwritten, and
        // the write never lands on the last good image.
        match self.running.unwrap_or(Slot::Active) {
            Slot::Active => {
                if self.active.health != Health::Good {
                    return Err(AssessmentError::UnprovenBoot(Slot::Active));
                }
                self.passive = std::mem::replace(&mut self.active, new);
            }
            Slot::Passive => {
                if self.passive.health != Health::Good {
                    return Err(AssessmentError::UnprovenBoot(Slot::Passive));
                }
                // The active slot failed (or was rolled away from): replace it.
                self.active = new;
            }
            Slot::Recovery => {
                if self.passive.health != Health::Good && self.active.health == Health::Good {
                    self.passive = std::mem::replace(&mut self.active, new);
                } else {
                    self.active = new;
                }
            }
        }
        Ok(())
    }

    /// Manual switch: the passive image becomes active (and the active one passive). The
    /// running slot keeps running under its new name.
    pub fn rollback(&mut self) -> Result<(), AssessmentError> {
        if self.passive.health != Health::Good {
            return Err(AssessmentError::NothingToRollBackTo(self.passive.health));
        }
        std::mem::swap(&mut self.active, &mut self.passive);
        self.running = match self.running {
            Some(Slot::Active) => Some(Slot::Passive),
            Some(Slot::Passive) => Some(Slot::Active),
            other => other,
        };
        Ok(())
    }

    /// Versions held by good slots; never empty after an install (see the property tests).
    pub fn good_versions(&self) -> Vec<&str> {
        [&self.active, &self.passive]
            .iter()
            .filter(|s| s.health == Health::Good)
            .filter_map(|s| s.version.as_deref())
            .collect()
    }
}

impl Default for SlotState {
    fn default() -> Self {
        Self::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_missing_active_image_spends_the_attempt_and_falls_back() {
        let mut m = BootModel::installed("v1", 2).unwrap();
        m.upgrade("v2").unwrap();
        m.active_missing = true;
        assert_eq!(m.boot(), Some(Slot::Passive));
        assert_eq!(m.active.health, Health::Trying { left: 1 });
        assert_eq!(
            m.last_boot,
            Some((Slot::Passive, BootReason::ActiveNotBootable))
        );
        m.upgrade("v3").unwrap();
        assert!(!m.active_missing);
    }

    #[test]
    fn failed_upgrade_falls_back_after_exactly_tries_attempts() {
        let mut m = BootModel::installed("v1", 3).unwrap();
        assert_eq!(m.boot(), Some(Slot::Active));
        m.upgrade("v2").unwrap();
        for attempt in 1..=3 {
            assert_eq!(m.boot(), Some(Slot::Active));
            assert_eq!(
                m.last_boot.as_ref().unwrap().1,
                BootReason::ActiveTrying { attempt, of: 3 }
            );
        }
        assert_eq!(m.boot(), Some(Slot::Passive));
        assert_eq!(m.passive.version.as_deref(), Some("v1"));
        assert_eq!(m.active.health, Health::Bad);
        assert_eq!(
            m.last_boot.as_ref().unwrap().1,
            BootReason::ActiveFailed {
                version: Some("v2".into())
            }
        );
        // Still says why on the next boot, too.
        assert_eq!(m.boot(), Some(Slot::Passive));
        assert!(matches!(
            m.last_boot.as_ref().unwrap().1,
            BootReason::ActiveFailed { .. }
        ));
    }

    #[test]
    fn good_upgrade_rotates_and_a_stale_bad_mark_does_not_leak_into_the_next_upgrade() {
        let mut m = BootModel::installed("v1", 2).unwrap();
        m.boot();
        m.upgrade("v2").unwrap();
        assert_eq!(m.boot(), Some(Slot::Active));
        m.boot_complete();
        assert_eq!(
            (m.active.health, m.passive.version.as_deref()),
            (Health::Good, Some("v1"))
        );
        m.upgrade("v3").unwrap();
        m.boot();
        m.boot();
        assert_eq!(m.boot(), Some(Slot::Passive), "v3 failed twice");
        // Kairos's stale-flag bug: the next upgrade fell back at once. Here v4 gets its tries.
        m.upgrade("v4").unwrap();
        assert_eq!(m.boot(), Some(Slot::Active));
        assert_eq!(m.active.version.as_deref(), Some("v4"));
        assert_eq!(
            m.passive.version.as_deref(),
            Some("v2"),
            "the good image was kept, not the failed one"
        );
    }

    #[test]
    fn refuses_to_rotate_an_unproven_image_into_passive() {
        let mut m = BootModel::installed("v1", 3).unwrap();
        m.upgrade("v2").unwrap();
        m.boot();
        assert_eq!(
            m.upgrade("v3"),
            Err(AssessmentError::UnprovenBoot(Slot::Active))
        );
        assert!(BootModel::installed("v1", 0).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Power on; the booted system passes its checks if `healthy`.
        Boot {
            healthy: bool,
        },
        Upgrade,
        Rollback,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![3 => any::<bool>().prop_map(|healthy| Op::Boot { healthy }), 1 => Just(Op::Upgrade), 1 => Just(Op::Rollback)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Safety: whatever happens, a good image stays bootable, and GRUB never boots a
        /// slot marked bad while a good one exists.
        #[test]
        fn a_good_slot_is_never_lost_and_bad_slots_never_boot(tries in 1u8..=TRIES_MAX, ops in proptest::collection::vec(op(), 0..60)) {
            let mut m = BootModel::installed("v0", tries).unwrap();
            for (n, o) in ops.into_iter().enumerate() {
                match o {
                    Op::Boot { healthy } => {
                        let before = m.clone();
                        let slot = m.boot().expect("something is always bootable");
                        prop_assert_ne!(before.slot(slot).health, Health::Bad);
                        if slot == Slot::Recovery {
                            prop_assert!(before.good_versions().is_empty());
                        }
                        // A tried slot's health decides; good slots pass.
                        let tried = matches!(before.slot(slot).health, Health::Trying { .. });
                        if healthy || !tried {
                            m.boot_complete();
                        }
                    }
                    Op::Upgrade => {
                        // Refusals are part of the model; the invariant below still holds.
                        let _ = m.upgrade(&format!("v{}", n + 1));
                    }
                    Op::Rollback => {
                        // Refused when there is nothing good to roll back to.
                        let _ = m.rollback();
                    }
                }
                prop_assert!(!m.good_versions().is_empty(), "lost every good image: {m:?}");
            }
        }

        /// Liveness: an upgrade that never passes its checks ends, within `tries` + 1 boots,
        /// on the version that was running before it.
        #[test]
        fn a_failed_upgrade_returns_to_the_previous_good_version(tries in 1u8..=TRIES_MAX, good_boots in 0usize..4) {
            let mut m = BootModel::installed("v1", tries).unwrap();
            for _ in 0..good_boots {
                m.boot().unwrap();
                m.boot_complete();
            }
            m.upgrade("v2").unwrap();
            let mut landed = None;
            for _ in 0..=tries {
                let s = m.boot().unwrap();
                if m.slot(s).health == Health::Good {
                    landed = Some(s);
                    break;
                }
            }
            let s = landed.expect("fell back within tries + 1 boots");
            prop_assert_eq!(m.slot(s).version.as_deref(), Some("v1"));
        }
    }
}
