//! zk mode's election, through ZooKeeper.
//!
//! Under `ha.zk_path`:
//! - `members/n-<seq>` (ephemeral, sequential): one per live broker, JSON
//!   [`Member`]: its replication address, its state and, as a candidate,
//!   the epoch it stopped following and its log position.
//! - `epoch` (persistent, JSON [`EpochNode`]): the current epoch and its
//!   master. Claimed with a compare-and-set on the znode's version, so one
//!   broker at most wins each epoch.
//! - `election-<e>` (persistent, empty): someone stopped following epoch
//!   e. Its master steps down when it sees it; every standby of e that
//!   sees it becomes a candidate.
//!
//! Safety (Raft's argument): a standby stops taking epoch e's entries
//! before it publishes its position as a candidate, and a winner needs a
//! quorum of candidates, so some candidate holds every entry a quorum
//! acknowledged under e, and the winner - the latest position among them -
//! holds them all. Once a quorum stopped following e, e's master cannot
//! commit anything more (it needs a quorum's acknowledgements).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use zookeeper_client as zk;

use crate::store::replicated::wire::Pos;

#[derive(Debug, Clone)]
pub struct ZkConfig {
    /// `host:port,...`
    pub address: String,
    pub path: String,
    pub session_timeout: Duration,
    pub quorum: usize,
    /// The replication address the others reach this broker by.
    pub repl: String,
    /// This broker's client address, for operators reading the znodes.
    pub stomp: String,
    /// How long a suspicion of the master waits for a quorum to share it.
    pub replica_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error("ZooKeeper at {address} (ha.zk_address): {source}")]
    Connect { address: String, source: zk::Error },
    #[error("ZooKeeper {what} {path}: {source}")]
    Op {
        what: &'static str,
        path: String,
        source: zk::Error,
    },
    #[error("ZooKeeper node {path} holds something else: {reason}")]
    Data { path: String, reason: String },
}

/// A broker's member node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub repl: String,
    pub stomp: String,
    /// `joining`, `follower`, `candidate` or `master`.
    pub state: String,
    pub epoch: u64,
    pub pos: (u64, u64),
}

/// The `epoch` node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EpochNode {
    pub epoch: u64,
    /// The master's member node name (empty: none yet).
    pub master: String,
    pub repl: String,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Follow epoch `epoch`'s master at `repl`.
    Follow { epoch: u64, repl: String },
    /// This broker won epoch `epoch`.
    Lead { epoch: u64 },
}

pub struct Election {
    cfg: ZkConfig,
    client: zk::Client,
    /// Our member node's name under `members`.
    me: String,
    poll: Duration,
}

fn op<'a>(what: &'static str, path: &'a str) -> impl FnOnce(zk::Error) -> ZkError + 'a {
    move |source| ZkError::Op {
        what,
        path: path.to_string(),
        source,
    }
}

/// Who wins among candidates: the latest position, then the oldest member
/// (lowest sequence).
pub fn winner(candidates: &[(String, Pos)]) -> Option<&str> {
    candidates
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|c| c.0.as_str())
}

impl Election {
    /// Connects and registers this broker (state `joining`).
    pub async fn join(cfg: ZkConfig, pos: Pos) -> Result<Election, ZkError> {
        let client = connect(&cfg).await?;
        let mut e = Election {
            poll: Duration::from_millis(20),
            cfg,
            client,
            me: String::new(),
        };
        e.register(pos).await?;
        Ok(e)
    }

