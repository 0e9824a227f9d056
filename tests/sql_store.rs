//! The database store's engine against real MariaDB and PostgreSQL
//! servers (`ops/services.sh start mariadb postgres`): schema, batched
//! writes and loads, fencing by the lease row, and all-or-nothing batches.
//! Every scenario runs on both databases, each in a fresh database dropped
//! at the end.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use brokk::store::sql::conn::{connect, Db};
use brokk::store::sql::load::{lease_holder, load};
use brokk::store::sql::schema::{check_tables, columns, create_tables, Indexes};
use brokk::store::sql::write::{fence_query, write_batch, write_batch_as, Attempt};
use brokk::store::sql::{
    encoding, Batch, Dialect, LeaseToken, MsgRow, ProducerSeq, Redelivery, SqlError, SubRow,
    TopicAck, TxAckRow,
};
use bytes::Bytes;
use mysql_async::prelude::Queryable;

const MYSQL_ADMIN: &str = "mysql://brokk:brokk@127.0.0.1:3306/brokk";
const PG_ADMIN: &str = "postgres://brokk:brokk@127.0.0.1:5432/brokk";
const LEASE: &str = "test-broker-1";
const FAR_FUTURE: i64 = 4_000_000_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn admin_url(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => MYSQL_ADMIN,
        Dialect::Postgres => PG_ADMIN,
    }
}

/// A fresh database `brokk_t<random>`, dropped when this goes.
struct TempDb {
    dialect: Dialect,
    name: String,
    url: String,
}

impl TempDb {
    fn new(dialect: Dialect) -> TempDb {
        let name = format!("brokk_t{:016x}", random());
        let admin = admin_url(dialect);
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        runtime().block_on(async {
            let db = connect(admin, 1, Duration::from_secs(3)).await.unwrap_or_else(|e| {
                panic!("{dialect:?} is not reachable ({e}): run `ops/services.sh start mariadb postgres`")
            });
            exec(&db, &format!("CREATE DATABASE {name}")).await;
            db.disconnect().await;
        });
        TempDb { dialect, name, url }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let drop_sql = match self.dialect {
            Dialect::MySql => format!("DROP DATABASE IF EXISTS {}", self.name),
            Dialect::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        };
        runtime().block_on(async {
            match connect(admin_url(self.dialect), 1, Duration::from_secs(3)).await {
                Ok(db) => {
                    // Not fatal: PostgreSQL refuses WITH (FORCE) while an
                    // autovacuum worker is in the database (seen once); a
                    // leftover test database harms nothing.
                    let name = self.name.clone();
                    let sql = drop_sql.clone();
                    let dropped = tokio::spawn(async move {
                        exec(&db, &sql).await;
                        db.disconnect().await;
                    })
                    .await;
                    if dropped.is_err() {
                        eprintln!("cannot drop {name}; left behind");
                    }
                }
                Err(e) => eprintln!("cannot drop {}: {e}", self.name),
            }
        });
    }
}

/// Runs `scenario` on a fresh, empty schema on MariaDB, then PostgreSQL.
fn on_both<F, Fut>(scenario: F)
where
    F: Fn(Db, TempInfo) -> Fut,
    Fut: Future<Output = Db>,
{
    for dialect in [Dialect::MySql, Dialect::Postgres] {
        let temp = TempDb::new(dialect);
        runtime().block_on(async {
            let db = connect(&temp.url, 2, Duration::from_secs(3))
                .await
                .expect("connect to the test database");
            assert_eq!(db.dialect(), dialect);
            create_tables(&db, Indexes::Minimal)
                .await
                .expect("create tables");
            let db = scenario(
                db,
                TempInfo {
                    dialect,
                    url: temp.url.clone(),
                },
            )
            .await;
            db.disconnect().await;
        });
    }
}

#[derive(Clone)]
struct TempInfo {
    dialect: Dialect,
    url: String,
}

