//! The GRUB environment block (`grubenv`): exactly 1024 bytes, a fixed header line, then
//! `name=value` lines, padded with `#`. GRUB reads and writes it in place (`load_env`,
//! `save_env`), which is why its size never changes. Writing it back must round-trip exactly.

use std::collections::BTreeMap;

pub const GRUBENV_BYTES: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrubEnvError {
    #[error("grubenv is {0} bytes, expected exactly 1024")]
    Size(usize),
    #[error("grubenv does not start with the GRUB Environment Block header")]
    Header,
    #[error("grubenv line {line} is not name=value: {text:?}")]
    Line { line: usize, text: String },
    #[error("grubenv variable name {0:?} is not [A-Za-z0-9_]+")]
    Name(String),
    #[error("grubenv value for {name} contains a newline, '#', NUL or backslash")]
    Value { name: String },
    #[error("grubenv variables need {needed} bytes, more than the 1024-byte block holds")]
    TooLarge { needed: usize },
    #[error(
        "grubenv line {line} runs to the end of the block without a newline: GRUB does not \
         read it as a variable"
    )]
    Unterminated { line: usize },
}

/// The variables of a grubenv block, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv {
    vars: BTreeMap<String, String>,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Values are kept to what GRUB's own writer never escapes, so what we write GRUB reads back
/// unchanged, and the reverse.
fn valid_value(v: &str) -> bool {
    !v.bytes().any(|b| matches!(b, b'\n' | b'#' | 0 | b'\\'))
}

impl GrubEnv {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<(), GrubEnvError> {
        if !valid_name(name) {
            return Err(GrubEnvError::Name(name.to_string()));
        }
        if !valid_value(value) {
            return Err(GrubEnvError::Value {
                name: name.to_string(),
            });
        }
        self.vars.insert(name.to_string(), value.to_string());
        Ok(())
    }

    pub fn unset(&mut self, name: &str) {
        self.vars.remove(name);
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn parse(block: &[u8]) -> Result<Self, GrubEnvError> {
        if block.len() != GRUBENV_BYTES {
            return Err(GrubEnvError::Size(block.len()));
        }
        let text = std::str::from_utf8(block).map_err(|_| GrubEnvError::Header)?;
        let body = text.strip_prefix(HEADER).ok_or(GrubEnvError::Header)?;
        let mut env = GrubEnv::new();
        let lines: Vec<&str> = body.split('\n').collect();
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            // Padding starts at the first '#'; it runs to the end of the block.
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            // What follows the last newline is padding, or a variable only we would see.
            if i == last {
                return Err(GrubEnvError::Unterminated { line: i + 2 });
            }
            let (k, v) = line.split_once('=').ok_or_else(|| GrubEnvError::Line {
                line: i + 2,
                text: line.to_string(),
            })?;
            env.set(k, v).map_err(|_| GrubEnvError::Line {
                line: i + 2,
                text: line.to_string(),
            })?;
        }
        Ok(env)
    }

    pub fn to_block(&self) -> Result<[u8; GRUBENV_BYTES], GrubEnvError> {
        let mut text = String::from(HEADER);
        for (k, v) in &self.vars {
            text.push_str(k);
            text.push('=');
            text.push_str(v);
            text.push('\n');
        }
        if text.len() > GRUBENV_BYTES {
            return Err(GrubEnvError::TooLarge { needed: text.len() });
        }
        let mut block = [b'#'; GRUBENV_BYTES];
        block[..text.len()].copy_from_slice(text.as_bytes());
        debug_assert_eq!(
            GrubEnv::parse(&block).as_ref(),
            Ok(self),
            "grubenv round-trips"
        );
        Ok(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_grub_editenv_writes() {
        // `grub-editenv grubenv create; grub-editenv grubenv set a=1 next_entry=passive`
        let mut block = Vec::from(HEADER.as_bytes());
        block.extend_from_slice(b"a=1\nnext_entry=passive\n");
        block.resize(GRUBENV_BYTES, b'#');
        let env = GrubEnv::parse(&block).unwrap();
        assert_eq!(env.get("next_entry"), Some("passive"));
        assert_eq!(env.to_block().unwrap().to_vec(), block);
    }

    /// Found by `./x fuzz` (grubenv): a last line with no newline and no '#' after it was
    /// read as a variable (GRUB skips it), and the block could not be written back.
    #[test]
    fn r19_fuzz_an_unterminated_last_line_is_not_a_variable() {
        let mut block = Vec::from(HEADER.as_bytes());
        block.extend_from_slice(b"a=1\nb=");
        block.resize(GRUBENV_BYTES, b'x');
        assert_eq!(
            GrubEnv::parse(&block),
            Err(GrubEnvError::Unterminated { line: 3 })
        );
    }

    #[test]
    fn rejects_malformed_blocks() {
        assert_eq!(GrubEnv::parse(&[b'#'; 1000]), Err(GrubEnvError::Size(1000)));
        assert_eq!(GrubEnv::parse(&[b'#'; 1024]), Err(GrubEnvError::Header));
        let mut block = Vec::from(HEADER.as_bytes());
        block.extend_from_slice(b"no equals sign\n");
        block.resize(GRUBENV_BYTES, b'#');
        assert!(matches!(
            GrubEnv::parse(&block),
            Err(GrubEnvError::Line { line: 2, .. })
        ));
        let mut env = GrubEnv::new();
        assert!(env.set("bad-name", "x").is_err());
        assert!(env.set("ok", "a#b").is_err());
        env.set("big", &"x".repeat(1000)).unwrap();
        assert!(matches!(env.to_block(), Err(GrubEnvError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn round_trips(vars in proptest::collection::btree_map("[A-Za-z0-9_]{1,12}", "[ -\"$-\\[\\]-~]{0,20}", 0..20)) {
            let mut env = GrubEnv::new();
            for (k, v) in &vars {
                env.set(k, v).unwrap();
            }
            let block = env.to_block().unwrap();
            prop_assert_eq!(GrubEnv::parse(&block).unwrap(), env);
        }
    }
}
