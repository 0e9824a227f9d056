//! Where messages live. The broker appends what must survive a restart; a
//! store says when it is durable and rebuilds state on start. The durable
//! modes (`file`, `db`, `zk`) come behind this trait; `memory` keeps nothing.

pub mod memory;

use thiserror::Error;

use crate::broker::{Destination, MessageId, SharedMessage};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store I/O failed on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One change to durable state.
#[derive(Debug)]
pub enum Record {
    Send(SharedMessage),
    Ack {
        destination: Destination,
        id: MessageId,
    },
}

/// Everything a shard needs to resume after a restart or a failover.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Pending messages per destination, in journal order.
    pub messages: Vec<SharedMessage>,
}

#[allow(async_fn_in_trait)] // used with concrete types on one executor, never boxed
pub trait Store {
    /// Adds a record; it is durable once a later [`Store::sync`] returns.
    fn append(&mut self, record: Record);
    /// Makes every record appended so far durable (one flush for all: group commit).
    async fn sync(&mut self) -> Result<(), StoreError>;
    /// Reads back what survived.
    fn recover(&mut self) -> Result<Recovered, StoreError>;
}
