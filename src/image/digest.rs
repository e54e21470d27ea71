//! Content digests (`sha256:<hex>`), parsed once and carried as a type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Errors from parsing a digest string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<64 hex>)")]
    MissingAlgorithm(String),
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} must have 64 lowercase hex characters after sha256:")]
    BadEncoded(String),
}

/// A sha256 content digest. The only algorithm OCI registries require, and the only one
/// bootyard accepts; anything else is rejected at parse time rather than half-supported.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    bytes: [u8; 32],
}

impl Digest {
    pub fn from_sha256_bytes(bytes: [u8; 32]) -> Self {
        Self { bytes }
    }

    /// Digest of a whole in-memory blob.
    pub fn of(data: &[u8]) -> Self {
        let out: [u8; 32] = Sha256::digest(data).into();
        Self { bytes: out }
    }

    pub fn hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// Short form for humans (`sha256:0123456789ab`).
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex()[..12])
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, enc) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(s.to_string()))?;
        if alg != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(alg.to_string()));
        }
        let valid = enc.len() == 64
            && enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(DigestError::BadEncoded(s.to_string()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(enc, &mut bytes)
            .map_err(|_| DigestError::BadEncoded(s.to_string()))?;
        Ok(Self { bytes })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 with a byte count, used wherever a blob streams past.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digest {
        Digest {
            bytes: self.inner.finalize().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_blob_digest_is_the_well_known_one() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn rejects_other_algorithms_and_bad_hex() {
        assert!(matches!(
            "sha512:ab".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "abc".parse::<Digest>(),
            Err(DigestError::MissingAlgorithm(_))
        ));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(matches!(
            upper.parse::<Digest>(),
            Err(DigestError::BadEncoded(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::BadEncoded(_))
        ));
    }

    proptest! {
        #[test]
        fn display_parse_round_trips(bytes in any::<[u8; 32]>()) {
            let d = Digest::from_sha256_bytes(bytes);
            let back: Digest = d.to_string().parse().unwrap();
            prop_assert_eq!(d, back);
            let json = serde_json::to_string(&d).unwrap();
            let back: Digest = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(d, back);
        }

        #[test]
        fn incremental_hash_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..4096), split in 0usize..4096) {
            let split = split.min(data.len());
            let mut h = Hasher::new();
            h.update(&data[..split]);
            h.update(&data[split..]);
            prop_assert_eq!(h.len(), data.len() as u64);
            prop_assert_eq!(h.finish(), Digest::of(&data));
        }
    }
}
