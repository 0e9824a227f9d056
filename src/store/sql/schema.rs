//! Creating the tables (idempotent), named and typed as ActiveMQ 5.17
//! creates them, plus Brokk's side tables.
//!
//! One difference from ActiveMQ on MySQL/MariaDB: `MSG` is `LONGBLOB`, not
//! `BLOB`. A `BLOB` holds at most 64 KiB, and in strict mode a larger body
//! fails the insert (in non-strict mode it would be silently truncated).
//! On PostgreSQL `MSG` is `bytea`, as ActiveMQ makes it there.
//!
//! Also on MySQL/MariaDB, every table says `utf8mb4` with the binary
//! collation: the server default may be `latin1` (this machine's MariaDB:
//! `latin1_swedish_ci`), which refuses names outside Latin-1 in strict
//! mode, and the default collations compare case-insensitively, so the
//! subscriptions `S` and `s` would be one row. (`utf8mb4_bin` still ignores
//! trailing spaces in comparisons; the no-pad binary collations differ
//! between MariaDB and MySQL 8.) Keys stay under InnoDB's 3072-byte limit:
//! `ACTIVEMQ_ACKS`'s primary key is 3 x 250 x 4 + 8 bytes.
//!
//! On MySQL the indexes are declared inside `CREATE TABLE` (MySQL 8 has no
//! `CREATE INDEX IF NOT EXISTS`; MariaDB has). Identifiers are unquoted, so
//! PostgreSQL folds them to lowercase, as it does for ActiveMQ.
//!
//! Two brokers starting at once could both create: the DDL runs under a
//! named lock (MySQL `GET_LOCK`, PostgreSQL transaction-scoped advisory
//! lock, and PostgreSQL DDL is transactional).

use mysql_async::prelude::Queryable;
use mysql_async::Row;

use super::conn::{my_err, pg_err, Db};
use super::SqlError;

