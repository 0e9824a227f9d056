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
    /// Largest message body the console may send (`limits.max_frame_size`).
    pub max_body_bytes: usize,
    pub console: AdminConfig,
    auth: auth::Auth,
    /// Users, authorization and the destinations the broker knows.
    security: Arc<crate::security::Security>,
    /// This process, as the Cluster page names it.
    pub identity: String,
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
            max_body_bytes: settings.max_body_bytes,
            auth: auth::Auth::new(settings.security.clone(), &settings.console),
            security: settings.security,
            console: settings.console,
            identity: format!("{host}/{}", std::process::id()),
        }
    }
}

/// Serves the admin port on the side runtime until the process ends.
pub fn start(listener: std::net::TcpListener, state: Arc<AdminState>) -> Result<()> {
    listener
        .set_nonblocking(true)
        .context("admin listener: cannot make it non-blocking")?;
    let rt = crate::side::handle()?;
    if !state.auth.enabled() {
        info!("admin port: console and API off (no [[users]] configured); /status, /healthz and /metrics answer");
    }
    rt.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "admin port: cannot serve");
                return;
            }
        };
        let app = api::router(state);
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            warn!(error = %e, "admin port stopped");
        }
    });
    Ok(())
}