    async fn register(&mut self, pos: Pos) -> Result<(), ZkError> {
        let members = format!("{}/members", self.cfg.path);
        let dir = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        self.client
            .mkdir(&members, &dir)
            .await
            .map_err(op("mkdir", &members))?;
        // Our previous incarnation's node (killed and restarted within a
        // session timeout) would count as a second broker: it goes now.
        for (name, m) in self.members().await? {
            if m.repl == self.cfg.repl && name != self.me {
                let _ = self.client.delete(&format!("{members}/{name}"), None).await;
            }
        }
        let data = self.member_json("joining", 0, pos);
        let prefix = format!("{members}/n-");
        let (_, seq) = self
            .client
            .create(
                &prefix,
                &data,
                &zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all()),
            )
            .await
            .map_err(op("create", &prefix))?;
        self.me = format!("n-{seq}");
        info!(member = %self.me, path = %self.cfg.path, "registered in ZooKeeper");
        *REGISTERED.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((self.client.clone(), format!("{members}/{}", self.me)));
        Ok(())
    }

    /// Our member node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The session, for [`hold`].
    pub fn client(&self) -> zk::Client {
        self.client.clone()
    }

    fn member_json(&self, state: &str, epoch: u64, pos: Pos) -> Vec<u8> {
        serde_json::to_vec(&Member {
            repl: self.cfg.repl.clone(),
            stomp: self.cfg.stomp.clone(),
            state: state.into(),
            epoch,
            pos: (pos.epoch, pos.index),
        })
        .expect("plain data")
    }

    /// Publishes our state.
    pub async fn publish(&mut self, state: &str, epoch: u64, pos: Pos) -> Result<(), ZkError> {
        let path = format!("{}/members/{}", self.cfg.path, self.me);
        let data = self.member_json(state, epoch, pos);
        match self.client.set_data(&path, &data, None).await {
            Ok(_) => Ok(()),
            // Our session ended meanwhile (its ephemeral node went): a new
            // session, a new node.
            Err(zk::Error::NoNode) | Err(zk::Error::SessionExpired) => {
                self.reconnect(pos).await?;
                self.client
                    .set_data(
                        &format!("{}/members/{}", self.cfg.path, self.me),
                        &data,
                        None,
                    )
                    .await
                    .map(|_| ())
                    .map_err(op("set", &path))
            }
            Err(e) => Err(op("set", &path)(e)),
        }
    }

    /// A new session if ours ended (expired while ZooKeeper was away):
    /// a standby outlives ZooKeeper outages.
    pub async fn ensure_session(&mut self, pos: Pos) -> Result<(), ZkError> {
        match self.client.state() {
            zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed => {
                self.reconnect(pos).await
            }
            _ => Ok(()),
        }
    }

    async fn reconnect(&mut self, pos: Pos) -> Result<(), ZkError> {
        warn!(member = %self.me, "the ZooKeeper session ended; registering again");
        self.client = connect(&self.cfg).await?;
        self.register(pos).await
    }

    /// The epoch node and its version (made at epoch 0 when absent).
    pub async fn read_epoch(&self) -> Result<(EpochNode, i32), ZkError> {
        let path = format!("{}/epoch", self.cfg.path);
        loop {
            match self.client.get_data(&path).await {
                Ok((data, stat)) => {
                    let node: EpochNode =
                        serde_json::from_slice(&data).map_err(|e| ZkError::Data {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                    return Ok((node, stat.version));
                }
                Err(zk::Error::NoNode) => {
                    let data = serde_json::to_vec(&EpochNode::default()).expect("plain data");
                    match self
                        .client
                        .create(
                            &path,
                            &data,
                            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
                        )
                        .await
                    {
                        Ok(_) | Err(zk::Error::NodeExists) => continue,
                        Err(e) => return Err(op("create", &path)(e)),
                    }
                }
                Err(e) => return Err(op("get", &path)(e)),
            }
        }
    }

    async fn exists(&self, path: &str) -> Result<bool, ZkError> {
        self.client
            .check_stat(path)
            .await
            .map(|s| s.is_some())
            .map_err(op("stat", path))
    }

    fn election_path(&self, epoch: u64) -> String {
        format!("{}/election-{epoch}", self.cfg.path)
    }

    /// Says that this broker stopped following epoch `epoch`.
    async fn open_election(&self, epoch: u64) -> Result<(), ZkError> {
        let path = self.election_path(epoch);
        match self
            .client
            .create(
                &path,
                &[],
                &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
            )
            .await
        {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(op("create", &path)(e)),
        }
    }

    /// The live members and what each published (unreadable ones left
    /// out), one per replication address (the newest: a restarted broker
    /// whose old node has not expired yet counts once).
    async fn members(&self) -> Result<Vec<(String, Member)>, ZkError> {
        let members = format!("{}/members", self.cfg.path);
        let mut names = self
            .client
            .list_children(&members)
            .await
            .map_err(op("list", &members))?;
        // Sequence order: a later node of the same broker replaces its
        // earlier one below.
        names.sort();
        let mut out: Vec<(String, Member)> = Vec::new();
        for n in names {
            let path = format!("{members}/{n}");
            let data = match self.client.get_data(&path).await {
                Ok((d, _)) => d,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(op("get", &path)(e)),
            };
            let Ok(m) = serde_json::from_slice::<Member>(&data) else {
                continue;
            };
            out.retain(|(_, o)| o.repl != m.repl);
            out.push((n, m));
        }
        Ok(out)
    }

    /// Candidates for epoch `epoch` (member name and position), how many
    /// brokers suspect its master (candidates included), and the other
    /// live members, but `master` (its own node outlives a killed master
    /// by a session timeout).
    async fn candidates(
        &self,
        epoch: u64,
        master: &str,
    ) -> Result<(Vec<(String, Pos)>, usize, Vec<String>), ZkError> {
        let mut out = Vec::new();
        let mut suspects = 0;
        let mut others = Vec::new();
        for (n, m) in self.members().await? {
            if n == master {
                continue;
            }
            let for_epoch = m.epoch == epoch;
            if m.state == "candidate" && for_epoch {
                out.push((
                    n,
                    Pos {
                        epoch: m.pos.0,
                        index: m.pos.1,
                    },
                ));
                suspects += 1;
            } else {
                if m.state == "suspect" && for_epoch {
                    suspects += 1;
                }
                others.push(n);
            }
        }
        Ok((out, suspects, others))
    }

    /// Decides what this broker does next, holding the log up to `pos`
    /// (and taking nothing more until told): follow a live master, or
    /// stand as a candidate until someone wins - possibly this broker.
    ///
    /// `suspect`: the epoch whose master this broker lost its link to. While
    /// that master's node lives, an election opens only once a quorum of
    /// brokers suspects it (Raft's PreVote): one standby that cannot reach
    /// a healthy master (a firewall, a wrong address) must not depose it.
    /// Not reaching that within the replica timeout, it follows again.
    pub async fn next(&mut self, pos: Pos, suspect: Option<u64>) -> Result<Step, ZkError> {
        let mut said = None;
        let mut since = Instant::now();
        let suspecting_since = Instant::now();
        loop {
            let (e, version) = self.read_epoch().await?;
            let master_alive = !e.master.is_empty()
                && e.repl != self.cfg.repl
                && self
                    .exists(&format!("{}/members/{}", self.cfg.path, e.master))
                    .await?
                && !self.exists(&self.election_path(e.epoch)).await?;
            // Only the master we lost is suspect: a new epoch's is not.
            let suspect = suspect == Some(e.epoch);
            if master_alive && !suspect {
                self.publish("follower", e.epoch, pos).await?;
                return Ok(Step::Follow {
                    epoch: e.epoch,
                    repl: e.repl,
                });
            }
            if master_alive {
                self.publish("suspect", e.epoch, pos).await?;
                let (_, suspects, _) = self.candidates(e.epoch, &e.master).await?;
                if suspects < self.cfg.quorum {
                    if suspecting_since.elapsed() >= self.cfg.replica_timeout {
                        info!(
                            epoch = e.epoch,
                            suspects, "too few brokers suspect the master; following it again"
                        );
                        self.publish("follower", e.epoch, pos).await?;
                        return Ok(Step::Follow {
                            epoch: e.epoch,
                            repl: e.repl,
                        });
                    }
                    tokio::time::sleep(self.poll).await;
                    continue;
                }
                info!(
                    epoch = e.epoch,
                    suspects, "a quorum suspects the master; opening an election"
                );
            }
            if !e.master.is_empty() {
                // Its master may be alive but unreachable, or hung: it
                // steps down when it sees this.
                self.open_election(e.epoch).await?;
            }
            self.publish("candidate", e.epoch, pos).await?;
            if said != Some(e.epoch) {
                info!(epoch = e.epoch, position = ?pos, "candidate for the next epoch");
                said = Some(e.epoch);
                since = Instant::now();
            }
            let (c, _, others) = self.candidates(e.epoch, &e.master).await?;
            // Every live broker stands, or had a session timeout to: under
            // `quorum_mem` a broker restarted from its disk may hold less
            // than it acknowledged, and the one that holds the rest must
            // not be left out by a quick quorum of the others.
            let all_in = others.is_empty() || since.elapsed() >= self.client.session_timeout();
            if c.len() >= self.cfg.quorum && all_in && winner(&c) == Some(self.me.as_str()) {
                let path = format!("{}/epoch", self.cfg.path);
                // Past every epoch a candidate's log holds, even if
                // ZooKeeper's node was lost and made again at 0.
                let newest = c.iter().map(|(_, p)| p.epoch).max().unwrap_or(0);
                let next = EpochNode {
                    epoch: e.epoch.max(newest) + 1,
                    master: self.me.clone(),
                    repl: self.cfg.repl.clone(),
                };
                let data = serde_json::to_vec(&next).expect("plain data");
                match self.client.set_data(&path, &data, Some(version)).await {
                    Ok(_) => {
                        self.publish("master", next.epoch, pos).await?;
                        info!(epoch = next.epoch, candidates = c.len(), position = ?pos, "won the election");
                        if e.epoch > 0 {
                            // Older election markers are history now.
                            let _ = self
                                .client
                                .delete(&self.election_path(e.epoch - 1), None)
                                .await;
                        }
                        return Ok(Step::Lead { epoch: next.epoch });
                    }
                    Err(zk::Error::BadVersion) => continue,
                    Err(err) => return Err(op("set", &path)(err)),
                }
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

/// This process's session and member node, for [`leave`].
static REGISTERED: std::sync::Mutex<Option<(zk::Client, String)>> = std::sync::Mutex::new(None);

/// On a clean stop: removes this broker's member node now, rather than
/// when its session times out (others would see a member that is gone).
/// Waits a second at most.
pub async fn leave() {
    let reg = REGISTERED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((client, path)) = reg {
        let _ = tokio::time::timeout(Duration::from_secs(1), client.delete(&path, None)).await;
    }
}

async fn connect(cfg: &ZkConfig) -> Result<zk::Client, ZkError> {
    let client = zk::Client::connector()
        .with_session_timeout(cfg.session_timeout)
        .with_connection_timeout(cfg.session_timeout / 3)
        .connect(&cfg.address)
        .await
        .map_err(|source| ZkError::Connect {
            address: cfg.address.clone(),
            source,
        })?;
    Ok(client)
}

/// Watches a master's hold on epoch `epoch`; returns why it ended: the
/// session expired or was disconnected longer than its timeout, the epoch
/// moved on, or a standby opened an election.
pub async fn hold(client: zk::Client, path: String, epoch: u64) -> String {
    // The timeout ZooKeeper granted (it bounds what was asked by its
    // tickTime), not the one configured.
    let session_timeout = client.session_timeout();
    let every = session_timeout / 8;
    let mut disconnected: Option<Instant> = None;
    loop {
        tokio::time::sleep(every).await;
        match client.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                disconnected = None;
            }
            zk::SessionState::Disconnected => {
                let since = *disconnected.get_or_insert_with(Instant::now);
                if since.elapsed() >= session_timeout {
                    return format!(
                        "disconnected from ZooKeeper for {} ms (the session timeout)",
                        session_timeout.as_millis()
                    );
                }
                continue;
            }
            s => return format!("the ZooKeeper session ended ({s:?})"),
        }
        let epoch_path = format!("{path}/epoch");
        match client.get_data(&epoch_path).await {
            Ok((data, _)) => match serde_json::from_slice::<EpochNode>(&data) {
                Ok(n) if n.epoch != epoch => {
                    return format!("epoch {} was claimed by {}", n.epoch, n.master)
                }
                Ok(_) => {}
                Err(e) => return format!("{epoch_path} holds something else: {e}"),
            },
            Err(zk::Error::SessionExpired) => return "the ZooKeeper session expired".into(),
            Err(_) => continue,
        }
        match client.check_stat(&format!("{path}/election-{epoch}")).await {
            Ok(Some(_)) => {
                return "a standby stopped following this master (election opened)".into()
            }
            Ok(None) => {}
            Err(zk::Error::SessionExpired) => return "the ZooKeeper session expired".into(),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_position_wins_then_the_oldest_member() {
        let p = |e, i| Pos { epoch: e, index: i };
        let c = vec![
            ("n-0000000002".to_string(), p(1, 10)),
            ("n-0000000001".to_string(), p(1, 10)),
            ("n-0000000003".to_string(), p(0, 99)),
        ];
        assert_eq!(winner(&c), Some("n-0000000001"));
        let c = vec![
            ("n-0000000001".to_string(), p(1, 10)),
            ("n-0000000003".to_string(), p(2, 1)),
        ];
        assert_eq!(winner(&c), Some("n-0000000003"));
        assert_eq!(winner(&[]), None);
    }
}