const MYSQL_DDL: &[&str] = &[
    // ACTIVEMQ_MSGS: see `mysql_msgs_ddl`.
    "CREATE TABLE IF NOT EXISTS ACTIVEMQ_ACKS (
        CONTAINER VARCHAR(250) NOT NULL,
        SUB_DEST VARCHAR(250),
        CLIENT_ID VARCHAR(250) NOT NULL,
        SUB_NAME VARCHAR(250) NOT NULL,
        SELECTOR VARCHAR(250),
        LAST_ACKED_ID BIGINT,
        PRIORITY BIGINT DEFAULT 5 NOT NULL,
        XID VARCHAR(250),
        PRIMARY KEY (CONTAINER, CLIENT_ID, SUB_NAME, PRIORITY),
        INDEX ACTIVEMQ_ACKS_XIDX (XID)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS ACTIVEMQ_LOCK (
        ID BIGINT NOT NULL,
        TIME BIGINT,
        BROKER_NAME VARCHAR(250),
        PRIMARY KEY (ID)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "INSERT IGNORE INTO ACTIVEMQ_LOCK (ID, TIME, BROKER_NAME) VALUES (1, 0, NULL)",
    // The fencing token, apart from the lease row (see `ha::db_lease`).
    MYSQL_DDL_FENCE_TABLE,
    MYSQL_DDL_FENCE_ROW,
    // The SIDX index serves removing a subscription's acknowledgements.
    "CREATE TABLE IF NOT EXISTS BROKK_TOPIC_ACKS (
        ID BIGINT NOT NULL,
        CLIENT_ID VARCHAR(250) NOT NULL,
        SUB_NAME VARCHAR(250) NOT NULL,
        PRIMARY KEY (ID, CLIENT_ID, SUB_NAME),
        INDEX BROKK_TOPIC_ACKS_SIDX (CLIENT_ID, SUB_NAME)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS BROKK_REDELIVERIES (
        ID BIGINT NOT NULL,
        SUB_KEY VARCHAR(512) NOT NULL,
        COUNT BIGINT,
        PRIMARY KEY (ID, SUB_KEY)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS BROKK_TX (
        TX BIGINT NOT NULL,
        PRIMARY KEY (TX)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS BROKK_TX_ACKS (
        TX BIGINT NOT NULL,
        ID BIGINT NOT NULL,
        SUB_KEY VARCHAR(512) NOT NULL,
        PRIMARY KEY (TX, ID, SUB_KEY),
        INDEX BROKK_TX_ACKS_IDX (ID)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    // A producer's highest sequence per destination (see
    // `broker::producer_audit`): outlives its acknowledged messages.
    "CREATE TABLE IF NOT EXISTS BROKK_PRODUCER_SEQ (
        CONTAINER VARCHAR(250) NOT NULL,
        PRODUCER VARCHAR(300) NOT NULL,
        SEQ BIGINT NOT NULL,
        PRIMARY KEY (CONTAINER, PRODUCER)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
];

/// `ACTIVEMQ_MSGS` on MySQL/MariaDB, with ActiveMQ's secondary indexes or
/// only the one on `CONTAINER` (see [`Indexes`]).
fn mysql_msgs_ddl(indexes: Indexes) -> String {
    let extra = match indexes {
        Indexes::ActiveMq => {
            "
        INDEX ACTIVEMQ_MSGS_MIDX (MSGID_PROD, MSGID_SEQ),
        INDEX ACTIVEMQ_MSGS_EIDX (EXPIRATION),
        INDEX ACTIVEMQ_MSGS_PIDX (PRIORITY),
        INDEX ACTIVEMQ_MSGS_XIDX (XID),
        INDEX ACTIVEMQ_MSGS_IIDX (ID, XID, CONTAINER),"
        }
        Indexes::Minimal => "",
    };
    format!(
        "CREATE TABLE IF NOT EXISTS ACTIVEMQ_MSGS (
        ID BIGINT NOT NULL,
        CONTAINER VARCHAR(250),
        MSGID_PROD VARCHAR(250),
        MSGID_SEQ BIGINT,
        EXPIRATION BIGINT,
        MSG LONGBLOB,
        PRIORITY BIGINT,
        XID VARCHAR(250),
        PRIMARY KEY (ID),{extra}
        INDEX ACTIVEMQ_MSGS_CIDX (CONTAINER)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    )
}

/// Which secondary indexes `ACTIVEMQ_MSGS` gets when Brokk creates it
/// (`store.indexes`). Brokk reads and deletes by `ID` only; ActiveMQ's five
/// other indexes serve ActiveMQ's own queries, and each costs every INSERT
/// and DELETE (measured: 256 x 1 KiB inserts 40-43k rows/s with them, 73k
/// without on MariaDB). `CONTAINER`'s stays in both: operators count by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Indexes {
    /// `ID` (primary key) and `CONTAINER`.
    Minimal,
    /// All of ActiveMQ 5.17's.
    #[serde(rename = "activemq")]
    ActiveMq,
}

/// ActiveMQ's secondary indexes beyond `CONTAINER`'s (PostgreSQL).
const PG_ACTIVEMQ_INDEXES: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS ACTIVEMQ_MSGS_MIDX ON ACTIVEMQ_MSGS (MSGID_PROD, MSGID_SEQ)",
    "CREATE INDEX IF NOT EXISTS ACTIVEMQ_MSGS_EIDX ON ACTIVEMQ_MSGS (EXPIRATION)",
    "CREATE INDEX IF NOT EXISTS ACTIVEMQ_MSGS_PIDX ON ACTIVEMQ_MSGS (PRIORITY)",
    "CREATE INDEX IF NOT EXISTS ACTIVEMQ_MSGS_XIDX ON ACTIVEMQ_MSGS (XID)",
    "CREATE INDEX IF NOT EXISTS ACTIVEMQ_MSGS_IIDX ON ACTIVEMQ_MSGS (ID, XID, CONTAINER)",
];

const PG_DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS ACTIVEMQ_MSGS (
        ID BIGINT NOT NULL,
        CONTAINER VARCHAR(250),
        MSGID_PROD VARCHAR(250),
        MSGID_SEQ BIGINT,
        EXPIRATION BIGINT,
        MSG BYTEA,
        PRIORITY BIGINT,
        XID VARCHAR(250),
        PRIMARY KEY (ID)
    )",
    "CREATE INDEX IF NOT EXISTS ACTIVEMQ_MSGS_CIDX ON ACTIVEMQ_MSGS (CONTAINER)",
    "CREATE TABLE IF NOT EXISTS ACTIVEMQ_ACKS (
        CONTAINER VARCHAR(250) NOT NULL,
        SUB_DEST VARCHAR(250),
        CLIENT_ID VARCHAR(250) NOT NULL,
        SUB_NAME VARCHAR(250) NOT NULL,
        SELECTOR VARCHAR(250),
        LAST_ACKED_ID BIGINT,
        PRIORITY BIGINT DEFAULT 5 NOT NULL,
        XID VARCHAR(250),
        PRIMARY KEY (CONTAINER, CLIENT_ID, SUB_NAME, PRIORITY)
    )",
    "CREATE INDEX IF NOT EXISTS ACTIVEMQ_ACKS_XIDX ON ACTIVEMQ_ACKS (XID)",
    "CREATE TABLE IF NOT EXISTS ACTIVEMQ_LOCK (
        ID BIGINT NOT NULL,
        TIME BIGINT,
        BROKER_NAME VARCHAR(250),
        PRIMARY KEY (ID)
    )",
    "INSERT INTO ACTIVEMQ_LOCK (ID, TIME, BROKER_NAME) VALUES (1, 0, NULL) ON CONFLICT (ID) DO NOTHING",
    PG_DDL_FENCE_TABLE,
    PG_DDL_FENCE_ROW,
    "CREATE TABLE IF NOT EXISTS BROKK_TOPIC_ACKS (
        ID BIGINT NOT NULL,
        CLIENT_ID VARCHAR(250) NOT NULL,
        SUB_NAME VARCHAR(250) NOT NULL,
        PRIMARY KEY (ID, CLIENT_ID, SUB_NAME)
    )",
    "CREATE INDEX IF NOT EXISTS BROKK_TOPIC_ACKS_SIDX ON BROKK_TOPIC_ACKS (CLIENT_ID, SUB_NAME)",
    "CREATE TABLE IF NOT EXISTS BROKK_REDELIVERIES (
        ID BIGINT NOT NULL,
        SUB_KEY VARCHAR(512) NOT NULL,
        COUNT BIGINT,
        PRIMARY KEY (ID, SUB_KEY)
    )",
    "CREATE TABLE IF NOT EXISTS BROKK_TX (TX BIGINT NOT NULL, PRIMARY KEY (TX))",
    "CREATE TABLE IF NOT EXISTS BROKK_TX_ACKS (
        TX BIGINT NOT NULL,
        ID BIGINT NOT NULL,
        SUB_KEY VARCHAR(512) NOT NULL,
        PRIMARY KEY (TX, ID, SUB_KEY)
    )",
    "CREATE INDEX IF NOT EXISTS BROKK_TX_ACKS_IDX ON BROKK_TX_ACKS (ID)",
    "CREATE TABLE IF NOT EXISTS BROKK_PRODUCER_SEQ (
        CONTAINER VARCHAR(250) NOT NULL,
        PRODUCER VARCHAR(300) NOT NULL,
        SEQ BIGINT NOT NULL,
        PRIMARY KEY (CONTAINER, PRODUCER)
    )",
];

