//! Who is master. A broker starts as standby, takes over when it wins the
//! lock (file mode: an exclusive lock on `<dir>/lock`) and has raised the
//! epoch (`<dir>/epoch`), and exits - fenced - the moment it finds either
//! taken by another broker.

pub mod db_lease;
pub mod epoch;
pub mod fence;
pub mod file_lock;
pub mod keeper;
pub mod role;
pub mod zk;

pub use file_lock::FileLock;
pub use role::{Role, RoleCell};
