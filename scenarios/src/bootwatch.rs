//! Reading one boot of a bootyard node off its serial console, sans IO: the caller feeds
//! lines; the watch says which slot and version came up and how the boot ended. The markers
//! are the node's console protocol: GRUB's kernel command line (`bootyard.slot=`), the
//! stage's `BOOTYARD-STAGE`, the agent's `BOOTYARD-BOOT-COMPLETE` / `BOOTYARD-HEALTH-FAILED`,
//! the kernel's panic and watchdog messages, and the test-image hook's `BOOTYARD-HOOK-DONE`.

use serde::Serialize;

/// How a boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Health checks passed and the slot was marked good.
    Complete,
    /// A health check failed; the agent rebooted.
    HealthFailed,
    /// The initrd stage could not bring the slot up; it rebooted.
    StageFailed,
    /// The kernel panicked (and rebooted after `panic=`).
    Panic,
    /// Nothing proved the boot in time; the watchdog reset the machine.
    Watchdog,
}

impl Outcome {
    /// The outcome a test image with this breakage must have.
    pub fn expected_for(breakage: Option<&str>) -> Outcome {
        match breakage {
            None => Outcome::Complete,
            Some("panic") => Outcome::Panic,
            Some("health-fails") => Outcome::HealthFailed,
            // "hang", "never-good": only the watchdog ends them.
            Some(_) => Outcome::Watchdog,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BootWatch {
    pub slot: Option<String>,
    pub version: Option<String>,
    pub outcome: Option<Outcome>,
    /// The test hook's exit code, once it finished.
    pub hook_rc: Option<i32>,
    /// Upgrade or rollback steps the node announced, in order.
    pub steps: Vec<String>,
    /// The first line that told of a failure, for the report.
    pub failure_line: Option<String>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

impl BootWatch {
    pub fn line(&mut self, text: &str) {
        if text.contains("Command line:") && self.slot.is_none() {
            self.slot = field(text, "bootyard.slot=").map(String::from);
        }
        if let Some(rest) = text.split("BOOTYARD-STAGE ").nth(1) {
            if let Some(s) = field(rest, "slot=") {
                self.slot = Some(s.to_string());
            }
            self.version = field(rest, "version=").map(String::from);
        }
        let ended = if text.contains("BOOTYARD-BOOT-COMPLETE") {
            Some(Outcome::Complete)
        } else if text.contains("BOOTYARD-HEALTH-FAILED") {
            Some(Outcome::HealthFailed)
        } else if text.contains("BOOTYARD-STAGE-FAILED") {
            Some(Outcome::StageFailed)
        } else if text.contains("Kernel panic - not syncing") {
            Some(Outcome::Panic)
        } else if text.contains("softdog: Initiating system reboot") {
            Some(Outcome::Watchdog)
        } else {
            None
        };
        if let Some(rest) = text.split("BOOTYARD-BOOT-COMPLETE ").nth(1) {
            if self.version.is_none() {
                self.version = field(rest, "version=").map(String::from);
            }
        }
        if let (Some(o), None) = (ended, self.outcome) {
            self.outcome = Some(o);
            if o != Outcome::Complete {
                self.failure_line = Some(text.trim().to_string());
            }
        }
        if let Some(rc) = text
            .split("BOOTYARD-HOOK-DONE rc=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
        {
            self.hook_rc = Some(rc);
        }
        for marker in ["bootyard-upgrade: step ", "bootyard-rollback: "] {
            if let Some(rest) = text.split(marker).nth(1) {
                self.steps.push(rest.trim().to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(lines: &[&str]) -> BootWatch {
        let mut w = BootWatch::default();
        for l in lines {
            w.line(l);
        }
        w
    }

    #[test]
    fn a_good_boot_with_an_upgrade() {
        let w = watch(&[
            "[    0.000000] Command line: BOOT_IMAGE=(loop0)/boot/vmlinuz console=ttyS0 bootyard.slot=active",
            "BOOTYARD-STAGE slot=active version=v1 ms=841 watchdog_sec=40",
            "BOOTYARD-BOOT-COMPLETE slot=active version=v1 was=Good uptime_ms=3170",
            "bootyard-upgrade: step 1/8 remove_stale_transition",
            "bootyard-upgrade: step 2/8 write_transition",
            "BOOTYARD-HOOK-DONE rc=0",
        ]);
        assert_eq!(w.slot.as_deref(), Some("active"));
        assert_eq!(w.version.as_deref(), Some("v1"));
        assert_eq!(w.outcome, Some(Outcome::Complete));
        assert_eq!(w.hook_rc, Some(0));
        assert_eq!(
            w.steps,
            ["1/8 remove_stale_transition", "2/8 write_transition"]
        );
        assert_eq!(w.failure_line, None);
    }

    #[test]
    fn failures_are_told_apart() {
        let panic = watch(&[
            "Command line: console=ttyS0 panic=5 bootyard.slot=active",
            "[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
        ]);
        assert_eq!(
            (
                panic.slot.as_deref(),
                panic.version.as_deref(),
                panic.outcome
            ),
            (Some("active"), None, Some(Outcome::Panic))
        );
        let dog = watch(&[
            "BOOTYARD-STAGE slot=active version=v3 ms=900 watchdog_sec=20",
            "BOOTYARD-USERSPACE version=v3 flavor=busybox",
            "[   23.1] softdog: Initiating system reboot",
        ]);
        assert_eq!(dog.outcome, Some(Outcome::Watchdog));
        // The first failure wins: a panic after a failed health check is the same boot.
        let hf = watch(&[
            "BOOTYARD-HEALTH-FAILED slot=active version=v3 deliberately-broken: exit status: 1",
            "Kernel panic - not syncing: Attempted to kill init!",
        ]);
        assert_eq!(hf.outcome, Some(Outcome::HealthFailed));
        assert!(hf.failure_line.unwrap().contains("deliberately-broken"));
    }

    #[test]
    fn expected_outcomes_per_breakage() {
        assert_eq!(Outcome::expected_for(None), Outcome::Complete);
        assert_eq!(Outcome::expected_for(Some("panic")), Outcome::Panic);
        assert_eq!(Outcome::expected_for(Some("hang")), Outcome::Watchdog);
        assert_eq!(Outcome::expected_for(Some("never-good")), Outcome::Watchdog);
        assert_eq!(
            Outcome::expected_for(Some("health-fails")),
            Outcome::HealthFailed
        );
    }
}
