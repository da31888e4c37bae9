pub mod chat;
pub mod config;
pub mod protocol;
pub mod server;

pub use config::{ServerConfig, SlowConsumerPolicy};
pub use protocol::Protocol;
pub use server::{Server, ServerError, ShutdownHandle, Stats};
