//! Check identifiers and verdicts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A stable check identifier: an area of 2 to 8 uppercase letters, a dash, three digits
/// (`IMG-001`, `BOOT-012`). Reports and CI gates key on these, so once published an ID keeps
/// its meaning forever.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("check id {0:?} is not AREA-NNN (2-8 uppercase letters, a dash, 3 digits)")]
pub struct CheckIdError(String);

impl CheckId {
    pub fn area(&self) -> &str {
        self.0.split_once('-').map(|(a, _)| a).unwrap_or(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CheckId {
    type Err = CheckIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.split_once('-').is_some_and(|(area, num)| {
            (2..=8).contains(&area.len())
                && area.bytes().all(|b| b.is_ascii_uppercase())
                && num.len() == 3
                && num.bytes().all(|b| b.is_ascii_digit())
        });
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(CheckIdError(s.to_string()))
        }
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for CheckId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CheckId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The outcome of one check. `Warn` is a failed SHOULD or MAY check (or a denylisted
/// failure): reported, but it does not fail the run. `Error` means the check could not reach a
/// verdict (the harness or the environment failed), which a gate must not read as a pass or a
/// fail of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail { reason: String },
    Warn { reason: String },
    Skip { reason: String },
    Error { reason: String },
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail { .. } => "fail",
            Verdict::Warn { .. } => "warn",
            Verdict::Skip { .. } => "skip",
            Verdict::Error { .. } => "error",
        }
    }
}

impl Verdict {
    /// The reason given, for every verdict but a pass.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Pass => None,
            Verdict::Fail { reason }
            | Verdict::Warn { reason }
            | Verdict::Skip { reason }
            | Verdict::Error { reason } => Some(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_ids_parse_strictly() {
        let id: CheckId = "IMG-001".parse().unwrap();
        assert_eq!(id.area(), "IMG");
        for bad in [
            "img-001",
            "I-001",
            "IMG-01",
            "IMG-0001",
            "IMG001",
            "TOOLONGAREA-001",
            "IMG-00a",
        ] {
            assert!(bad.parse::<CheckId>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<CheckId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<CheckId>("\"nope\"").is_err());
    }
}
