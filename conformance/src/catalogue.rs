//! The check catalogue as code: every check's stable ID, title, level, profile and the
//! catalogue version that introduced it. `conformance/SPEC.md` is the same catalogue for
//! people (with what each check verifies, why, and how to fix it); a test below holds the two
//! in agreement.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::check::CheckId;

/// The catalogue version this build judges against (SPEC.md's "Catalogue version").
pub const CATALOGUE_VERSION: u32 = 1;

/// How much a check's failure weighs: a failed MUST fails the run, a failed SHOULD or MAY is a
/// warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Must,
    Should,
    May,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::May => "MAY",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A group of checks that need the same environment (see SPEC.md's profile table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Image,
    Container,
    Boot,
    Upgrade,
    Mesh,
    K3s,
}

impl Profile {
    pub const ALL: [Profile; 6] = [
        Profile::Image,
        Profile::Container,
        Profile::Boot,
        Profile::Upgrade,
        Profile::Mesh,
        Profile::K3s,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Image => "image",
            Profile::Container => "container",
            Profile::Boot => "boot",
            Profile::Upgrade => "upgrade",
            Profile::Mesh => "mesh",
            Profile::K3s => "k3s",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown profile {0:?} (known: image, container, boot, upgrade, mesh, k3s)")]
pub struct ProfileError(String);

impl FromStr for Profile {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| ProfileError(s.to_string()))
    }
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckDef {
    pub id: &'static str,
    pub title: &'static str,
    pub level: Level,
    pub profile: Profile,
    /// The catalogue version that introduced the check.
    pub since: u32,
}

impl CheckDef {
    pub fn check_id(&self) -> CheckId {
        self.id.parse().expect("catalogue IDs are valid (tested)")
    }
}

const fn def(id: &'static str, level: Level, profile: Profile, title: &'static str) -> CheckDef {
    CheckDef {
        id,
        title,
        level,
        profile,
        since: 1,
    }
}

use Level::{Must, Should};
use Profile::{Boot, Container, Image, Upgrade};

/// Every check, in catalogue order.
pub const CHECKS: &[CheckDef] = &[
    def(
        "IMG-001",
        Must,
        Image,
        "The kernel is a bootable Linux kernel image",
    ),
    def("IMG-002", Must, Image, "The initrd is an initramfs"),
    def("IMG-003", Must, Image, "The initramfs has an init"),
    def(
        "IMG-004",
        Must,
        Image,
        "Exactly one kernel module tree, matching the kernel",
    ),
    def(
        "IMG-005",
        Must,
        Image,
        "The modules needed to boot a slot are there",
    ),
    def(
        "IMG-006",
        Must,
        Image,
        "The os-release file carries the required keys",
    ),
    def(
        "IMG-007",
        Must,
        Image,
        "The release file carries the required keys",
    ),
    def(
        "IMG-008",
        Must,
        Image,
        "The agent is an executable for the image's architecture",
    ),
    def(
        "IMG-009",
        Must,
        Image,
        "An init system runs the agent's boot stage",
    ),
    def("IMG-010", Must, Image, "No baked SSH host keys"),
    def("IMG-011", Must, Image, "No baked machine-id"),
    def(
        "IMG-012",
        Must,
        Image,
        "The image config's platform matches its binaries",
    ),
    def("IMG-013", Should, Image, "The image fits a slot"),
    def(
        "CTR-001",
        Must,
        Container,
        "The image runs as a container with a working shell",
    ),
    def(
        "CTR-002",
        Must,
        Container,
        "The agent runs and reports its version",
    ),
    def(
        "CTR-003",
        Must,
        Container,
        "The release data reads back in the container",
    ),
    def(
        "BOOT-001",
        Must,
        Boot,
        "Installs and boots to a proven boot",
    ),
    def(
        "UPG-001",
        Must,
        Upgrade,
        "Upgrades to a second image and boots it",
    ),
    def(
        "UPG-002",
        Must,
        Upgrade,
        "A slot that never proves itself falls back",
    ),
    def("UPG-003", Must, Upgrade, "Manual rollback works"),
];

/// IDs that were published and withdrawn: never to be used again.
pub const RETIRED: &[&str] = &[];

/// The catalogue entry for `id`.
pub fn find(id: &str) -> Option<&'static CheckDef> {
    CHECKS.iter().find(|c| c.id == id)
}

