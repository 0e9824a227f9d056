//! zk mode's start: this broker's local copy of the replicated log is
//! read, it registers in ZooKeeper, follows the elected master as a hot
//! standby until an election makes it master, then leads: the shards'
//! batches go to the replication leader (`store::replicated::leader`) as
//! they go to a database writer in the database modes, and the shards
//! restore from its tables as they would from the database's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tracing::{info, warn};

use super::db_shard::DbShared;
use super::{fenced, fresh_spool_dir, ha_span, in_send_order};
use crate::config::Config;
use crate::ha::zk::{self, Election, Step, ZkConfig};
use crate::ha::{Role, RoleCell};
use crate::side;
use crate::store::replicated::follower::{self, FollowConfig, LinkEnd};
use crate::store::replicated::leader::{self, LeaderConfig};
use crate::store::replicated::log_file::LocalLog;
use crate::store::replicated::status::ReplStatus;

/// Waits to be elected, then takes over: returns the shards' shared state
/// and the spool directory.
pub fn zk_take_over(
    config: &Config,
    role: &Arc<RoleCell>,
    (stomp, admin): (SocketAddr, SocketAddr),
    status: Arc<ReplStatus>,
    open_ports: &mut dyn FnMut() -> Result<()>,
) -> Result<(DbShared, std::path::PathBuf)> {
    let ha = config.ha.clone();
    let dir = config.store.dir.join("replica");
    let (log, replica) = LocalLog::open(
        &dir,
        config.store.sync == crate::config::SyncMode::QuorumMem,
    )?;
    // Bound now: a wrong address fails the start, and a broker that wins
    // an election accepts its standbys' connections at once.
    let listener = std::net::TcpListener::bind(ha.replication_bind).with_context(|| {
        format!(
            "config key `ha.replication_bind`: cannot listen on {}",
            ha.replication_bind
        )
    })?;
    listener.set_nonblocking(true)?;
    let repl = format!(
        "{}:{}",
        ha.hostname.clone().unwrap_or_default(),
        listener.local_addr()?.port()
    );
    let quorum = ha.replicas / 2 + 1;
    let session_timeout = Duration::from_millis(ha.zk_session_timeout_ms);
    let replica_timeout = Duration::from_millis(ha.replica_timeout_ms);
    let zk_path = ha.zk_path();
    let cluster = zk_path.clone();
    let sync = config.store.sync;
    let zcfg = ZkConfig {
        address: ha.zk_address.clone().unwrap_or_default(),
        path: zk_path.clone(),
        session_timeout,
        quorum,
        repl: repl.clone(),
        stomp: stomp.to_string(),
        replica_timeout,
    };
    info!(
        role = "standby",
        %repl,
        position = ?replica.position(),
        zk = %zcfg.address,
        path = %zk_path,
        "local copy read; joining the cluster"
    );
    let follow_status = status.clone();
    let own_repl = repl.clone();
    let follow_cluster = cluster.clone();
    let (replica, log, election, epoch) = side::block_on(async move {
        let mut replica = replica;
        let mut election = Election::join(zcfg, replica.position()).await?;
        let mut said_standby = false;
        let mut warn_at = std::time::Instant::now();
        // The epoch whose master this broker lost its link to.
        let mut suspect = None;
        loop {
            let step = match election.next(replica.position(), suspect).await {
                Ok(s) => s,
                Err(e) => {
                    // ZooKeeper away (no quorum, restarting): wait for it,
                    // holding what we have.
                    if std::time::Instant::now() >= warn_at {
                        warn!(role = "standby", error = %e, "cannot reach ZooKeeper; trying again");
                        warn_at = std::time::Instant::now() + Duration::from_secs(10);
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if let Err(e) = election.ensure_session(replica.position()).await {
                        warn!(role = "standby", error = %e, "cannot open a new ZooKeeper session");
                    }
                    continue;
                }
            };
            match step {
                Step::Lead { epoch } => {
                    return Ok::<_, anyhow::Error>((replica, log, election, epoch))
                }
                Step::Follow { epoch, repl } => {
                    if !std::mem::replace(&mut said_standby, true) {
                        info!(role = "standby", epoch, master = %repl, "following the master");
                        println!("brokk standby stomp={stomp} admin={admin}");
                    }
                    let cfg = FollowConfig {
                        cluster: follow_cluster.clone(),
                        // The replication address names a broker across
                        // its restarts (its member node does not).
                        node: own_repl.clone(),
                        epoch,
                        sync,
                        timeout: replica_timeout,
                    };
                    suspect = None;
                    match follower::follow(&mut replica, &log, &repl, &cfg, &follow_status).await {
                        LinkEnd::Refused(why) => {
                            warn!(role = "standby", epoch, reason = %why, "the master refused this standby");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        LinkEnd::Unreachable(why) | LinkEnd::Lost(why) => {
                            // An election opens once a quorum suspects the
                            // master (or its node is gone): see `next`.
                            warn!(role = "standby", epoch, reason = %why, position = ?replica.position(), "lost the master");
                            suspect = Some(epoch);
                        }
                        LinkEnd::LocalFault(why) => {
                            return Err(anyhow::anyhow!(
                                "the local copy of the replicated log failed: {why}"
                            ));
                        }
                    }
                }
            }
        }
    })??;
    role.set(Role::Recovering);
    let span = ha_span(Role::Recovering, epoch);
    let _in = span.enter();
    open_ports()?;
    crate::ha::fence::set_epoch(epoch);
    crate::protocol::stomp::session::set_cluster_identity(epoch, &repl);
    status.set_epoch(epoch, None);
    let (requests, requests_rx) = flume::unbounded();
    let (stop, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let lcfg = LeaderConfig {
        cluster,
        epoch,
        quorum,
        sync,
        replica_timeout,
        takeover_timeout: session_timeout.max(Duration::from_secs(2)) * 2,
    };
    let fence_role = role.clone();
    side::handle()?.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => fenced(&fence_role, epoch, &format!("replication listener: {e}")),
        };
        let io = leader::LeaderIo {
            requests: requests_rx,
            ready: ready_tx,
            status,
            stop: stop_rx,
        };
        let why = leader::lead(replica, log, listener, lcfg, io).await;
        fenced(&fence_role, epoch, &why);
    });
    let hold_role = role.clone();
    let client = election.client();
    side::handle()?.spawn(async move {
        let why = zk::hold(client, zk_path, epoch).await;
        // The leader syncs its local copy, then ends the process; if it
        // is gone already, end it here.
        if stop.send(why.clone()).is_ok() {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        fenced(&hold_role, epoch, &why);
    });
    // The election (and its session) lives as long as the process: its
    // member node says this broker is alive.
    std::mem::forget(election);
    let mut loaded = side::block_on(ready_rx)?
        .map_err(|_| anyhow!("the replication leader stopped before the takeover"))?;
    in_send_order(&mut loaded);
    info!(
        messages = loaded.messages.len(),
        subscriptions = loaded.subs.len(),
        "elected; the cluster's tables are held"
    );
    let spool_dir = fresh_spool_dir(&config.store.spool_dir())?;
    let lanes = (0..config.shard_count())
        .map(|_| requests.clone())
        .collect();
    Ok((DbShared::new(lanes, loaded, false), spool_dir))
}
