//! Who may connect and what they may do: TLS on the listeners, users with
//! argon2id passcode hashes, per-destination rights (ActiveMQ's
//! authorizationPlugin) and a per-address connection rate. The pieces are
//! plain `pub` types so that the admin HTTP server can use them too.

pub mod authz;
pub mod rate;
pub mod tls;
pub mod users;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

pub use authz::{Authorizer, KnownDestinations, Right, Rights};
pub use users::{hash_password, UserInfo, Users};

use crate::broker::Destination;
use crate::config::Config;

/// Threads that run argon2 verifications.
const VERIFIER_THREADS: usize = 2;
/// Verifications queued for them; more wait (the CONNECT deadline bounds how long).
const VERIFIER_QUEUE: usize = 256;

type Job = Box<dyn FnOnce() + Send>;

/// Everything the listeners and sessions need to decide, shared by all shards.
pub struct Security {
    pub users: Users,
    pub authorizer: Option<Authorizer>,
    /// `auth.create_requires_admin`.
    pub create_requires_admin: bool,
    pub known: KnownDestinations,
    pub rate: rate::ConnectionRate,
    verifiers: OnceLock<flume::Sender<Job>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("users", &self.users)
            .field("authorizer", &self.authorizer)
            .finish_non_exhaustive()
    }
}

/// Why a CONNECT was refused; the text goes into the ERROR frame.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Authentication failed: login and passcode are required")]
    Anonymous,
    #[error("Authentication failed: login or passcode is wrong")]
    Wrong,
    #[error(
        "Authentication failed: the client certificate's subject ({0}) is not a configured user"
    )]
    UnknownCertificate(String),
    #[error("Authentication failed: not verified within limits.connect_timeout_ms")]
    TimedOut,
}

impl Security {
    pub fn from_config(config: &Config) -> anyhow::Result<Security> {
        let authorizer = Authorizer::from_config(&config.authorization)?;
        let known = KnownDestinations::default();
        if authorizer.is_some() {
            // The broker creates it by itself; nobody needs admin for it.
            known.insert(Destination::queue(&config.broker.dead_letter_queue));
        }
        let users = Users::from_config(&config.users, &config.auth)?;
        if users.is_empty() {
            // Open as ActiveMQ without a security plugin, but never silently.
            tracing::warn!(
                "no [[users]] configured: clients connect without credentials (anonymous access); add [[users]] to require a login"
            );
        }
        let plaintext = users.plaintext_logins();
        if !plaintext.is_empty() {
            tracing::warn!(
                users = ?plaintext,
                "auth.allow_plaintext_passwords: passcodes are kept in plain text in the config file; store argon2id hashes instead (brokk hash-password)"
            );
        }
        Ok(Security {
            users,
            authorizer,
            create_requires_admin: config.auth.create_requires_admin,
            known,
            rate: rate::ConnectionRate::new(config.limits.connections_per_ip_per_sec),
            verifiers: OnceLock::new(),
        })
    }