const MYSQL_DDL_FENCE_TABLE: &str = "CREATE TABLE IF NOT EXISTS BROKK_FENCE (
        ID BIGINT NOT NULL,
        HOLDER VARCHAR(250),
        PRIMARY KEY (ID)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";
const MYSQL_DDL_FENCE_ROW: &str = "INSERT IGNORE INTO BROKK_FENCE (ID, HOLDER) VALUES (1, NULL)";
const PG_DDL_FENCE_TABLE: &str = "CREATE TABLE IF NOT EXISTS BROKK_FENCE (
        ID BIGINT NOT NULL,
        HOLDER VARCHAR(250),
        PRIMARY KEY (ID)
    )";
const PG_DDL_FENCE_ROW: &str =
    "INSERT INTO BROKK_FENCE (ID, HOLDER) VALUES (1, NULL) ON CONFLICT (ID) DO NOTHING";

/// The advisory lock key serialising schema creation on PostgreSQL
/// ("BROKKDDL" in ASCII).
const PG_DDL_LOCK: i64 = 0x42524f4b4b44444c;

/// The tables Brokk uses.
const TABLES: [&str; 9] = [
    "ACTIVEMQ_MSGS",
    "ACTIVEMQ_ACKS",
    "ACTIVEMQ_LOCK",
    "BROKK_FENCE",
    "BROKK_TOPIC_ACKS",
    "BROKK_REDELIVERIES",
    "BROKK_TX",
    "BROKK_TX_ACKS",
    "BROKK_PRODUCER_SEQ",
];

