//! Brokk: a thread-per-core STOMP message broker with ActiveMQ-compatible
//! master/standby deployments. Layers point one way:
//! `server -> protocol -> broker -> store`; `admin` reads broker stats.

pub mod admin;
pub mod broker;
pub mod config;
pub mod ha;
pub mod idmap;
pub mod metrics;
pub mod ports;
pub mod protocol;
pub mod security;
pub mod server;
pub mod side;
pub mod store;
