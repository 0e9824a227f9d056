//! `memory` mode: messages live only in the broker's queues; a restart
//! loses them. Non-persistent traffic and tests use it.

use super::{Record, Recovered, Store, StoreError};

#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn append(&mut self, _record: Record) {}

    async fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn recover(&mut self) -> Result<Recovered, StoreError> {
        Ok(Recovered::default())
    }
}