/// The lease row (1 when there).
const LEASE_ROW: &str = "SELECT COUNT(*) FROM ACTIVEMQ_LOCK WHERE ID = 1";
/// The fence row (1 when there).
const FENCE_ROW: &str = "SELECT COUNT(*) FROM BROKK_FENCE WHERE ID = 1";

/// The fence table and row alone, for a database made by an earlier
/// version (one statement each, no transaction: no lock on any other
/// table, so a running master of that version is not held up).
const MYSQL_FENCE_DDL: [&str; 2] = [MYSQL_DDL_FENCE_TABLE, MYSQL_DDL_FENCE_ROW];
const PG_FENCE_DDL: [&str; 2] = [PG_DDL_FENCE_TABLE, PG_DDL_FENCE_ROW];

/// What [`missing`] found.
#[derive(Debug, PartialEq, Eq)]
enum Missing {
    Nothing,
    /// Only `BROKK_FENCE` (or its row): a database made before it existed.
    Fence,
    /// These tables (or rows), named for the operator.
    These(Vec<String>),
}

/// What of the tables and the lease and fence rows is missing: plain
/// reads, so that a broker starting beside a running master (a standby)
/// takes no DDL lock. On PostgreSQL `CREATE INDEX IF NOT EXISTS` locks its
/// table even when the index exists, which blocks the master's writes
/// (seen under load: the master ran out of lease).
async fn missing(db: &Db) -> Result<Missing, SqlError> {
    let names = TABLES
        .iter()
        .map(|t| format!("'{}'", t.to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let (present, rows): (Vec<String>, [i64; 2]) = match db {
        Db::MySql(pool) => {
            let mut conn = pool
                .get_conn()
                .await
                .map_err(my_err("connect to look for the tables"))?;
            let present: Vec<String> = conn
                .query(format!(
                    "SELECT LOWER(TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND LOWER(TABLE_NAME) IN ({names})"
                ))
                .await
                .map_err(my_err("look for the tables"))?;
            let mut rows = [0; 2];
            for (i, (table, sql)) in [("activemq_lock", LEASE_ROW), ("brokk_fence", FENCE_ROW)]
                .into_iter()
                .enumerate()
            {
                if present.iter().any(|t| t == table) {
                    let n: Option<i64> = conn
                        .query_first(sql)
                        .await
                        .map_err(my_err("look for the lock rows"))?;
                    rows[i] = n.unwrap_or(0);
                }
            }
            (present, rows)
        }
        Db::Postgres(pool) => {
            let conn = pool.get().await?;
            let present: Vec<String> = conn
                .client
                .query(
                    &format!(
                        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() AND table_name IN ({names})"
                    ),
                    &[],
                )
                .await
                .map_err(pg_err("look for the tables"))?
                .iter()
                .map(|r| r.get::<_, String>(0).to_lowercase())
                .collect();
            let mut rows = [0; 2];
            for (i, (table, sql)) in [("activemq_lock", LEASE_ROW), ("brokk_fence", FENCE_ROW)]
                .into_iter()
                .enumerate()
            {
                if present.iter().any(|t| t == table) {
                    rows[i] = conn
                        .client
                        .query_one(sql, &[])
                        .await
                        .map_err(pg_err("look for the lock rows"))?
                        .get(0);
                }
            }
            (present, rows)
        }
    };
    let mut absent: Vec<String> = TABLES
        .iter()
        .filter(|t| !present.iter().any(|p| p.eq_ignore_ascii_case(t)))
        .map(|t| format!("table {t}"))
        .collect();
    if rows[0] != 1 && present.iter().any(|t| t == "activemq_lock") {
        absent.push("the row ID=1 of ACTIVEMQ_LOCK".into());
    }
    if rows[1] != 1 && present.iter().any(|t| t == "brokk_fence") {
        absent.push("the row ID=1 of BROKK_FENCE".into());
    }
    Ok(match absent.as_slice() {
        [] => Missing::Nothing,
        [one] if one.contains("BROKK_FENCE") => Missing::Fence,
        _ => Missing::These(absent),
    })
}

/// With `store.create_tables = false`: every table and row is there, or
/// [`SqlError::Missing`] names what is not.
pub async fn check_tables(db: &Db) -> Result<(), SqlError> {
    match missing(db).await? {
        Missing::Nothing => Ok(()),
        Missing::Fence => Err(SqlError::Missing(
            "table BROKK_FENCE (new in this version) or its row ID=1".into(),
        )),
        Missing::These(what) => Err(SqlError::Missing(what.join(", "))),
    }
}

/// Creates the tables and the lock rows where missing; safe to repeat, and
/// without DDL when everything is there (see [`missing`]); only the fence
/// table when that alone is missing. `indexes`: see [`Indexes`] (tables
/// that exist keep theirs).
pub async fn create_tables(db: &Db, indexes: Indexes) -> Result<(), SqlError> {
    let fence_only = match missing(db).await? {
        Missing::Nothing => return Ok(()),
        Missing::Fence => true,
        Missing::These(_) => false,
    };
    match db {
        Db::MySql(pool) => {
            let mut conn = pool
                .get_conn()
                .await
                .map_err(my_err("connect to create tables"))?;
            if fence_only {
                for ddl in MYSQL_FENCE_DDL {
                    conn.query_drop(ddl)
                        .await
                        .map_err(my_err("create BROKK_FENCE"))?;
                }
                return Ok(());
            }
            let got: Option<Row> = conn
                .query_first("SELECT GET_LOCK('brokk_schema', 30)")
                .await
                .map_err(my_err("lock for creating tables"))?;
            let locked = got
                .and_then(|r| r.get_opt::<Option<i64>, _>(0))
                .and_then(Result::ok)
                .flatten();
            if locked != Some(1) {
                return Err(SqlError::Query {
                    what: "lock for creating tables",
                    reason: "GET_LOCK('brokk_schema') timed out after 30 s".into(),
                });
            }
            let mut result = Ok(());
            let msgs = mysql_msgs_ddl(indexes);
            for ddl in std::iter::once(msgs.as_str()).chain(MYSQL_DDL.iter().copied()) {
                if let Err(e) = conn.query_drop(ddl).await {
                    result = Err(my_err("create tables")(e));
                    break;
                }
            }
            let _ = conn.query_drop("DO RELEASE_LOCK('brokk_schema')").await;
            result
        }
        Db::Postgres(pool) => {
            let mut conn = pool.get().await?;
            if fence_only {
                // Concurrent brokers: IF NOT EXISTS can still collide on
                // the catalog's unique index; a second try finds it made.
                for ddl in PG_FENCE_DDL {
                    if let Err(e) = conn.client.batch_execute(ddl).await {
                        conn.client
                            .batch_execute(ddl)
                            .await
                            .map_err(|_| pg_err("create BROKK_FENCE")(e))?;
                    }
                }
                return Ok(());
            }
            let tx = conn
                .client
                .transaction()
                .await
                .map_err(pg_err("begin creating tables"))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_DDL_LOCK])
                .await
                .map_err(pg_err("lock for creating tables"))?;
            let extra = match indexes {
                Indexes::ActiveMq => PG_ACTIVEMQ_INDEXES,
                Indexes::Minimal => &[],
            };
            for ddl in PG_DDL.iter().chain(extra) {
                tx.batch_execute(ddl)
                    .await
                    .map_err(pg_err("create tables"))?;
            }
            tx.commit().await.map_err(pg_err("commit created tables"))
        }
    }
}

