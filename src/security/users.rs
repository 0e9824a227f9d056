//! `[[users]]`: logins, argon2id passcode hashes and groups.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use thiserror::Error;
use tracing::warn;

use crate::config::{AuthConfig, User};

#[derive(Debug, Error)]
pub enum UsersError {
    #[error("user #{index} has an empty login")]
    EmptyLogin { index: usize },
    #[error("user '{login}' is configured twice")]
    Duplicate { login: String },
    #[error("user '{login}' has a plain-text passcode; store an argon2id hash in passcode_hash (`brokk hash-password`), or set auth.allow_plaintext_passwords = true")]
    Plaintext { login: String },
    #[error("user '{login}' has an empty passcode_hash; leave it out for a user who logs in only with a client certificate")]
    EmptyHash { login: String },
    #[error("user '{login}' has both passcode and passcode_hash; keep one")]
    Both { login: String },
    #[error("user '{login}': passcode_hash is not an argon2id PHC string ($argon2id$v=19$...): {message}")]
    BadHash { login: String, message: String },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

impl UsersError {
    /// The config key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            UsersError::EmptyLogin { .. } | UsersError::Duplicate { .. } => "users.login",
            UsersError::Plaintext { .. } | UsersError::Both { .. } => "users.passcode",
            UsersError::EmptyHash { .. } | UsersError::BadHash { .. } | UsersError::Hash(_) => {
                "users.passcode_hash"
            }
        }
    }
}

/// An authenticated user: what authorization decisions are made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub login: String,
    pub groups: Vec<String>,
}

enum Secret {
    /// No passcode: the user logs in only with a client certificate.
    None,
    Hash(String),
    Plain(String),
}

struct Entry {
    secret: Secret,
    user: Arc<UserInfo>,
}

/// Successful verifications kept before the cache is emptied (a bound, so
/// that many distinct good logins cannot grow it without limit).
const VERIFIED_MAX: usize = 4096;

/// The configured users. `verify` is slow on a cache miss (argon2 is made
/// to be: tens of ms); see `security::Security::authenticate` for how the
/// shards keep it off their reactors.
pub struct Users {
    entries: HashMap<String, Entry>,
    /// (login, passcode) pairs verified before, by a 128-bit keyed hash:
    /// the passcodes themselves are not kept, and the random keys make a
    /// forged match as hard as guessing a 128-bit value.
    verified: Mutex<HashMap<u128, Arc<UserInfo>>>,
    keys: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("logins", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Users {
    pub fn from_config(users: &[User], auth: &AuthConfig) -> Result<Users, UsersError> {
        let mut entries = HashMap::new();
        for (i, u) in users.iter().enumerate() {
            if u.login.is_empty() {
                return Err(UsersError::EmptyLogin { index: i + 1 });
            }
            let login = || u.login.clone();
            let secret = match (&u.passcode, &u.passcode_hash) {
                (Some(_), Some(_)) => return Err(UsersError::Both { login: login() }),
                (Some(_), None) if !auth.allow_plaintext_passwords => {
                    return Err(UsersError::Plaintext { login: login() })
                }
                (Some(p), None) => Secret::Plain(p.clone()),
                (None, Some(h)) if h.is_empty() => {
                    return Err(UsersError::EmptyHash { login: login() })
                }
                (None, Some(h)) => {
                    check_hash(h).map_err(|message| UsersError::BadHash {
                        login: login(),
                        message,
                    })?;
                    Secret::Hash(h.clone())
                }
                (None, None) => Secret::None,
            };
            let user = Arc::new(UserInfo {
                login: u.login.clone(),
                groups: u.groups.clone(),
            });
            if entries
                .insert(u.login.clone(), Entry { secret, user })
                .is_some()
            {
                return Err(UsersError::Duplicate { login: login() });
            }
        }
        Ok(Users {
            entries,
            verified: Mutex::new(HashMap::new()),
            keys: Default::default(),
        })
    }

    /// The logins whose passcode is kept in plain text.
    pub fn plaintext_logins(&self) -> Vec<&str> {
        let mut logins: Vec<&str> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.secret, Secret::Plain(_)))
            .map(|(l, _)| l.as_str())
            .collect();
        logins.sort_unstable();
        logins
    }

    /// No users configured: the broker is open (no authentication).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The user `login`, without a passcode: for a client whose verified
    /// certificate names it.
    pub fn lookup(&self, login: &str) -> Option<Arc<UserInfo>> {
        self.entries.get(login).map(|e| e.user.clone())
    }

