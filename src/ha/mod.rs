//! Who is master. A broker starts as standby, takes over when it wins the
//! lock (file mode: an exclusive lock on `<dir>/lock`), and exits - fenced -
//! the moment it loses it.

pub mod file_lock;
pub mod role;

pub use file_lock::FileLock;
pub use role::{Role, RoleCell};
