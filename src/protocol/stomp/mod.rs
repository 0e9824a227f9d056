//! STOMP 1.0/1.1/1.2: the frame type, its codec, and the per-connection
//! session state machine that turns frames into broker operations.

pub mod codec;
pub mod frame;
pub mod probe;
pub mod session;

pub use codec::{parse, FrameError, Limits, Parsed};
pub use frame::{Command, Frame, Version};