/// Runs a statement directly (test setup).
async fn exec(db: &Db, sql: &str) {
    match db {
        Db::MySql(pool) => {
            let mut c = pool.get_conn().await.unwrap();
            c.query_drop(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        Db::Postgres(pool) => {
            let c = pool.get().await.unwrap();
            c.client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
    }
}

/// The first column of the first row, as an integer.
async fn count(db: &Db, sql: &str) -> i64 {
    match db {
        Db::MySql(pool) => {
            let mut c = pool.get_conn().await.unwrap();
            let v: Option<i64> = c
                .query_first(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            v.unwrap()
        }
        Db::Postgres(pool) => {
            let c = pool.get().await.unwrap();
            let sql = format!("SELECT ({sql})::bigint");
            let row = c
                .client
                .query_one(sql.as_str(), &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            row.get(0)
        }
    }
}

async fn hold_lease(db: &Db) {
    set_lease(db, LEASE, FAR_FUTURE).await;
}

/// As a takeover leaves them: the lease row (holder, expiry) and the fence
/// row (holder) that write transactions check.
async fn set_lease(db: &Db, holder: &str, time: i64) {
    exec(
        db,
        &format!("UPDATE ACTIVEMQ_LOCK SET BROKER_NAME = '{holder}', TIME = {time} WHERE ID = 1"),
    )
    .await;
    exec(
        db,
        &format!("UPDATE BROKK_FENCE SET HOLDER = '{holder}' WHERE ID = 1"),
    )
    .await;
}

/// Writes message `id` (10 bytes) under our lease.
async fn insert_one(db: &Db, id: i64) {
    let batch = Batch {
        inserts: vec![message(id, 10)],
        ..Batch::default()
    };
    write_batch(db, &lease(), &batch).await.expect("a write");
}

fn lease() -> LeaseToken {
    LeaseToken(LEASE.to_string())
}

/// A message of about `size` bytes, encoded as the store does.
fn message(id: i64, size: usize) -> MsgRow {
    let body: Vec<u8> = (0..size).map(|i| (i as i64 * 31 + id) as u8).collect();
    let props = [(
        Bytes::from_static(b"destination"),
        Bytes::from(format!("/queue/q{}", id % 3)),
    )];
    let mut msg = Vec::new();
    encoding::encode(1_700_000_000_000 + id as u64, &props, &body, &mut msg);
    MsgRow {
        id,
        container: format!("queue://q{}", id % 3),
        expiration: if id % 5 == 0 { 1_900_000_000_000 } else { 0 },
        priority: id % 10,
        xid: None,
        msg: Bytes::from(msg),
    }
}

fn sub(topic: &str, client: &str, name: &str, selector: Option<&str>) -> SubRow {
    SubRow {
        container: format!("topic://{topic}"),
        client_id: client.into(),
        sub_name: name.into(),
        selector: selector.map(Into::into),
    }
}

fn tack(id: i64, client: &str, name: &str) -> TopicAck {
    TopicAck {
        id,
        client_id: client.into(),
        sub_name: name.into(),
    }
}

#[test]
fn schema_is_activemqs_and_creating_twice_is_fine() {
    on_both(|db, t| async move {
        create_tables(&db, Indexes::ActiveMq)
            .await
            .expect("second create_tables");
        let blob = if t.dialect == Dialect::MySql {
            "longblob"
        } else {
            "bytea"
        };
        let v = |n: &str, ty: &str| (n.to_string(), ty.to_string());
        assert_eq!(
            columns(&db, "ACTIVEMQ_MSGS").await.unwrap(),
            vec![
                v("ID", "bigint"),
                v("CONTAINER", "varchar(250)"),
                v("MSGID_PROD", "varchar(250)"),
                v("MSGID_SEQ", "bigint"),
                v("EXPIRATION", "bigint"),
                v("MSG", blob),
                v("PRIORITY", "bigint"),
                v("XID", "varchar(250)"),
            ]
        );
        assert_eq!(
            columns(&db, "ACTIVEMQ_ACKS").await.unwrap(),
            vec![
                v("CONTAINER", "varchar(250)"),
                v("SUB_DEST", "varchar(250)"),
                v("CLIENT_ID", "varchar(250)"),
                v("SUB_NAME", "varchar(250)"),
                v("SELECTOR", "varchar(250)"),
                v("LAST_ACKED_ID", "bigint"),
                v("PRIORITY", "bigint"),
                v("XID", "varchar(250)"),
            ]
        );
        assert_eq!(
            columns(&db, "ACTIVEMQ_LOCK").await.unwrap(),
            vec![
                v("ID", "bigint"),
                v("TIME", "bigint"),
                v("BROKER_NAME", "varchar(250)")
            ]
        );
        for table in [
            "BROKK_FENCE",
            "BROKK_TOPIC_ACKS",
            "BROKK_REDELIVERIES",
            "BROKK_TX",
            "BROKK_TX_ACKS",
            "BROKK_PRODUCER_SEQ",
        ] {
            assert!(!columns(&db, table).await.unwrap().is_empty(), "{table}");
        }
        assert_eq!(count(&db, "SELECT COUNT(*) FROM ACTIVEMQ_LOCK").await, 1);
        let (holder, time, now) = lease_holder(&db).await.unwrap();
        assert_eq!((holder, time), (None, 0));
        assert!(now > 1_700_000_000_000, "database now {now}");
        let empty = load(&db, None).await.unwrap();
        assert!(
            empty.messages.is_empty()
                && empty.subs.is_empty()
                && empty.topic_acks.is_empty()
                && empty.redeliveries.is_empty()
                && empty.tx_acks.is_empty()
                && empty.tx_decided.is_empty()
                && empty.producer_seqs.is_empty(),
            "{empty:?}"
        );
        db
    });
}

/// A database made by a version before BROKK_FENCE: with
/// `store.create_tables = false` the start is refused, naming the table;
/// otherwise the fence table alone is made, and the lease row and the
/// messages are left as they were.
#[test]
fn a_database_of_an_earlier_version_gets_the_fence_table() {
    on_both(|db, _t| async move {
        hold_lease(&db).await;
        insert_one(&db, 7).await;
        exec(&db, "DROP TABLE BROKK_FENCE").await;
        match check_tables(&db).await {
            Err(SqlError::Missing(what)) => assert!(what.contains("BROKK_FENCE"), "{what}"),
            other => panic!("expected Missing, got {other:?}"),
        }
        create_tables(&db, Indexes::Minimal)
            .await
            .expect("create the fence table");
        check_tables(&db).await.expect("everything there now");
        assert_eq!(count(&db, "SELECT COUNT(*) FROM ACTIVEMQ_MSGS").await, 1);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM BROKK_FENCE").await, 1);
        let (holder, _, _) = lease_holder(&db).await.unwrap();
        assert_eq!(holder.as_deref(), Some(LEASE));
        // Another table missing: named, with everything else absent.
        exec(&db, "DROP TABLE BROKK_TX").await;
        match check_tables(&db).await {
            Err(SqlError::Missing(what)) => assert!(what.contains("BROKK_TX"), "{what}"),
            other => panic!("expected Missing, got {other:?}"),
        }
        db
    });
}

#[test]
fn batches_round_trip_and_apply_in_order() {
    on_both(|db, _| async move {
        hold_lease(&db).await;
        // 1000 messages of 1 KiB in one batch (4 INSERT chunks), a few of
        // them SENDs prepared by transaction 7.
        let mut msgs: Vec<MsgRow> = (1..=1000).map(|id| message(id, 1024)).collect();
        msgs[10].xid = Some("tx:7".into());
        msgs[11].xid = Some("tx:7".into());
        // Message 2 is on the topic the subscriptions below are on (their
        // acks of it go with a subscription).
        msgs[1].container = "topic://t".into();
        // Inserted out of order: load returns them by ID.
        msgs.swap(0, 999);
        write_batch(
            &db,
            &lease(),
            &Batch {
                inserts: msgs.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let loaded = load(&db, None).await.unwrap();
        msgs.sort_by_key(|m| m.id);
        assert_eq!(loaded.messages.len(), 1000);
        assert_eq!(loaded.messages, msgs);
        // A table larger than memory: past a 100 KiB budget the bodies go
        // to the spill file, and read back the same.
        let dir = tempfile::tempdir().unwrap();
        let spill =
            brokk::store::sql::spill::Spill::create(dir.path().join("s"), 100 * 1024).unwrap();
        let spilled = load(&db, Some(spill)).await.unwrap();
        let s = spilled.spill.as_ref().unwrap();
        assert!(s.spilled_rows() > 800, "{} spilled", s.spilled_rows());
        for (got, want) in spilled.messages.iter().zip(&msgs) {
            assert_eq!(s.msg(got).unwrap(), want.msg, "message {}", want.id);
        }
        drop(spilled);
        assert!(
            !dir.path().join("s").exists(),
            "the spill file goes with the load"
        );
        let d = encoding::decode(&loaded.messages[41].msg).unwrap();
        assert_eq!(d.timestamp_ms, 1_700_000_000_042);
        assert_eq!(d.body.len(), 1024);
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM ACTIVEMQ_MSGS WHERE MSGID_PROD = 'brokk' AND MSGID_SEQ = ID"
            )
            .await,
            1000
        );

        // Acks, counts, subscriptions, a transaction's prepared acks and
        // its decision; deletes take their side rows along.
        let batch = Batch {
            topic_acks: vec![
                tack(1, "c", "s1"),
                tack(2, "c", "s1"),
                tack(2, "c", "s2"),
                tack(1, "c", "s1"),
            ],
            redeliveries: vec![
                Redelivery {
                    id: 3,
                    sub_key: String::new(),
                    count: 1,
                },
                Redelivery {
                    id: 3,
                    sub_key: String::new(),
                    count: 2,
                },
                Redelivery {
                    id: 4,
                    sub_key: "c:s1".into(),
                    count: 5,
                },
                Redelivery {
                    id: 1,
                    sub_key: String::new(),
                    count: 1,
                },
            ],
            subs_added: vec![
                sub("t", "c", "s1", None),
                sub("t", "c", "s2", Some("a = 1")),
                sub("t", "c", "s2", Some("a = 2")),
            ],
            tx_acks: vec![
                TxAckRow {
                    tx: 7,
                    id: 5,
                    sub_key: String::new(),
                },
                TxAckRow {
                    tx: 7,
                    id: 6,
                    sub_key: "c:s1".into(),
                },
                TxAckRow {
                    tx: 8,
                    id: 1,
                    sub_key: String::new(),
                },
            ],
            tx_decided: vec![7, 7],
            deletes: vec![1, 999, 1000],
            ..Default::default()
        };
        write_batch(&db, &lease(), &batch).await.unwrap();
        let loaded = load(&db, None).await.unwrap();
        assert_eq!(loaded.messages.len(), 997);
        assert_eq!(loaded.messages.first().map(|m| m.id), Some(2));
        assert_eq!(loaded.messages.last().map(|m| m.id), Some(998));
        assert_eq!(
            loaded.topic_acks,
            vec![tack(2, "c", "s1"), tack(2, "c", "s2")]
        );
        assert_eq!(
            loaded.redeliveries,
            vec![
                Redelivery {
                    id: 3,
                    sub_key: String::new(),
                    count: 2
                },
                Redelivery {
                    id: 4,
                    sub_key: "c:s1".into(),
                    count: 5
                },
            ]
        );
        assert_eq!(
            loaded.subs,
            vec![
                sub("t", "c", "s1", None),
                sub("t", "c", "s2", Some("a = 2"))
            ]
        );
        assert_eq!(
            loaded.tx_acks,
            vec![
                TxAckRow {
                    tx: 7,
                    id: 5,
                    sub_key: String::new()
                },
                TxAckRow {
                    tx: 7,
                    id: 6,
                    sub_key: "c:s1".into()
                }
            ]
        );
        assert_eq!(loaded.tx_decided, vec![7]);
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM ACTIVEMQ_ACKS WHERE SUB_DEST = CONTAINER AND LAST_ACKED_ID = 0 AND PRIORITY = 5").await,
            2
        );

        // Later: a count goes up (upsert), transaction 7 is applied and
        // forgotten, one
        // subscription goes with its acks; a message inserted and deleted
        // in one batch never shows.
        let batch = Batch {
            inserts: vec![message(2000, 10)],
            redeliveries: vec![Redelivery {
                id: 3,
                sub_key: String::new(),
                count: 3,
            }],
            deletes: vec![2000],
            xid_cleared: vec![11, 12],
            tx_acks_done: vec![
                TxAckRow {
                    tx: 7,
                    id: 5,
                    sub_key: String::new(),
                },
                TxAckRow {
                    tx: 7,
                    id: 6,
                    sub_key: "c:s1".into(),
                },
            ],
            tx_forgotten: vec![7],
            subs_removed: vec![sub("t", "c", "s2", None)],
            ..Default::default()
        };
        write_batch(&db, &lease(), &batch).await.unwrap();
        let loaded = load(&db, None).await.unwrap();
        assert_eq!(loaded.messages.len(), 997);
        assert!(loaded.messages.iter().all(|m| m.xid.is_none()));
        assert_eq!(
            loaded.redeliveries[0],
            Redelivery {
                id: 3,
                sub_key: String::new(),
                count: 3
            }
        );
        assert!(loaded.tx_acks.is_empty());
        assert!(loaded.tx_decided.is_empty());
        assert_eq!(loaded.subs, vec![sub("t", "c", "s1", None)]);
        assert_eq!(loaded.topic_acks, vec![tack(2, "c", "s1")]);
        db
    });
}

/// The same client id and subscription name on two topics are two
/// subscriptions: removing one leaves the other's acknowledgements.
#[test]
fn removing_a_subscription_keeps_the_same_name_on_another_topic() {
    on_both(|db, _| async move {
        hold_lease(&db).await;
        let mut m1 = message(1, 10);
        m1.container = "topic://t1".into();
        let mut m2 = message(2, 10);
        m2.container = "topic://t2".into();
        let batch = Batch {
            inserts: vec![m1, m2],
            subs_added: vec![sub("t1", "c", "s", None), sub("t2", "c", "s", None)],
            topic_acks: vec![tack(1, "c", "s"), tack(2, "c", "s")],
            ..Default::default()
        };
        write_batch(&db, &lease(), &batch).await.unwrap();
        let remove = Batch {
            subs_removed: vec![sub("t1", "c", "s", None)],
            ..Default::default()
        };
        write_batch(&db, &lease(), &remove).await.unwrap();
        let loaded = load(&db, None).await.unwrap();
        assert_eq!(loaded.subs, vec![sub("t2", "c", "s", None)]);
        assert_eq!(loaded.topic_acks, vec![tack(2, "c", "s")]);
        db
    });
}

/// Names are exact: any Unicode, and case matters (MariaDB's default
/// collations would make `S` and `s` one subscription).
#[test]
fn names_are_unicode_and_case_sensitive() {
    on_both(|db, _| async move {
        hold_lease(&db).await;
        let mut m = message(1, 10);
        m.container = "topic://日本語-ü".into();
        let batch = Batch {
            inserts: vec![m.clone()],
            subs_added: vec![
                sub("日本語-ü", "c", "S", None),
                sub("日本語-ü", "c", "s", None),
                sub("日本語-ü", "c", "ß", None),
            ],
            topic_acks: vec![tack(1, "c", "S"), tack(1, "c", "s")],
            ..Default::default()
        };
        write_batch(&db, &lease(), &batch).await.unwrap();
        write_batch(
            &db,
            &lease(),
            &Batch {
                subs_removed: vec![sub("日本語-ü", "c", "S", None)],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let loaded = load(&db, None).await.unwrap();
        assert_eq!(loaded.messages, vec![m]);
        let mut names: Vec<String> = loaded.subs.into_iter().map(|s| s.sub_name).collect();
        names.sort();
        assert_eq!(names, vec!["s", "ß"]);
        assert_eq!(loaded.topic_acks, vec![tack(1, "c", "s")]);
        db
    });
}

/// A master hung in the middle of a write transaction holds the fence row
/// share-locked, and a standby's takeover waits for it. The standby kills
/// such sessions where the database lets it (one account), but it may not
/// (another account, a PostgreSQL superuser, MySQL without the privilege):
/// the broker's connections ask the database itself to end a transaction
/// idle for a lease, so the takeover goes on. Checked with a transaction
/// begun as the writer begins its own, on a connection of the broker's
/// pool, left idle, while another session takes the fence row; and every
/// connection reads the database's clock in UTC.
#[test]
fn a_write_transaction_left_idle_is_ended_by_the_database() {
    on_both(|db, t| async move {
        let idle = Duration::from_millis(600);
        let hung = connect(&t.url, 1, idle).await.expect("connect");
        const TAKE: &str = "UPDATE BROKK_FENCE SET HOLDER = 'taker' WHERE ID = 1";
        let taken = match &hung {
            Db::MySql(pool) => {
                let mut w = pool.get_conn().await.unwrap();
                let tz: Option<String> = w.query_first("SELECT @@session.time_zone").await.unwrap();
                assert_eq!(tz.as_deref(), Some("+00:00"));
                w.query_drop("START TRANSACTION").await.unwrap();
                w.query_drop(fence_query(Dialect::MySql)).await.unwrap();
                tokio::time::timeout(Duration::from_secs(20), exec(&db, TAKE))
                    .await
                    .expect("the fence row is free within 20 s");
                w.query_drop("COMMIT").await.is_ok()
            }
            Db::Postgres(pool) => {
                let w = pool.get().await.unwrap();
                w.client
                    .batch_execute(&format!("BEGIN; {}", fence_query(Dialect::Postgres)))
                    .await
                    .unwrap();
                tokio::time::timeout(Duration::from_secs(20), exec(&db, TAKE))
                    .await
                    .expect("the fence row is free within 20 s");
                w.client.batch_execute("COMMIT").await.is_ok()
            }
        };
        // The take waited (20 s is well below MariaDB's lock wait timeout
        // of 50 s and PostgreSQL's none) until the database ended the hung
        // session: its COMMIT fails.
        assert!(!taken, "the hung transaction was ended by the database");
        // The takeover's read lifts the limit for itself (it holds its
        // snapshot while it spills) and puts it back on the connection.
        if let Db::MySql(pool) = &hung {
            load(&hung, None).await.expect("load");
            let mut c = pool.get_conn().await.unwrap();
            let limit: Option<u64> = c
                .query_first("SELECT @@session.idle_transaction_timeout")
                .await
                .unwrap();
            assert_eq!(limit, Some(1), "the limit is back after the read");
        }
        hung.disconnect().await;
        db
    });
}

#[test]
fn a_lease_not_ours_or_expired_fences_and_commits_nothing() {
    on_both(|db, _| async move {
        let batch = Batch {
            inserts: vec![message(1, 100), message(2, 100)],
            topic_acks: vec![tack(1, "c", "s")],
            subs_added: vec![sub("t", "c", "s", None)],
            tx_decided: vec![1],
            ..Default::default()
        };
        let expect_fenced = |r: Result<(), SqlError>, what: &str| match r {
            Err(SqlError::Fenced(reason)) => reason,
            other => panic!("{what}: expected Fenced, got {other:?}"),
        };
        // Nobody holds it (fresh table).
        let reason = expect_fenced(write_batch(&db, &lease(), &batch).await, "no holder");
        assert!(reason.contains("nobody"), "{reason}");
        // Another broker holds it.
        set_lease(&db, "other", FAR_FUTURE).await;
        let reason = expect_fenced(write_batch(&db, &lease(), &batch).await, "other holder");
        assert!(reason.contains("other"), "{reason}");
        // The fence names us, but the lease row another broker: a takeover
        // by a version that knows no fence row.
        set_lease(&db, LEASE, FAR_FUTURE).await;
        exec(
            &db,
            "UPDATE ACTIVEMQ_LOCK SET BROKER_NAME = 'older' WHERE ID = 1",
        )
        .await;
        let reason = expect_fenced(write_batch(&db, &lease(), &batch).await, "older taker");
        assert!(reason.contains("ACTIVEMQ_LOCK names older"), "{reason}");
        // Ours, but expired (by the database's clock).
        set_lease(&db, LEASE, 1000).await;
        let reason = expect_fenced(write_batch(&db, &lease(), &batch).await, "expired");
        assert!(reason.contains("expired"), "{reason}");
        // Nothing was written.
        for table in [
            "ACTIVEMQ_MSGS",
            "ACTIVEMQ_ACKS",
            "BROKK_TOPIC_ACKS",
            "BROKK_TX",
        ] {
            assert_eq!(
                count(&db, &format!("SELECT COUNT(*) FROM {table}")).await,
                0,
                "{table}"
            );
        }
        // And once the lease is ours again, the same batch goes through.
        hold_lease(&db).await;
        write_batch(&db, &lease(), &batch).await.unwrap();
        assert_eq!(count(&db, "SELECT COUNT(*) FROM ACTIVEMQ_MSGS").await, 2);
        db
    });
}

fn pseq(container: &str, producer: &str, seq: i64) -> ProducerSeq {
    ProducerSeq {
        container: container.into(),
        producer: producer.into(),
        seq,
    }
}

/// Producers' highest sequences (which let a failover resend of an
/// acknowledged message be recognised after a takeover): the highest wins,
/// whatever order and however often they are written, and pruned rows go.
#[test]
fn producer_sequences_keep_the_highest_and_pruned_rows_go() {
    on_both(|db, _| async move {
        hold_lease(&db).await;
        let (a, b) = ("ID:host-1-2-3-1:1:1", "ID:host-1-2-3-1:1:2");
        let batch = Batch {
            // One key twice in a batch (merged batches do that).
            producer_seqs: vec![
                pseq("queue://q", a, 7),
                pseq("queue://q", a, 5),
                pseq("queue://q", b, 1),
                pseq("topic://t", a, 3),
            ],
            ..Default::default()
        };
        write_batch(&db, &lease(), &batch).await.unwrap();
        write_batch(
            &db,
            &lease(),
            &Batch {
                producer_seqs: vec![pseq("queue://q", a, 6), pseq("queue://q", b, 4)],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut got = load(&db, None).await.unwrap().producer_seqs;
        got.sort_by(|x, y| (&x.container, &x.producer).cmp(&(&y.container, &y.producer)));
        assert_eq!(
            got,
            vec![
                pseq("queue://q", a, 7),
                pseq("queue://q", b, 4),
                pseq("topic://t", a, 3)
            ]
        );
        // Pruned, and in the same batch another row written again.
        write_batch(
            &db,
            &lease(),
            &Batch {
                producer_seqs_gone: vec![
                    ("queue://q".into(), a.into()),
                    ("topic://t".into(), a.into()),
                ],
                producer_seqs: vec![pseq("topic://t", a, 9)],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut got = load(&db, None).await.unwrap().producer_seqs;
        got.sort_by(|x, y| (&x.container, &x.producer).cmp(&(&y.container, &y.producer)));
        assert_eq!(got, vec![pseq("queue://q", b, 4), pseq("topic://t", a, 9)]);
        db
    });
}

/// A batch written twice (its COMMIT went through but the answer was lost,
/// so the writer writes it again) leaves the same rows as once.
#[test]
fn a_batch_written_twice_is_applied_once() {
    on_both(|db, _| async move {
        hold_lease(&db).await;
        let batch = Batch {
            inserts: (1..=10).map(|id| message(id, 64)).collect(),
            topic_acks: vec![tack(3, "c", "s")],
            deletes: vec![2],
            ..Default::default()
        };
        write_batch(&db, &lease(), &batch).await.unwrap();
        write_batch(&db, &lease(), &batch).await.unwrap();
        let loaded = load(&db, None).await.unwrap();
        let ids: Vec<i64> = loaded.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(loaded.topic_acks.len(), 1);
        db
    });
}

/// A batch's first attempt cannot meet its own rows (its ids are new), so
/// a row already there under one of them is someone else's: writing over
/// or skipping it would receipt a message never stored. The attempt fails
/// whole (the writer then stops the broker), where a later attempt, after
/// a COMMIT whose answer was lost, skips rows already there.
#[test]
fn a_first_attempt_meeting_a_row_it_did_not_write_commits_nothing() {
    on_both(|db, _| async move {
        hold_lease(&db).await;
        insert_one(&db, 2).await;
        let batch = Batch {
            inserts: vec![message(1, 100), message(2, 100), message(3, 100)],
            msg_deletes: vec![7],
            ..Batch::default()
        };
        match write_batch_as(&db, &lease(), &batch, Attempt::First).await {
            Err(SqlError::IdTaken(why)) => assert!(why.contains("1..=3"), "{why}"),
            other => panic!("expected IdTaken, got {other:?}"),
        }
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM ACTIVEMQ_MSGS WHERE ID IN (1, 3)").await,
            0,
            "nothing of the failed attempt is stored"
        );
        // Without the foreign row, the first attempt goes through.
        let fresh = Batch {
            inserts: vec![message(4, 100), message(5, 100)],
            ..Batch::default()
        };
        write_batch_as(&db, &lease(), &fresh, Attempt::First)
            .await
            .expect("a first attempt");
        // A later attempt skips what is there.
        write_batch_as(&db, &lease(), &batch, Attempt::Again)
            .await
            .expect("a later attempt");
        write_batch_as(&db, &lease(), &fresh, Attempt::Again)
            .await
            .expect("a later attempt of a committed batch");
        assert_eq!(count(&db, "SELECT COUNT(*) FROM ACTIVEMQ_MSGS").await, 5);
        db
    });
}

#[test]
fn a_batch_failing_midway_commits_nothing() {
    on_both(|db, _| async move {
        hold_lease(&db).await;
        insert_one(&db, 500).await;
        // 300 new messages (a full chunk goes in first), then a second
        // chunk holding a row the table refuses (a container longer than
        // its VARCHAR(250)), then acks and deletes.
        let mut inserts: Vec<MsgRow> = (1..=300).map(|id| message(id, 64)).collect();
        let mut bad = message(501, 10);
        bad.container = format!("queue://{}", "x".repeat(300));
        inserts.push(bad);
        let batch = Batch {
            inserts,
            topic_acks: vec![tack(500, "c", "s")],
            subs_added: vec![sub("t", "c", "s", None)],
            tx_decided: vec![9],
            deletes: vec![500],
            ..Default::default()
        };
        match write_batch(&db, &lease(), &batch).await {
            Err(SqlError::Query { what, reason }) => {
                assert_eq!(what, "insert messages");
                assert!(reason.to_lowercase().contains("too long"), "{reason}");
            }
            other => panic!("expected a Query error, got {other:?}"),
        }
        let loaded = load(&db, None).await.unwrap();
        assert_eq!(loaded.messages, vec![message(500, 10)]);
        assert!(
            loaded.topic_acks.is_empty() && loaded.subs.is_empty() && loaded.tx_decided.is_empty()
        );
        // The connection is still good for the next batch.
        write_batch(
            &db,
            &lease(),
            &Batch {
                deletes: vec![500],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(load(&db, None).await.unwrap().messages.is_empty());
        db
    });
}

#[test]
fn a_wrong_password_fails_at_connect_without_showing_it() {
    on_both(|db, t| async move {
        let url = t.url.replacen("brokk:brokk@", "brokk:s3cret-wrong@", 1);
        match connect(&url, 1, Duration::from_secs(3)).await {
            Err(e @ SqlError::Connect { .. }) => {
                let text = e.to_string();
                let shown = t.url.replacen("brokk:brokk@", "brokk:***@", 1);
                assert!(text.contains(&shown), "{text}");
                assert!(!text.contains("s3cret-wrong"), "{text}");
                let server_says = if t.dialect == Dialect::MySql {
                    "Access denied"
                } else {
                    "password authentication failed"
                };
                assert!(text.contains(server_says), "{text}");
            }
            other => panic!("expected Connect error, got {other:?}"),
        }
        db
    });
}

/// Throughput of 256 x 1 KiB batches (one transaction each), printed:
/// `cargo test --release --test sql_store -- --ignored --nocapture`.
/// Measured with ActiveMQ's six secondary indexes on `ACTIVEMQ_MSGS`, then
/// again without them (what they cost).
#[test]
#[ignore]
fn measure_insert_rate() {
    on_both(|db, t| async move {
        hold_lease(&db).await;
        rate(&db, t.dialect, "with indexes", 0).await;
        for idx in ["MIDX", "CIDX", "EIDX", "PIDX", "XIDX", "IIDX"] {
            let sql = match t.dialect {
                Dialect::MySql => {
                    format!("ALTER TABLE ACTIVEMQ_MSGS DROP INDEX ACTIVEMQ_MSGS_{idx}")
                }
                Dialect::Postgres => format!("DROP INDEX ACTIVEMQ_MSGS_{idx}"),
            };
            exec(&db, &sql).await;
        }
        rate(&db, t.dialect, "without secondary indexes", 1_000_000).await;
        db
    });
}

async fn rate(db: &Db, dialect: Dialect, label: &str, base: i64) {
    let batches = 200;
    let all: Vec<Vec<MsgRow>> = (0..batches)
        .map(|b| {
            (0..256)
                .map(|i| message(base + b * 256 + i + 1, 1024))
                .collect()
        })
        .collect();
    let start = Instant::now();
    for inserts in &all {
        write_batch(
            db,
            &lease(),
            &Batch {
                inserts: inserts.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let rows = (batches * 256) as f64;
    println!(
        "{dialect:?} {label}: inserts {:.0} rows/s ({:.2} ms per batch of 256 x 1 KiB)",
        rows / secs,
        secs * 1000.0 / batches as f64
    );
    let start = Instant::now();
    for b in 0..batches {
        let deletes = (0..256).map(|i| base + b * 256 + i + 1).collect();
        write_batch(
            db,
            &lease(),
            &Batch {
                deletes,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    println!(
        "{dialect:?} {label}: deletes {:.0} rows/s",
        rows / start.elapsed().as_secs_f64()
    );
}
