//! Wire protocols. Each one turns its frames into broker operations; nothing
//! below `broker` knows any of them.

pub mod openwire;
pub mod stomp;