    /// Authenticates a CONNECT. `cert_login`: the subject CN of the
    /// client's verified certificate (mutual TLS), which needs no passcode.
    /// None: no users are configured, the broker is open.
    ///
    /// Argon2 takes tens of ms by design. Run on a shard it would stall
    /// every connection of that shard for that long, and a client repeating
    /// wrong passcodes could stall it for good; so a pair not verified
    /// before goes to the verifier threads and the shard goes on serving
    /// while it waits. Pairs verified before come from the cache at once,
    /// which keeps reconnect storms (a failover) cheap.
    pub async fn authenticate(
        self: &Arc<Self>,
        login: Option<&str>,
        passcode: Option<&str>,
        cert_login: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<Option<Arc<UserInfo>>, AuthError> {
        if self.users.is_empty() {
            return Ok(None);
        }
        let result = match (cert_login, login) {
            (Some(cn), _) => self
                .users
                .lookup(cn)
                .map(Some)
                .ok_or_else(|| AuthError::UnknownCertificate(cn.to_string())),
            (None, None) => Err(AuthError::Anonymous),
            (None, Some(login)) => {
                let passcode = passcode.unwrap_or_default();
                match self.users.cached(login, passcode) {
                    Some(u) => Ok(Some(u)),
                    None => self
                        .verify_off_thread(login, passcode)
                        .await
                        .map(Some)
                        .ok_or(AuthError::Wrong),
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(
                target: "audit",
                peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
                login = login.or(cert_login).unwrap_or(""),
                reason = %e,
                "authentication failed"
            );
        }
        result
    }

    async fn verify_off_thread(
        self: &Arc<Self>,
        login: &str,
        passcode: &str,
    ) -> Option<Arc<UserInfo>> {
        let (tx, rx) = flume::bounded(1);
        let me = self.clone();
        let (login, passcode) = (login.to_string(), passcode.to_string());
        let job: Job = Box::new(move || {
            let _ = tx.send(me.users.verify(&login, &passcode));
        });
        self.verifiers().send_async(job).await.ok()?;
        rx.recv_async().await.ok().flatten()
    }

    /// Started on first use: `check-config` and open brokers start none.
    fn verifiers(&self) -> &flume::Sender<Job> {
        self.verifiers.get_or_init(|| {
            let (tx, rx) = flume::bounded::<Job>(VERIFIER_QUEUE);
            for i in 0..VERIFIER_THREADS {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("brokk-auth-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job();
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a passcode verifier thread");
                }
            }
            tx
        })
    }

    /// What `user` may do on `dest`, decided once per connection and
    /// destination (the session caches it). None without
    /// `[[authorization]]`: everything is allowed.
    pub fn decide(&self, user: Option<&UserInfo>, dest: &Destination) -> Option<Decision> {
        let authz = self.authorizer.as_ref()?;
        let rights = user.map(|u| authz.rights(u, dest)).unwrap_or_default();
        Some(Decision {
            rights,
            known: !self.create_requires_admin || self.known.contains(dest),
        })
    }
}

/// One user's rights on one destination, and whether the broker knew the
/// destination when they were decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub rights: Rights,
    pub known: bool,
}

impl Decision {
    /// `right` is held, and the destination exists or may be created
    /// (ActiveMQ: the first SEND or SUBSCRIBE to a new destination needs
    /// admin too).
    pub fn allows(&self, right: Right) -> bool {
        self.rights.has(right) && (self.known || self.rights.admin)
    }

    /// The ERROR frame's message for a refusal of `right`.
    pub fn denial(&self, right: Right, dest: &Destination) -> String {
        if self.rights.has(right) {
            format!("not authorized to create {dest} (admin)")
        } else {
            format!("not authorized to {} {dest}", right.as_str())
        }
    }
}

/// One connection's authorization decisions, per destination, so that a
/// producer pays one map lookup per message, not an authorization pass.
/// Only filled when `[[authorization]]` entries exist.
#[derive(Debug, Default)]
pub struct Decisions {
    by_destination: std::collections::HashMap<Destination, Decision>,
}

impl Decisions {
    /// Refuses `right` on `dest` (with the message to send the client)
    /// unless `user` holds it, and, on a destination new to the broker,
    /// admin as well: decided on the first use, then looked up.
    pub fn authorize(
        &mut self,
        security: &Security,
        user: Option<&UserInfo>,
        dest: &Destination,
        right: Right,
    ) -> Result<(), String> {
        if security.authorizer.is_none() {
            return Ok(());
        }
        let decision = match self.by_destination.get(dest) {
            Some(d) => *d,
            None => {
                let Some(mut d) = security.decide(user, dest) else {
                    return Ok(());
                };
                if d.allows(right) && !d.known {
                    // Allowed to create it: from now on it exists.
                    security.known.insert(dest.clone());
                    d.known = true;
                }
                self.by_destination.insert(dest.clone(), d);
                d
            }
        };
        if decision.allows(right) {
            return Ok(());
        }
        let message = decision.denial(right, dest);
        tracing::warn!(
            user = user.map_or("", |u| u.login.as_str()),
            destination = %dest,
            right = right.as_str(),
            "{message}"
        );
        Err(message)
    }
}
