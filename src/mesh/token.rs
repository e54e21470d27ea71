//! The network token: what a node must hold to take part in a mesh. The format is Kairos's
//! (EdgeVPN's): base64 of a YAML document
//!
//! ```yaml
//! otp:
//!   dht:    { interval: 9000, key: <base32>, length: 32 }
//!   crypto: { interval: 9000, key: <base32>, length: 32 }
//! room: <string>
//! rendezvous: <string>
//! mdns: <string>
//! max_message_size: 20971520
//! ```
//!
//! What derives from it (pure functions of the token and `now`):
//! - the **rendezvous key** where peers look for each other, rotating every
//!   `otp.dht.interval` seconds: SHA-256 over a label, `rendezvous` and the time window's
//!   one-time code from `otp.dht.key`;
//! - the **topic** ledger messages travel on: SHA-256 over a label and `room`;
//! - the **sealing key** for ledger messages, rotating every `otp.crypto.interval`: SHA-256
//!   over a label and the window's code from `otp.crypto.key`. The previous window's key is
//!   still accepted, so peers whose clocks straddle a window boundary understand each other.
//!
//! One-time codes are HOTP-style (RFC 4226 structure, HMAC-SHA256 instead of SHA-1) over the
//! big-endian window number, rendered as `length` lowercase hex digits. These derivations
//! are bootyard's; only the token format is shared with Kairos.

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use base64::Engine as _;
use bootyard_sim::Rng;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkToken {
    pub otp: Otp,
    pub room: String,
    pub rendezvous: String,
    pub mdns: String,
    pub max_message_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Otp {
    pub dht: OtpKey,
    pub crypto: OtpKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpKey {
    /// Seconds per window.
    pub interval: u64,
    /// RFC 4648 base32 secret.
    pub key: String,
    /// Code length in characters.
    pub length: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the network token is not base64: {0}")]
    Base64(String),
    #[error("the network token is not a YAML network configuration: {0}")]
    Yaml(String),
    #[error("the network token's {field} is invalid: {why}")]
    Invalid { field: &'static str, why: String },
}

/// Longest token accepted, before decoding: a real one is about 400 characters.
pub const TOKEN_BYTES_MAX: usize = 64 << 10;
const CODE_LENGTH_MAX: u32 = 64;
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// RFC 4648 base32 without padding; case-insensitive on input.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u64, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = BASE32.iter().position(|&b| b == c.to_ascii_uppercase())? as u64;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(BASE32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn random_alnum(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| ALNUM[rng.below(ALNUM.len() as u64) as usize] as char)
        .collect()
}

fn random_key(rng: &mut Rng) -> OtpKey {
    let secret: Vec<u8> = (0..20).map(|_| rng.next_u64() as u8).collect();
    OtpKey {
        interval: 9000,
        key: base32_encode(&secret),
        length: 32,
    }
}

impl OtpKey {
    fn validate(&self, field: &'static str) -> Result<Vec<u8>, TokenError> {
        let invalid = |why: String| TokenError::Invalid { field, why };
        if self.interval == 0 {
            return Err(invalid("interval is 0".into()));
        }
        if self.length == 0 || self.length > CODE_LENGTH_MAX {
            return Err(invalid(format!(
                "length {} is not in 1..={CODE_LENGTH_MAX}",
                self.length
            )));
        }
        let secret = base32_decode(&self.key).ok_or_else(|| invalid("key is not base32".into()))?;
        if secret.len() < 10 {
            return Err(invalid(format!(
                "key holds {} bytes; at least 10 are needed",
                secret.len()
            )));
        }
        Ok(secret)
    }

    /// The window `now_secs` falls in.
    pub fn window(&self, now_secs: u64) -> u64 {
        now_secs / self.interval.max(1)
    }

    /// The one-time code of a window.
    pub fn code(&self, window: u64) -> String {
        let secret = base32_decode(&self.key).unwrap_or_default();
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes keys of any length");
        mac.update(&window.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let mut hex = hex::encode(digest);
        // Longer codes than one digest: chain the digest, still a function of the window.
        while hex.len() < self.length as usize {
            hex.push_str(&hex::encode(Sha256::digest(hex.as_bytes())));
        }
        hex.truncate(self.length as usize);
        hex
    }
}

fn labelled(label: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

impl NetworkToken {
    /// A fresh token, as `edgevpn -g` would make one (from `rng`, so simulations replay).
    pub fn generate(rng: &mut Rng) -> Self {
        Self {
            otp: Otp {
                dht: random_key(rng),
                crypto: random_key(rng),
            },
            room: random_alnum(rng, 32),
            rendezvous: random_alnum(rng, 32),
            mdns: random_alnum(rng, 32),
            max_message_size: 20 << 20,
        }
    }

    pub fn encode(&self) -> String {
        let yaml = serde_yaml::to_string(self).expect("plain data serializes");
        base64::engine::general_purpose::STANDARD.encode(yaml)
    }

    pub fn decode(token: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Invalid {
                field: "token",
                why: format!("{} bytes is over {TOKEN_BYTES_MAX}", token.len()),
            });
        }
        let yaml = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|e| TokenError::Base64(e.to_string()))?;
        let t: Self = serde_yaml::from_slice(&yaml).map_err(|e| TokenError::Yaml(e.to_string()))?;
        t.otp.dht.validate("otp.dht")?;
        t.otp.crypto.validate("otp.crypto")?;
        for (field, v) in [("room", &t.room), ("rendezvous", &t.rendezvous)] {
            if v.is_empty() {
                return Err(TokenError::Invalid {
                    field,
                    why: "is empty".into(),
                });
            }
        }
        if t.max_message_size == 0 {
            return Err(TokenError::Invalid {
                field: "max_message_size",
                why: "is 0".into(),
            });
        }
        Ok(t)
    }

    /// Where peers meet during the window of `now_secs`.
    pub fn rendezvous_key(&self, now_secs: u64) -> [u8; 32] {
        let w = self.otp.dht.window(now_secs);
        labelled(
            "bootyard/rendezvous/v1",
            &[self.rendezvous.as_bytes(), self.otp.dht.code(w).as_bytes()],
        )
    }

    pub fn topic(&self) -> [u8; 32] {
        labelled("bootyard/topic/v1", &[self.room.as_bytes()])
    }

    /// The key that seals messages now, and the previous window's, still accepted.
    pub fn sealing_keys(&self, now_secs: u64) -> [[u8; 32]; 2] {
        let w = self.otp.crypto.window(now_secs);
        let key = |w: u64| labelled("bootyard/seal/v1", &[self.otp.crypto.code(w).as_bytes()]);
        [key(w), key(w.saturating_sub(1))]
    }
}

/// Seals `plain` with `key` (ChaCha20-Poly1305): `nonce ‖ ciphertext ‖ tag`.
pub fn seal(key: &[u8; 32], nonce: [u8; 12], plain: &[u8]) -> Vec<u8> {
    let cipher = <ChaCha20Poly1305 as chacha20poly1305::KeyInit>::new(Key::from_slice(key));
    let mut out = Vec::with_capacity(12 + plain.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend(
        cipher
            .encrypt(Nonce::from_slice(&nonce), plain)
            .expect("in-memory encryption does not fail"),
    );
    out
}

/// Opens what [`seal`] made with `key`; `None` when it does not open (another key, or
/// tampered).
pub fn open(key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 + 16 {
        return None;
    }
    let (nonce, body) = sealed.split_at(12);
    <ChaCha20Poly1305 as chacha20poly1305::KeyInit>::new(Key::from_slice(key))
        .decrypt(Nonce::from_slice(nonce), body)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips_and_matches_rfc4648() {
        // RFC 4648 section 10 vectors (padding dropped).
        for (plain, enc) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(base32_decode("mzxw6==").unwrap(), b"foo");
        assert_eq!(base32_decode("MZ1"), None);
    }

    #[test]
    fn reads_an_edgevpn_style_token() {
        let yaml = "otp:\n  dht:\n    interval: 9000\n    key: LHKNKT6YZYQGGY3JANGXMLJTHRH7SW3C\n    length: 32\n  crypto:\n    interval: 9000\n    key: SGIB6NYJMSRJF2AJDGUI2NDB5LBVCPLS\n    length: 32\nroom: ubONSBFkdWbzkSBTglFzOhWvczTBQJOR\nrendezvous: exoHOajMYMSPrHhevAEEjnCHLssFfzfT\nmdns: bFDEcDJJsbzJqKkRxYuQvPjgNqRaJXxu\nmax_message_size: 20971520\n";
        let token = base64::engine::general_purpose::STANDARD.encode(yaml);
        let t = NetworkToken::decode(&token).unwrap();
        assert_eq!(t.room, "ubONSBFkdWbzkSBTglFzOhWvczTBQJOR");
        assert_eq!(t.otp.crypto.interval, 9000);
        assert_eq!(NetworkToken::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn derived_keys_rotate_with_the_window_and_differ_between_networks() {
        let mut rng = Rng::seed(7);
        let a = NetworkToken::generate(&mut rng);
        let b = NetworkToken::generate(&mut rng);
        assert_ne!(a, b);
        assert_eq!(a.rendezvous_key(100), a.rendezvous_key(8999));
        assert_ne!(a.rendezvous_key(8999), a.rendezvous_key(9000));
        assert_ne!(a.rendezvous_key(100), b.rendezvous_key(100));
        assert_ne!(a.topic(), b.topic());
        let [now, prev] = a.sealing_keys(9000);
        assert_eq!(prev, a.sealing_keys(8999)[0]);
        assert_ne!(now, prev);
        assert_eq!(a.otp.dht.code(3).len(), 32);
        let long = OtpKey {
            length: 64,
            ..a.otp.dht.clone()
        };
        assert_eq!(long.code(3).len(), 64);
        assert!(long.code(3).starts_with(&a.otp.dht.code(3)));
    }

    #[test]
    fn bad_tokens_are_named() {
        assert!(matches!(
            NetworkToken::decode("not base64!"),
            Err(TokenError::Base64(_))
        ));
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(matches!(
            NetworkToken::decode(&enc("- a list")),
            Err(TokenError::Yaml(_))
        ));
        let mut t = NetworkToken::generate(&mut Rng::seed(1));
        t.otp.dht.interval = 0;
        assert_eq!(
            NetworkToken::decode(&t.encode()),
            Err(TokenError::Invalid {
                field: "otp.dht",
                why: "interval is 0".into()
            })
        );
        let mut t = NetworkToken::generate(&mut Rng::seed(1));
        t.otp.crypto.key = "short".into();
        assert!(matches!(
            NetworkToken::decode(&t.encode()),
            Err(TokenError::Invalid {
                field: "otp.crypto",
                ..
            })
        ));
    }
}
