//! The admin port (8161): the web console, its JSON API, `/metrics`,
//! `/healthz` and `/status`. An axum server on the side tokio runtime; it
//! never touches a shard's data except by asking the shard (see `gather`).

mod api;
mod auth;
pub mod client;
mod cluster;
mod gather;
mod pages;
mod prometheus;
mod tls_listener;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::broker::message::MemoryUsage;
use crate::config::AdminConfig;
use crate::ha::RoleCell;
use crate::server::shard::Control;
use crate::store::journal::StoreUsage;

pub use auth::{ConsoleRole, CSRF_HEADER};

pub struct AdminState {
    pub role: Arc<RoleCell>,
    pub mode: String,
    pub started: Instant,
    /// Set once the shards run (never, while standby).
    pub controls: std::sync::OnceLock<Vec<flume::Sender<Control>>>,
    pub usage: Arc<MemoryUsage>,
    pub memory_limit_bytes: usize,
    /// Journal segments holding data (file mode).
    pub store_usage: Arc<StoreUsage>,
    /// File mode: the shared data directory (its epoch file names the
    /// master).
    pub store_dir: Option<PathBuf>,
    pub stomp: SocketAddr,
    /// Largest message the console may send (`limits.max_frame_size`,
    /// lowered once a database mode learns how much one statement takes:
    /// see [`AdminState::lower_max_message_bytes`]).
    max_message_bytes: std::sync::atomic::AtomicUsize,
    pub console: AdminConfig,
    auth: auth::Auth,
    /// Users, authorization and the destinations the broker knows.
    security: Arc<crate::security::Security>,
    /// This process, as the Cluster page names it.
    pub identity: String,
    /// zk mode: the replicated log's epoch, position and replicas' lag.
    pub replication: Arc<crate::store::replicated::status::ReplStatus>,
}

/// What `AdminState::new` needs from the configuration.
pub struct AdminSettings {
    pub mode: String,
    pub memory_limit_bytes: usize,
    pub store_dir: Option<PathBuf>,
    pub stomp: SocketAddr,
    pub max_body_bytes: usize,
    pub console: AdminConfig,
    pub security: Arc<crate::security::Security>,
}

impl AdminState {
    pub fn new(
        settings: AdminSettings,
        role: Arc<RoleCell>,
        usage: Arc<MemoryUsage>,
        store_usage: Arc<StoreUsage>,
    ) -> AdminState {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        AdminState {
            role,
            mode: settings.mode,
            started: Instant::now(),
            controls: std::sync::OnceLock::new(),
            usage,
            memory_limit_bytes: settings.memory_limit_bytes,
            store_usage,
            store_dir: settings.store_dir,
            stomp: settings.stomp,
            max_message_bytes: settings.max_body_bytes.into(),
            auth: auth::Auth::new(settings.security.clone(), &settings.console),
            security: settings.security,
            console: settings.console,
            identity: format!("{host}/{}", std::process::id()),
            replication: Arc::default(),
        }
    }
}

impl AdminState {
    /// Largest message (body and headers, as [`Message::footprint`]
    /// counts them) the console may send.
    ///
    /// [`Message::footprint`]: crate::broker::message::Message::footprint
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A database takes less in one statement than `limits.max_frame_size`:
    /// a bigger message would be retried for ever, holding every later
    /// receipt of its shard back, so the console refuses it instead.
    pub fn lower_max_message_bytes(&self, limit: usize) {
        self.max_message_bytes
            .fetch_min(limit, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The client of an admin request, on either port.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer(*s.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tls_listener::TlsListener>,
    > for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tls_listener::TlsListener>) -> Peer {
        Peer(*s.remote_addr())
    }
}

/// The admin port over TLS (`listeners.admin_tls`).
pub struct AdminTls {
    pub listener: std::net::TcpListener,
    pub config: Arc<rustls::ServerConfig>,
    pub handshake_timeout: std::time::Duration,
}

/// Serves the admin port (and its TLS twin, if configured) on the side
/// runtime until the process ends.
pub fn start(
    listener: std::net::TcpListener,
    tls: Option<AdminTls>,
    state: Arc<AdminState>,
) -> Result<()> {
    let rt = crate::side::handle()?;
    if !state.auth.enabled() {
        info!("admin port: console and API off (no [[users]] configured); /status, /healthz and /metrics answer");
    }
    let plain = tokio_listener(&rt, listener)?;
    let app = api::router(state);
    let service = app.into_make_service_with_connect_info::<Peer>();
    if let Some(t) = tls {
        let tcp = tokio_listener(&rt, t.listener)?;
        let tls = {
            let _in = rt.enter();
            tls_listener::TlsListener::new(tcp, t.config, t.handshake_timeout)
                .context("admin TLS listener")?
        };
        let service = service.clone();
        rt.spawn(async move {
            if let Err(e) = axum::serve(tls, service).await {
                warn!(error = %e, "admin TLS port stopped");
            }
        });
    }
    rt.spawn(async move {
        if let Err(e) = axum::serve(plain, service).await {
            warn!(error = %e, "admin port stopped");
        }
    });
    Ok(())
}

fn tokio_listener(
    rt: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
) -> Result<tokio::net::TcpListener> {
    listener
        .set_nonblocking(true)
        .context("admin listener: cannot make it non-blocking")?;
    let _in = rt.enter();
    tokio::net::TcpListener::from_std(listener).context("admin listener")
}