/// The checks of the given profiles, in catalogue order.
pub fn of_profiles(profiles: &[Profile]) -> impl Iterator<Item = &'static CheckDef> + '_ {
    CHECKS.iter().filter(|c| profiles.contains(&c.profile))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const SPEC: &str = include_str!("../SPEC.md");

    /// A check as SPEC.md describes it.
    #[derive(Debug, Default)]
    struct SpecEntry {
        id: String,
        title: String,
        fields: Vec<(String, String)>,
    }

    impl SpecEntry {
        fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// The `### ID Title` sections of SPEC.md with their `- Field: text` lines (a field's
    /// text runs on over indented continuation lines).
    fn spec_entries(spec: &str) -> Vec<SpecEntry> {
        let mut out: Vec<SpecEntry> = Vec::new();
        let mut in_checks = false;
        for line in spec.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                in_checks = h.trim() == "Checks";
                continue;
            }
            if !in_checks {
                continue;
            }
            if let Some(h) = line.strip_prefix("### ") {
                let (id, title) = h.split_once(' ').unwrap_or((h, ""));
                out.push(SpecEntry {
                    id: id.to_string(),
                    title: title.trim().to_string(),
                    fields: Vec::new(),
                });
            } else if let Some(f) = line.strip_prefix("- ") {
                let e = out.last_mut().expect("a field line belongs to a check");
                let (k, v) = f.split_once(':').expect("a field line is `- Name: text`");
                e.fields.push((k.trim().to_string(), v.trim().to_string()));
            } else if let Some(more) = line.strip_prefix("  ") {
                let e = out.last_mut().expect("a continuation belongs to a check");
                let (_, v) = e.fields.last_mut().expect("continues a field");
                v.push(' ');
                v.push_str(more.trim());
            } else {
                assert!(
                    line.trim().is_empty(),
                    "unexpected line in Checks: {line:?}"
                );
            }
        }
        out
    }

    #[test]
    fn the_code_and_spec_md_agree_on_every_check() {
        let spec = spec_entries(SPEC);
        let spec_ids: Vec<&str> = spec.iter().map(|e| e.id.as_str()).collect();
        let code_ids: Vec<&str> = CHECKS.iter().map(|c| c.id).collect();
        assert_eq!(spec_ids, code_ids, "the same checks, in the same order");
        for (e, c) in spec.iter().zip(CHECKS) {
            assert_eq!(e.title, c.title, "{}: title", c.id);
            assert_eq!(e.field("Level"), Some(c.level.name()), "{}: level", c.id);
            assert_eq!(
                e.field("Profile"),
                Some(c.profile.name()),
                "{}: profile",
                c.id
            );
            assert_eq!(
                e.field("Since"),
                Some(c.since.to_string().as_str()),
                "{}: since",
                c.id
            );
            for f in ["Verifies", "Why", "Fix"] {
                assert!(
                    e.field(f).is_some_and(|t| t.len() > 20),
                    "{}: SPEC.md must say {f}",
                    c.id
                );
            }
            assert_eq!(e.fields.len(), 6, "{}: exactly the six fields", c.id);
        }
        let version = format!("Catalogue version: **{CATALOGUE_VERSION}**");
        assert!(SPEC.contains(&version), "SPEC.md names {version}");
        for p in Profile::ALL {
            assert!(
                SPEC.contains(&format!("| `{}` |", p.name())),
                "the profile table lists {p}"
            );
        }
    }

    #[test]
    fn ids_are_valid_unique_never_retired_and_from_a_published_version() {
        let mut seen = BTreeSet::new();
        for c in CHECKS {
            let id = c.check_id();
            assert_eq!(id.as_str(), c.id);
            assert!(seen.insert(c.id), "{} is listed twice", c.id);
            assert!(!RETIRED.contains(&c.id), "{} is retired", c.id);
            assert!((1..=CATALOGUE_VERSION).contains(&c.since), "{}", c.id);
        }
        for r in RETIRED {
            r.parse::<CheckId>().expect("retired IDs are valid IDs");
        }
        // SPEC.md's Retired IDs section lists the same IDs (`- ID: why`), or says none.
        let section = SPEC
            .split_once("## Retired IDs")
            .expect("SPEC.md has a Retired IDs section")
            .1;
        let listed: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("- "))
            .map(|l| l.split(':').next().unwrap_or(l).trim())
            .collect();
        assert_eq!(listed, RETIRED);
        assert_eq!(RETIRED.is_empty(), section.contains("None yet."));
    }

    #[test]
    fn profiles_parse_by_name_only() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>(), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.name()));
        }
        assert!("Image".parse::<Profile>().is_err());
        assert!("".parse::<Profile>().is_err());
        assert_eq!(
            of_profiles(&[Profile::Upgrade])
                .map(|c| c.id)
                .collect::<Vec<_>>(),
            ["UPG-001", "UPG-002", "UPG-003"]
        );
        assert_eq!(find("IMG-013").map(|c| c.level), Some(Level::Should));
        assert!(find("IMG-999").is_none());
    }
}
