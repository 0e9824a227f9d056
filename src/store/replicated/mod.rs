//! The `zk` store mode: ActiveMQ's replicated LevelDB deployment done
//! right. The master's shards produce the same row-level [`Batch`]es as in
//! the database modes (`store::sql::shard_store`); instead of a database,
//! a replicated log takes them: the master numbers each batch, streams it
//! to the standbys, and answers its shard once a quorum holds it. Every
//! node applies committed batches to its in-memory [`tables::Tables`]
//! (a hot standby: a takeover reads no disk) and keeps a local copy on
//! disk (a snapshot plus the log since, see [`log_file`]).

pub mod codec;
pub mod tables;

pub use crate::store::sql::Batch;
pub mod follower;
pub mod leader;
pub mod log_file;
pub mod state;
pub mod status;
pub mod wire;
