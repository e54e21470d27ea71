//! The grub.cfg that carries out the boot-assessment model at every power-on, and the
//! mapping between the model and the grubenv variables GRUB keeps it in.
//!
//! GRUB's script language has no arithmetic, so the tries counter is decremented by a chain
//! of comparisons (one branch per value up to `TRIES_MAX`), as Fedora's boot counting does.

use super::assessment::{BootModel, BootReason, Health, Slot, SlotState, TRIES_MAX};
use super::grubenv::{GrubEnv, GrubEnvError};

pub const VAR_ACTIVE_STATE: &str = "bootyard_active_state";
pub const VAR_ACTIVE_TRIES: &str = "bootyard_active_tries";
pub const VAR_ACTIVE_VERSION: &str = "bootyard_active_version";
pub const VAR_PASSIVE_STATE: &str = "bootyard_passive_state";
pub const VAR_PASSIVE_VERSION: &str = "bootyard_passive_version";
pub const VAR_RECOVERY_STATE: &str = "bootyard_recovery_state";
pub const VAR_TRIES: &str = "bootyard_tries";
pub const VAR_LAST_SLOT: &str = "bootyard_last_slot";
pub const VAR_LAST_REASON: &str = "bootyard_last_reason";
/// Attempts the active slot had left after the last trying boot: the attempt number
/// survives the slot being marked good (which clears the counter).
pub const VAR_LAST_LEFT: &str = "bootyard_last_left";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvModelError {
    #[error("grubenv variable {name} is missing")]
    Missing { name: &'static str },
    #[error("grubenv variable {name} has value {value:?}")]
    Bad { name: &'static str, value: String },
    #[error(transparent)]
    Env(#[from] GrubEnvError),
}

fn state_name(h: Health) -> &'static str {
    match h {
        Health::Empty => "empty",
        Health::Good => "good",
        Health::Trying { .. } => "trying",
        Health::Bad => "bad",
    }
}

/// Writes the model into grubenv variables (others in `env` are kept).
pub fn model_to_env(m: &BootModel, env: &mut GrubEnv) -> Result<(), GrubEnvError> {
    env.set(VAR_ACTIVE_STATE, state_name(m.active.health))?;
    let left = match m.active.health {
        Health::Trying { left } => left,
        _ => 0,
    };
    env.set(VAR_ACTIVE_TRIES, &left.to_string())?;
    env.set(
        VAR_ACTIVE_VERSION,
        m.active.version.as_deref().unwrap_or(""),
    )?;
    env.set(VAR_PASSIVE_STATE, state_name(m.passive.health))?;
    env.set(
        VAR_PASSIVE_VERSION,
        m.passive.version.as_deref().unwrap_or(""),
    )?;
    env.set(VAR_RECOVERY_STATE, state_name(m.recovery.health))?;
    env.set(VAR_TRIES, &m.tries.to_string())?;
    Ok(())
}

fn get<'a>(env: &'a GrubEnv, name: &'static str) -> Result<&'a str, EnvModelError> {
    env.get(name).ok_or(EnvModelError::Missing { name })
}

fn health(env: &GrubEnv, name: &'static str, left: u8) -> Result<Health, EnvModelError> {
    match get(env, name)? {
        "empty" => Ok(Health::Empty),
        "good" => Ok(Health::Good),
        "trying" => Ok(Health::Trying { left }),
        "bad" => Ok(Health::Bad),
        other => Err(EnvModelError::Bad {
            name,
            value: other.to_string(),
        }),
    }
}

fn version(env: &GrubEnv, name: &'static str) -> Option<String> {
    env.get(name).filter(|v| !v.is_empty()).map(str::to_string)
}

/// Reads the model back from what GRUB (or the agent) left in grubenv.
pub fn env_to_model(env: &GrubEnv) -> Result<BootModel, EnvModelError> {
    let num = |name: &'static str| -> Result<u8, EnvModelError> {
        let v = get(env, name)?;
        v.parse::<u8>()
            .ok()
            .filter(|n| *n <= TRIES_MAX)
            .ok_or(EnvModelError::Bad {
                name,
                value: v.to_string(),
            })
    };
    let tries = num(VAR_TRIES)?;
    let left = num(VAR_ACTIVE_TRIES)?;
    let last_slot = match env.get(VAR_LAST_SLOT) {
        Some("active") => Some(Slot::Active),
        Some("passive") => Some(Slot::Passive),
        Some("recovery") => Some(Slot::Recovery),
        _ => None,
    };
    let reason = match (env.get(VAR_LAST_REASON), last_slot) {
        (Some("active_good"), _) => Some(BootReason::ActiveGood),
        (Some("active_trying"), _) => Some(BootReason::ActiveTrying {
            attempt: tries.saturating_sub(
                env.get(VAR_LAST_LEFT)
                    .and_then(|v| v.parse::<u8>().ok())
                    .unwrap_or(left),
            ),
            of: tries,
        }),
        (Some("active_failed"), _) => Some(BootReason::ActiveFailed {
            version: version(env, VAR_ACTIVE_VERSION),
        }),
        (Some("active_not_bootable"), _) => Some(BootReason::ActiveNotBootable),
        (Some("no_good_slot"), _) => Some(BootReason::NoGoodSlot),
        _ => None,
    };
    Ok(BootModel {
        active: SlotState {
            health: health(env, VAR_ACTIVE_STATE, left)?,
            version: version(env, VAR_ACTIVE_VERSION),
        },
        passive: SlotState {
            health: health(env, VAR_PASSIVE_STATE, 0)?,
            version: version(env, VAR_PASSIVE_VERSION),
        },
        recovery: SlotState {
            health: health(env, VAR_RECOVERY_STATE, 0)?,
            version: None,
        },
        tries,
        last_boot: last_slot.zip(reason),
        running: None,
        active_missing: false,
    })
}

/// The configuration embedded in core.img: talk on the serial console, find COS_STATE by
/// its label, and hand over to its grub.cfg.
pub const EARLY_CFG: &str = "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\nsearch --no-floppy --label COS_STATE --set root\nconfigfile ($root)/grub2/grub.cfg\n";

/// Where GRUB looks for modules and grub.cfg on COS_STATE.
pub const PREFIX: &str = "/grub2";

/// Where the pieces are, as GRUB sees them once `$root` is COS_STATE.
#[derive(Debug, Clone)]
pub struct GrubCfgOptions {
    pub grubenv: String,
    /// Extra kernel command line, after `console=ttyS0`.
    pub cmdline: String,
}

impl Default for GrubCfgOptions {
    fn default() -> Self {
        Self {
            grubenv: "/grub2/grubenv".into(),
            // A panicking kernel reboots after a second: the console keeps the message, and
            // the tries counter (not a person at the screen) decides what happens next.
            cmdline: "panic=1".into(),
        }
    }
}

/// The grub.cfg: choose a slot per the model, record the choice, boot the slot image.
pub fn render(opts: &GrubCfgOptions) -> String {
    let mut s = String::new();
    s.push_str("# Generated by bootyard: boot assessment with a tries counter. Do not edit.\n");
    s.push_str("set timeout=0\n");
    s.push_str(&format!("load_env --file ($root){}\n", opts.grubenv));
    s.push_str("set slot=\"\"\n");
    s.push_str(&format!("if [ \"${{{VAR_ACTIVE_STATE}}}\" = \"good\" ]; then\n  set slot=active\n  set {VAR_LAST_REASON}=active_good\n"));
    s.push_str(&format!(
        "elif [ \"${{{VAR_ACTIVE_STATE}}}\" = \"trying\" ]; then\n"
    ));
    for left in (1..=TRIES_MAX).rev() {
        let kw = if left == TRIES_MAX { "if" } else { "elif" };
        s.push_str(&format!("  {kw} [ \"${{{VAR_ACTIVE_TRIES}}}\" = \"{left}\" ]; then\n    set {VAR_ACTIVE_TRIES}={}\n    set {VAR_LAST_LEFT}={}\n    set slot=active\n    set {VAR_LAST_REASON}=active_trying\n", left - 1, left - 1));
    }
    s.push_str(&format!("  else\n    set {VAR_ACTIVE_STATE}=bad\n    set {VAR_LAST_REASON}=active_failed\n  fi\nelse\n  if [ \"${{{VAR_LAST_REASON}}}\" != \"active_failed\" ]; then\n    set {VAR_LAST_REASON}=active_not_bootable\n  fi\nfi\n"));
    // A missing slot file (an upgrade cut off between its renames) is not bootable.
    s.push_str(&format!("if [ \"$slot\" = \"active\" ]; then\n  if [ -f ($root)/cOS/active.img ]; then\n    true\n  else\n    set slot=\"\"\n    set {VAR_LAST_REASON}=active_not_bootable\n  fi\nfi\n"));
    s.push_str(&format!("if [ -z \"$slot\" ]; then\n  if [ \"${{{VAR_PASSIVE_STATE}}}\" = \"good\" ]; then\n    set slot=passive\n  else\n    set slot=recovery\n    set {VAR_LAST_REASON}=no_good_slot\n  fi\nfi\n"));
    s.push_str(&format!("set {VAR_LAST_SLOT}=$slot\n"));
    s.push_str(&format!("save_env --file ($root){} {VAR_ACTIVE_STATE} {VAR_ACTIVE_TRIES} {VAR_LAST_SLOT} {VAR_LAST_REASON} {VAR_LAST_LEFT}\n", opts.grubenv));
    s.push_str("echo \"bootyard: booting slot $slot\"\n");
    // Recovery lives on its own partition.
    s.push_str("set imgroot=$root\nif [ \"$slot\" = \"recovery\" ]; then\n  search --no-floppy --label COS_RECOVERY --set imgroot\nfi\n");
    s.push_str("loopback loop0 ($imgroot)/cOS/${slot}.img\n");
    s.push_str(&format!(
        // root= and cos-img/filename= are what Kairos's initrd (immucore) reads; bootyard's
        // reads bootyard.slot=.
        "linux (loop0)/boot/vmlinuz console=ttyS0 {} root=LABEL=COS_STATE cos-img/filename=/cOS/${{slot}}.img bootyard.slot=$slot\n",
        opts.cmdline
    ));
    s.push_str("initrd (loop0)/boot/initrd\n");
    s.push_str("boot\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_round_trips_through_grubenv() {
        let mut m = BootModel::installed("v1", 3).unwrap();
        m.upgrade("v2").unwrap();
        m.boot();
        let mut env = GrubEnv::new();
        model_to_env(&m, &mut env).unwrap();
        let back = env_to_model(&env).unwrap();
        assert_eq!(
            (back.active.clone(), back.passive.clone(), back.tries),
            (m.active.clone(), m.passive.clone(), m.tries)
        );
        let block = env.to_block().unwrap();
        assert_eq!(
            env_to_model(&GrubEnv::parse(&block).unwrap())
                .unwrap()
                .active,
            m.active
        );
    }

    #[test]
    fn the_attempt_number_survives_marking_the_slot_good() {
        let mut m = BootModel::installed("v1", 3).unwrap();
        m.upgrade("v2").unwrap();
        let mut env = GrubEnv::new();
        model_to_env(&m, &mut env).unwrap();
        // What grub.cfg does on the first trying boot: 3 -> 2 left.
        env.set(VAR_ACTIVE_TRIES, "2").unwrap();
        env.set(VAR_LAST_LEFT, "2").unwrap();
        env.set(VAR_LAST_SLOT, "active").unwrap();
        env.set(VAR_LAST_REASON, "active_trying").unwrap();
        let mut back = env_to_model(&env).unwrap();
        let first = Some((Slot::Active, BootReason::ActiveTrying { attempt: 1, of: 3 }));
        assert_eq!(back.last_boot, first);
        back.running = Some(Slot::Active);
        back.boot_complete();
        model_to_env(&back, &mut env).unwrap();
        assert_eq!(env.get(VAR_ACTIVE_TRIES), Some("0"));
        assert_eq!(env_to_model(&env).unwrap().last_boot, first);
    }

    #[test]
    fn bad_env_values_are_named() {
        let mut env = GrubEnv::new();
        model_to_env(&BootModel::installed("v1", 3).unwrap(), &mut env).unwrap();
        env.set(VAR_ACTIVE_TRIES, "12").unwrap();
        assert_eq!(
            env_to_model(&env).unwrap_err(),
            EnvModelError::Bad {
                name: VAR_ACTIVE_TRIES,
                value: "12".into()
            }
        );
        env.unset(VAR_TRIES);
        assert_eq!(
            env_to_model(&env).unwrap_err(),
            EnvModelError::Missing { name: VAR_TRIES }
        );
    }

    #[test]
    fn grub_cfg_has_a_branch_per_tries_value() {
        let cfg = render(&GrubCfgOptions::default());
        for left in 1..=TRIES_MAX {
            assert!(
                cfg.contains(&format!("\"${{{VAR_ACTIVE_TRIES}}}\" = \"{left}\"")),
                "{cfg}"
            );
        }
        assert_eq!(
            cfg.matches(" if ").count() + cfg.matches("\nif ").count(),
            cfg.matches("fi\n").count()
        );
    }
}