    /// The user if this pair was verified before (fast: no argon2).
    pub fn cached(&self, login: &str, passcode: &str) -> Option<Arc<UserInfo>> {
        let key = self.pair_key(login, passcode);
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }

    /// Checks a login and passcode; the user on success. Slow on a cache
    /// miss (argon2id): call it from a thread that may block.
    pub fn verify(&self, login: &str, passcode: &str) -> Option<Arc<UserInfo>> {
        if let Some(u) = self.cached(login, passcode) {
            return Some(u);
        }
        let Some(entry) = self.entries.get(login) else {
            // As slow as a wrong passcode for a real login, so that timing
            // does not tell which logins exist.
            let _ = PasswordHash::new(decoy_hash())
                .map(|h| Argon2::default().verify_password(passcode.as_bytes(), &h));
            return None;
        };
        let decoy = || {
            // As slow as a hashed passcode, so that timing does not tell
            // which logins exist or how they are stored.
            let _ = PasswordHash::new(decoy_hash())
                .map(|h| Argon2::default().verify_password(passcode.as_bytes(), &h));
        };
        let ok = match &entry.secret {
            Secret::None => {
                decoy();
                false
            }
            Secret::Plain(p) => {
                decoy();
                constant_time_eq(p.as_bytes(), passcode.as_bytes())
            }
            Secret::Hash(h) => PasswordHash::new(h).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(passcode.as_bytes(), &h)
                    .is_ok()
            }),
        };
        if !ok {
            return None;
        }
        let key = self.pair_key(login, passcode);
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(key, entry.user.clone());
        Some(entry.user.clone())
    }

    fn pair_key(&self, login: &str, passcode: &str) -> u128 {
        let hash = |state: &std::collections::hash_map::RandomState| {
            let mut h = state.build_hasher();
            // Lengths first: ("ab", "c") and ("a", "bc") differ.
            login.len().hash(&mut h);
            login.hash(&mut h);
            passcode.hash(&mut h);
            h.finish()
        };
        (u128::from(hash(&self.keys.0)) << 64) | u128::from(hash(&self.keys.1))
    }
}

/// A hash no passcode matches in practice, verified for unknown logins.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_password("brokk: no such user").unwrap_or_else(|e| {
            warn!(error = %e, "cannot make the decoy hash; unknown logins fail fast");
            String::new()
        })
    })
}

/// An argon2id PHC string for `password` (random salt, argon2's default
/// cost), for `passcode_hash`.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

fn check_hash(h: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(h).map_err(|e| e.to_string())?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!("algorithm is {}", parsed.algorithm));
    }
    argon2::Params::try_from(&parsed).map_err(|e| e.to_string())?;
    Ok(())
}

/// Plain-text passcodes: compared without an early exit on the first
/// differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(login: &str, passcode: Option<&str>, hash: Option<&str>) -> User {
        User {
            login: login.into(),
            passcode: passcode.map(str::to_string),
            passcode_hash: hash.map(str::to_string),
            groups: vec!["g".into()],
        }
    }

    #[test]
    fn hashed_passcodes_verify_and_are_cached() {
        let h = hash_password("s3cret").unwrap();
        let users =
            Users::from_config(&[user("ann", None, Some(&h))], &AuthConfig::default()).unwrap();
        assert!(users.cached("ann", "s3cret").is_none());
        assert_eq!(users.verify("ann", "s3cret").unwrap().groups, vec!["g"]);
        assert!(users.cached("ann", "s3cret").is_some());
        assert!(users.verify("ann", "wrong").is_none());
        assert!(users.verify("bob", "s3cret").is_none());
    }

    #[test]
    fn plaintext_needs_the_switch() {
        let u = [user("ann", Some("pw"), None)];
        let e = Users::from_config(&u, &AuthConfig::default()).unwrap_err();
        assert_eq!(e.key(), "users.passcode");
        let allow = AuthConfig {
            allow_plaintext_passwords: true,
            ..Default::default()
        };
        let users = Users::from_config(&u, &allow).unwrap();
        assert!(users.verify("ann", "pw").is_some());
        assert!(users.verify("ann", "px").is_none());
    }

    #[test]
    fn bad_hashes_are_named() {
        for bad in ["nope", "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"] {
            let e = Users::from_config(&[user("ann", None, Some(bad))], &AuthConfig::default())
                .unwrap_err();
            assert_eq!(e.key(), "users.passcode_hash", "{bad}: {e}");
        }
    }
}
