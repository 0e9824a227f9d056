//! Who may use the console and the JSON API, and what they may do.
//!
//! Users are the broker's `[[users]]`; a user in one of `admin.admin_groups`
//! may act (purge, delete, send), one in `admin.read_groups` may look.
//! Browsers log in once and get a session cookie (HttpOnly, SameSite=Strict)
//! plus a CSRF token that every state-changing request must echo in the
//! `X-Brokk-CSRF` header; scripts and the CLI may use HTTP Basic instead,
//! and must still send that header (any value) on a state-changing request:
//! a cross-site form cannot set a header, so a browser that remembered
//! Basic credentials cannot be made to act by another site.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, Method};
use base64::Engine as _;
use serde::Serialize;

use crate::config::AdminConfig;
use crate::security::{Security, UserInfo};

pub const CSRF_HEADER: &str = "x-brokk-csrf";
pub const SESSION_COOKIE: &str = "brokk_session";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    Read,
    Admin,
}

/// The user a request acts for.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    pub login: String,
    /// For per-destination authorization (`[[authorization]]`).
    #[serde(skip)]
    pub user: Arc<UserInfo>,
    pub role: ConsoleRole,
    /// The session's CSRF token (cookie sessions; Basic has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the console is disabled: no [[users]] are configured. Add a user with a group named in admin.admin_groups (or admin.read_groups) to the config, then restart")]
    Disabled,
    #[error("log in first (POST /api/login) or use HTTP Basic authentication")]
    Missing,
    #[error("wrong login or passcode")]
    Wrong,
    #[error("user '{0}' is in none of admin.admin_groups or admin.read_groups")]
    NoRole(String),
    #[error("user '{0}' may only look (read role); this needs the admin role")]
    ReadOnly(String),
    #[error("missing or wrong X-Brokk-CSRF header on a state-changing request")]
    Csrf,
}

struct Session {
    principal: Principal,
    expires: Instant,
}

pub struct Auth {
    security: Arc<Security>,
    admin_groups: Vec<String>,
    read_groups: Vec<String>,
    ttl: Duration,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Auth {
    pub fn new(security: Arc<Security>, cfg: &AdminConfig) -> Auth {
        Auth {
            security,
            admin_groups: cfg.admin_groups.clone(),
            read_groups: cfg.read_groups.clone(),
            ttl: Duration::from_secs(cfg.session_ttl_secs),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Without users, the console and API are off (only `/status`,
    /// `/healthz` and `/metrics` answer): no default password is shipped.
    pub fn enabled(&self) -> bool {
        !self.security.users.is_empty()
    }

    fn role_of(&self, u: &UserInfo) -> Option<ConsoleRole> {
        let in_any = |groups: &[String]| u.groups.iter().any(|g| groups.contains(g));
        if in_any(&self.admin_groups) {
            Some(ConsoleRole::Admin)
        } else if in_any(&self.read_groups) {
            Some(ConsoleRole::Read)
        } else {
            None
        }
    }

    /// Checks a login and passcode (audit-logging a failure) through the
    /// broker's verifier threads: argon2id takes tens of ms and ~19 MiB per
    /// check, and that pool is bounded, so a flood of bad logins on the
    /// admin port waits in line instead of taking every core and gigabytes
    /// (the side runtime's thread, which also drives the database writer
    /// and its lease, never runs one).
    async fn verify(
        &self,
        login: &str,
        passcode: &str,
        source: &str,
    ) -> Result<Principal, AuthError> {
        if !self.enabled() {
            return Err(AuthError::Disabled);
        }
        let peer = source.parse().ok();
        let user = match self
            .security
            .authenticate(Some(login), Some(passcode), None, peer)
            .await
        {
            Ok(Some(u)) => u,
            _ => return Err(AuthError::Wrong),
        };
        let role = self
            .role_of(&user)
            .ok_or_else(|| AuthError::NoRole(login.to_string()))?;
        Ok(Principal {
            login: login.to_string(),
            user,
            role,
            csrf: None,
        })
    }

    /// A browser login: a new session; returns its cookie value too.
    pub async fn login(
        &self,
        login: &str,
        passcode: &str,
        source: &str,
    ) -> Result<(String, Principal), AuthError> {
        let mut p = self.verify(login, passcode, source).await?;
        p.csrf = Some(random_token());
        let token = random_token();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            token.clone(),
            Session {
                principal: p.clone(),
                expires: now + self.ttl,
            },
        );
        Ok((token, p))
    }

    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(t) = cookie(headers, SESSION_COOKIE) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.remove(&t);
        }
    }

    /// The user behind a request, if it may do what it asks: `need` is the
    /// role it takes; a state-changing method must pass the CSRF check.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        method: &Method,
        need: ConsoleRole,
        source: &str,
    ) -> Result<Principal, AuthError> {
        if !self.enabled() {
            return Err(AuthError::Disabled);
        }
        let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let csrf_sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        let principal = if let Some((login, pass)) = basic(headers) {
            let p = self.verify(&login, &pass, source).await?;
            if changes && csrf_sent.is_none() {
                return Err(AuthError::Csrf);
            }
            p
        } else if let Some(token) = cookie(headers, SESSION_COOKIE) {
            let p = {
                let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                match sessions.get(&token) {
                    Some(s) if s.expires > Instant::now() => s.principal.clone(),
                    _ => return Err(AuthError::Missing),
                }
            };
            if changes && csrf_sent != p.csrf.as_deref() {
                return Err(AuthError::Csrf);
            }
            p
        } else {
            return Err(AuthError::Missing);
        };
        if principal.role < need {
            return Err(AuthError::ReadOnly(principal.login));
        }
        Ok(principal)
    }
}

fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (login, pass) = text.split_once(':')?;
    Some((login.to_string(), pass.to_string()))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// 32 random bytes from the kernel, as hex.
fn random_token() -> String {
    let mut b = [0u8; 32];
    let mut filled = 0;
    while filled < b.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `b`.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn auth() -> Auth {
        let config: Config = toml::from_str(
            r#"
            [auth]
            allow_plaintext_passwords = true
            [[users]]
            login = "ops"
            passcode = "secret"
            groups = ["admins"]
            [[users]]
            login = "viewer"
            passcode = "look"
            groups = ["monitors"]
            [[users]]
            login = "app"
            passcode = "app"
            "#,
        )
        .unwrap();
        let security = Arc::new(Security::from_config(&config).unwrap());
        Auth::new(security, &AdminConfig::default())
    }

    fn basic_header(login: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{login}:{pass}"));
        h.insert(header::AUTHORIZATION, format!("Basic {v}").parse().unwrap());
        h
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn roles_come_from_groups_and_reads_never_need_csrf() {
        run(async {
            let a = auth();
            let check = |h: HeaderMap, m: Method, need| {
                let a = &a;
                async move { a.check(&h, &m, need, "t").await }
            };
            let p = check(
                basic_header("viewer", "look"),
                Method::GET,
                ConsoleRole::Read,
            )
            .await
            .unwrap();
            assert_eq!(p.role, ConsoleRole::Read);
            assert_eq!(
                check(
                    basic_header("viewer", "look"),
                    Method::POST,
                    ConsoleRole::Admin
                )
                .await
                .unwrap_err(),
                AuthError::Csrf
            );
            let mut h = basic_header("viewer", "look");
            h.insert(CSRF_HEADER, "1".parse().unwrap());
            assert_eq!(
                check(h, Method::POST, ConsoleRole::Admin)
                    .await
                    .unwrap_err(),
                AuthError::ReadOnly("viewer".into())
            );
            assert_eq!(
                check(basic_header("app", "app"), Method::GET, ConsoleRole::Read)
                    .await
                    .unwrap_err(),
                AuthError::NoRole("app".into())
            );
            assert_eq!(
                check(basic_header("ops", "wrong"), Method::GET, ConsoleRole::Read)
                    .await
                    .unwrap_err(),
                AuthError::Wrong
            );
        });
    }

    #[test]
    fn a_session_cookie_acts_only_with_its_own_csrf_token() {
        run(async {
            let a = auth();
            let (token, p) = a.login("ops", "secret", "t").await.unwrap();
            let mut h = HeaderMap::new();
            h.insert(
                header::COOKIE,
                format!("x=1; {SESSION_COOKIE}={token}").parse().unwrap(),
            );
            assert!(a
                .check(&h, &Method::GET, ConsoleRole::Admin, "t")
                .await
                .is_ok());
            assert_eq!(
                a.check(&h, &Method::POST, ConsoleRole::Admin, "t")
                    .await
                    .unwrap_err(),
                AuthError::Csrf
            );
            h.insert(CSRF_HEADER, "not-it".parse().unwrap());
            assert_eq!(
                a.check(&h, &Method::POST, ConsoleRole::Admin, "t")
                    .await
                    .unwrap_err(),
                AuthError::Csrf
            );
            h.insert(CSRF_HEADER, p.csrf.unwrap().parse().unwrap());
            assert!(a
                .check(&h, &Method::POST, ConsoleRole::Admin, "t")
                .await
                .is_ok());
            a.logout(&h);
            assert_eq!(
                a.check(&h, &Method::GET, ConsoleRole::Read, "t")
                    .await
                    .unwrap_err(),
                AuthError::Missing
            );
        });
    }

    #[test]
    fn without_users_nothing_is_open() {
        run(async {
            let security = Arc::new(Security::from_config(&Config::default()).unwrap());
            let a = Auth::new(security, &AdminConfig::default());
            assert_eq!(
                a.check(&HeaderMap::new(), &Method::GET, ConsoleRole::Read, "t")
                    .await
                    .unwrap_err(),
                AuthError::Disabled
            );
        });
    }
}
