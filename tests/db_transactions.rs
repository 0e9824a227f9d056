//! File mode's crash matrix of cross-shard transactions (tests/
//! transactions.rs) on the database modes, MariaDB and PostgreSQL: the
//! broker SIGKILLs itself at a chosen step of a two-phase COMMIT
//! (`BROKK_FAULT_TX_CRASH`), or is SIGKILLed at random moments of a loop of
//! COMMITs, and a new broker on the same database must find every
//! transaction wholly in effect or not at all. Once everything is consumed
//! no row is left behind. Each test makes its own database (servers
//! started by `ops/services.sh start mariadb postgres`).

mod common;

use common::db::{as_master, assert_tables_empty, Engine, Node, TestDb};
use common::tx::{
    assert_applied, assert_dropped, assert_selective_consumed, assert_selectors_kept,
    commit_into_a_crash, commit_to_selective_subscriptions_into_a_crash, everything_in, fill,
    kills_during_commits, outs_and_srcs, topic_on,
};
use common::Broker;

/// Each round's check takes every source message without acknowledging
/// it (and the commit loop has some in flight when the broker dies): each
/// is a failed delivery, and the database keeps redelivery counts across
/// restarts. Past the default limit (6) the sources would move to the
/// dead-letter queue in the middle of the test.
const CONFIG: &str = "[broker]\nmax_redeliveries = 1000\n";

/// What a transaction writes and must not leave behind.
const TABLES: &[&str] = &["ACTIVEMQ_MSGS", "BROKK_TX", "BROKK_TX_ACKS"];

/// A fresh database and one broker's ports on it, restarted at will.
struct Store {
    db: TestDb,
    dir: tempfile::TempDir,
    node: Node,
}

impl Store {
    fn new(engine: Engine) -> Store {
        Store {
            db: TestDb::new(engine),
            dir: tempfile::tempdir().unwrap(),
            node: Node::new(),
        }
    }

    /// The only broker on the database (a new process each time), with
    /// `env` (fault switches).
    fn start_env(&self, env: &[(&str, &str)]) -> Broker {
        as_master(self.node.start_env(&self.db, self.dir.path(), CONFIG, env))
    }

    fn start(&self) -> Broker {
        self.start_env(&[])
    }

    /// On a broker that kills itself at `step`: a COMMIT that SENDs 20
    /// messages to each output queue and ACKs one message of each source
    /// queue, which hold `more + 1` each (`a-0..`, `a-last`; `b-...`).
    /// Returns the queues and the ACKed bodies.
    fn crash_in_a_commit(
        &self,
        step: &str,
        more: usize,
    ) -> ([String; 2], [String; 2], Vec<String>) {
        let (outs, srcs) = outs_and_srcs();
        let mut b = self.start_env(&[("BROKK_FAULT_TX_CRASH", step)]);
        let mut p = b.client();
        fill(&mut p, &srcs[0], "a", more);
        fill(&mut p, &srcs[1], "b", more);
        let acked = commit_into_a_crash(&mut b, &outs, &srcs, 20);
        (outs, srcs, acked)
    }
}

/// Killed once every part is prepared, before the coordinator stored the
/// decision: after a restart no SEND is there and both ACKed source
/// messages are back; the prepared rows are gone once that is consumed.
fn a_crash_before_the_decision_drops_every_part(engine: Engine) {
    let s = Store::new(engine);
    let (outs, srcs, _) = s.crash_in_a_commit("prepared", 0);
    let b = s.start();
    assert_dropped(&b, &outs, &srcs);
    assert_tables_empty(&s.db, TABLES);
}

/// Killed once the decision is stored, before the participant that is not
/// the coordinator applied its part: after a restart every SEND is on both
/// shards' queues and both ACKs are in effect; once everything is
/// consumed no row is left, and another restart finds every queue empty.
fn a_crash_after_the_decision_applies_every_part(engine: Engine) {
    let s = Store::new(engine);
    let (outs, srcs, acked) = s.crash_in_a_commit("decided", 1);
    let mut b = s.start();
    assert_applied(&b, &outs, &srcs, &acked, 20);
    assert_tables_empty(&s.db, TABLES);
    b.kill9();
    let b = s.start();
    let mut v = b.client();
    for (i, q) in outs.iter().chain(&srcs).enumerate() {
        let left = everything_in(&mut v, &format!("q{i}"), q);
        assert!(left.is_empty(), "{q} after another restart: {left:?}");
    }
}

/// A transaction's topic SENDs applied by recovery reach only the durable
/// subscriptions whose selector takes them, and the ones passed over let
/// go of them in the tables (an ack row): across another restart they
/// stay passed over, and once the others have acknowledged them no
/// message or ack row is left.
fn a_commit_applied_by_recovery_keeps_to_durable_subscriptions_selectors(engine: Engine) {
    let s = Store::new(engine);
    let topics = [topic_on(0, "sel"), topic_on(1, "sel")];
    let mut b = s.start_env(&[("BROKK_FAULT_TX_CRASH", "decided")]);
    commit_to_selective_subscriptions_into_a_crash(&mut b, &topics);
    let mut b = s.start();
    assert_selectors_kept(b.stomp, &topics, false);
    b.kill9();
    let mut b = s.start();
    assert_selectors_kept(b.stomp, &topics, true);
    assert_tables_empty(
        &s.db,
        &[
            "ACTIVEMQ_MSGS",
            "BROKK_TOPIC_ACKS",
            "BROKK_TX",
            "BROKK_TX_ACKS",
        ],
    );
    b.kill9();
    let b = s.start();
    assert_selective_consumed(b.stomp, &topics);
}

/// Ten rounds of a commit loop killed at a random moment (every fourth a
/// clean stop), each followed by a new broker on the database: every
/// transaction all or nothing, receipted ones in effect, source ACKs in
/// effect exactly with their SENDs. At the end the sources are consumed
/// and no row is left.
fn repeated_kills_during_cross_shard_commits_leave_each_all_or_nothing(engine: Engine) {
    let s = Store::new(engine);
    let (_, srcs) = outs_and_srcs();
    let b = kills_during_commits(10, s.start(), || s.start());
    let mut v = b.client();
    for (i, src) in srcs.iter().enumerate() {
        for m in everything_in(&mut v, &format!("s{i}"), src) {
            v.ack(&m);
        }
    }
    v.disconnect();
    assert_tables_empty(&s.db, TABLES);
}

crate::on_both!(
    a_crash_before_the_decision_drops_every_part,
    a_crash_after_the_decision_applies_every_part,
    a_commit_applied_by_recovery_keeps_to_durable_subscriptions_selectors,
    repeated_kills_during_cross_shard_commits_leave_each_all_or_nothing
);
