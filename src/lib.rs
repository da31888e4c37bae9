//! mob: a multi-echo server. Every message any connected client sends is relayed to every
//! connected client, in one total order, over TCP (plain or TLS), on [mio] event loops (one per
//! `--threads`, one by default) that share that order through a sequencer.
//!
//! # Layout
//!
//! - [`config`]: [`ServerConfig`] with its documented defaults, and size parsing (`8MiB`).
//! - [`cli`]: the flags of `mob serve` (clap); [`config_file`]: the TOML file of
//!   `--config`, whose keys are those flags and whose values become them.
//! - [`protocol`]: the wire formats (`raw`, `line`, `frame`) as pure code with no I/O: a
//!   per-connection [`protocol::Decoder`] finds messages in a buffer, in their wire form.
//! - [`server`]: the event loops. [`Server`] owns them; loop 0 holds the listener and hands
//!   connections to the others (`server/board.rs`). Each loop has a slab of connections; each
//!   connection's [`server::Inbox`] turns its input into [`server::Entry`]s, which the
//!   [`server::Sequencer`] gives their place in the one order and appends to every loop's
//!   [`server::Log`]; each receiver is a [`server::Cursor`] into its loop's log, written with
//!   vectored writes in flush rounds (`server/fanout.rs`). Every byte a connection reads or
//!   writes goes through its `Stream` (`server/stream.rs`): the socket, or the socket under a
//!   rustls session with `--tls-cert` (`server/tls.rs` reads the certificate and key).
//! - [`auth`]: the token of `--auth-token-file`, its file, and how a client presents it
//!   (shared by the server and the clients).
//! - [`cluster`]: `--cluster`: several nodes over a Redis stream, a third kind of sequencer
//!   (a publisher and a reader thread per node, beside the event loops).
//! - [`chat`]: the interactive client behind `mob chat`.
//! - [`bench`]: the load generator and checker behind `mob bench` (mob, Redis, NATS and
//!   WebSocket).
//! - [`client`]: what those two clients share: the TLS client configuration (`--tls`, `--ca`)
//!   and the token (`--token-file`) in a WebSocket request.
//! - `fuzzing`: the properties the fuzz targets (`fuzz/`) check, also replayed by
//!   `tests/fuzz_replay.rs` over the saved corpora (hidden from the docs).
//! - `sys.rs`: the system calls made by hand (`read(2)` into spare capacity, the
//!   open-files limit, a source address bound without its port), shared by the server and
//!   the bench.
//! - `main.rs`: the `mob` command line (`chat` and `bench`'s flags, `serve`'s from [`cli`]),
//!   nothing more.
//!
//! # One message, end to end
//!
//! A readable event queues the connection; its input is read into the loop's scratch block
//! (bounded per connection and per turn), the complete messages become entries that share that
//! block without a copy, and the read visit's batch is appended to the log. Flush rounds then
//! give every receiver that is behind one `writev` over the log from its cursor (small rounds
//! wait a moment to carry more; long rounds are spread over several turns). After each full
//! round the log is trimmed to what some receiver still needs, and to `--max-pending`: a
//! receiver it leaves behind is a slow consumer. See `docs/ARCHITECTURE.md`.
//!
//! # Running one in-process
//!
//! ```no_run
//! use mob::{Server, ServerConfig};
//!
//! let config = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
//! let server = Server::bind(config)?;
//! println!("listening on {}", server.local_addr());
//! let stop = server.shutdown_handle();
//! std::thread::spawn(move || server.run());
//! // ... talk to it ...
//! stop.shutdown();
//! # Ok::<(), mob::ServerError>(())
//! ```

pub mod auth;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod config_file;
#[doc(hidden)]
pub mod fuzzing;
pub mod protocol;
pub mod server;
mod sys;
pub mod ws;

pub use config::{ServerConfig, SlowConsumerPolicy};
pub use protocol::Protocol;
pub use server::{Server, ServerError, ShutdownHandle, Stats};
