//! Destinations, subscriptions, dispatch, acks, redelivery, dead-lettering
//! and expiry. Knows no wire protocol and does no I/O: each shard owns a
//! [`shard::ShardBroker`] for the destinations that hash to it.

pub mod destination;
pub mod message;
pub mod message_ids;
pub mod ops;
pub mod paging;
pub mod producer_audit;
pub mod queue;
pub mod restore;
pub mod selector;
pub mod shard;
pub mod temporary;

pub use destination::{Destination, DestinationError};
pub use message::{Message, MessageId, SharedMessage};