/// The columns of `table` as (NAME, type), in table order: names in upper
/// case (as ActiveMQ spells them; PostgreSQL stores them folded to lower
/// case), types in lower case with the length of `varchar`s, e.g.
/// `("CONTAINER", "varchar(250)")`, `("MSG", "longblob")` / `("MSG",
/// "bytea")`. For tests and diagnostics.
pub async fn columns(db: &Db, table: &str) -> Result<Vec<(String, String)>, SqlError> {
    let what = "read information_schema.columns";
    let raw: Vec<(String, String, i64)> = match db {
        Db::MySql(pool) => {
            let mut conn = pool.get_conn().await.map_err(my_err(what))?;
            let rows: Vec<Row> = conn
                .exec(
                    "SELECT COLUMN_NAME, DATA_TYPE, CAST(COALESCE(CHARACTER_MAXIMUM_LENGTH, 0) AS SIGNED)
                     FROM information_schema.COLUMNS
                     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?
                     ORDER BY ORDINAL_POSITION",
                    (table,),
                )
                .await
                .map_err(my_err(what))?;
            let mut out = Vec::with_capacity(rows.len());
            for mut row in rows {
                out.push((
                    my_take(&mut row, 0, what)?,
                    my_take(&mut row, 1, what)?,
                    my_take(&mut row, 2, what)?,
                ));
            }
            out
        }
        Db::Postgres(pool) => {
            let conn = pool.get().await?;
            let rows = conn
                .client
                .query(
                    "SELECT column_name::text, data_type::text,
                            COALESCE(character_maximum_length, 0)::bigint
                     FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = lower($1)
                     ORDER BY ordinal_position",
                    &[&table],
                )
                .await
                .map_err(pg_err(what))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push((
                    row.try_get(0).map_err(pg_err(what))?,
                    row.try_get(1).map_err(pg_err(what))?,
                    row.try_get(2).map_err(pg_err(what))?,
                ));
            }
            out
        }
    };
    Ok(raw
        .into_iter()
        .map(|(name, ty, len)| {
            let ty = ty.to_lowercase();
            let ty = match ty.as_str() {
                "varchar" | "character varying" => format!("varchar({len})"),
                _ => ty,
            };
            (name.to_uppercase(), ty)
        })
        .collect())
}

/// Column `i` of a MySQL row, converted, or an error naming it (never the
/// driver's panicking conversion).
pub(crate) fn my_take<T: mysql_async::prelude::FromValue>(
    row: &mut Row,
    i: usize,
    what: &'static str,
) -> Result<T, SqlError> {
    match row.take_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(SqlError::Query {
            what,
            reason: format!("column {i}: {e}"),
        }),
        None => Err(SqlError::Query {
            what,
            reason: format!("column {i} missing"),
        }),
    }
}
