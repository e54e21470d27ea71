//! Registry credentials from Docker's `config.json` (`auths.<host>.auth`, or
//! `username`/`password`). Credential helpers are not run: they are programs, and bootyard
//! does not execute programs named by a config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("docker config {path} is not valid JSON")]
    BadConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("docker config {path}: the auth entry for {registry} is not base64 of user:password")]
    BadAuth { path: PathBuf, registry: String },
    #[error("cannot read docker config {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

pub struct Credentials {
    pub auth: RegistryAuth,
    /// Where they came from, for error messages.
    pub source: String,
}

/// The config file consulted: `explicit`, else `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

fn key_matches(key: &str, registry: &str) -> bool {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k);
    k == registry
        || (registry == "index.docker.io" && (k == "docker.io" || k == "registry-1.docker.io"))
}

pub fn lookup(registry: &str, explicit: Option<&Path>) -> Result<Credentials, AuthError> {
    let anonymous = |why: String| Credentials {
        auth: RegistryAuth::Anonymous,
        source: why,
    };
    let Some(path) = config_path(explicit) else {
        return Ok(anonymous(
            "no docker config found; pulling anonymously".into(),
        ));
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(anonymous(format!(
                "{} does not exist; pulled anonymously",
                path.display()
            )));
        }
        Err(source) => return Err(AuthError::Io { path, source }),
    };
    let config: DockerConfig =
        serde_json::from_slice(&bytes).map_err(|source| AuthError::BadConfig {
            path: path.clone(),
            source,
        })?;
    let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| key_matches(k, registry))
        .map(|(_, v)| v)
    else {
        return Ok(anonymous(format!(
            "{} has no entry for {registry}; pulled anonymously",
            path.display()
        )));
    };
    let source = format!("credentials for {registry} from {}", path.display());
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Credentials {
            auth: RegistryAuth::Basic(u.clone(), p.clone()),
            source,
        });
    }
    if let Some(a) = &entry.auth {
        let bad = || AuthError::BadAuth {
            path: path.clone(),
            registry: registry.to_string(),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(decoded).map_err(|_| bad())?;
        let (u, p) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Credentials {
            auth: RegistryAuth::Basic(u.to_string(), p.to_string()),
            source,
        });
    }
    Ok(anonymous(format!(
        "{} entry for {registry} has no usable credentials",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_basic_auth_and_username_password_forms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNzOndvcmQ="},"https://other:1/v2/":{"username":"a","password":"b"}}}"#).unwrap();
        match lookup("127.0.0.1:5000", Some(&path)).unwrap().auth {
            RegistryAuth::Basic(u, p) => {
                assert_eq!((u.as_str(), p.as_str()), ("user", "pass:word"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            lookup("other:1", Some(&path)).unwrap().auth,
            RegistryAuth::Basic(..)
        ));
        assert!(matches!(
            lookup("elsewhere", Some(&path)).unwrap().auth,
            RegistryAuth::Anonymous
        ));
    }

    #[test]
    fn malformed_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            lookup("x", Some(&path)),
            Err(AuthError::BadConfig { .. })
        ));
        std::fs::write(&path, r#"{"auths":{"x":{"auth":"!!!"}}}"#).unwrap();
        assert!(matches!(
            lookup("x", Some(&path)),
            Err(AuthError::BadAuth { .. })
        ));
    }
}
