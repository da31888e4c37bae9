//! The flags of `mob serve`, as clap reads them. They live in the library, not in `main.rs`,
//! so that the config file ([`crate::config_file`]) checks its keys against them and the
//! `config_file` fuzz target (`crate::fuzzing`) parses what a file stands for as the command
//! would.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::{parse_secs, parse_size};

/// The flags of `mob serve`.
// A flag given twice takes the last: the values of --config come first, so the command line
// overrides them.
#[derive(Args)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    /// Read settings from this TOML file (keys are these flags' long names, e.g.
    /// max-pending = "8MiB"); flags on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Wire protocol: raw (byte relay), line (newline-delimited) or frame (8-byte length prefix).
    #[arg(long, default_value = "line", value_parser = ["raw", "line", "frame"])]
    pub protocol: String,
    /// Do not send a client its own messages (`--no-echo-self=false` undoes a config file's).
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true")]
    pub no_echo_self: bool,
    /// Connections beyond this are accepted and closed at once.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_connections: usize,
    /// Largest message a client may send (e.g. 4096, 64KiB, 1MiB); larger disconnects it.
    #[arg(long, default_value = "1MiB", value_parser = parse_size, value_name = "BYTES")]
    pub max_message: usize,
    /// Bytes held for receivers that are behind, in total; a receiver further behind is a slow consumer.
    #[arg(long, default_value = "8MiB", value_parser = parse_size, value_name = "BYTES")]
    pub max_pending: usize,
    /// What to do with a slow consumer: disconnect it, or drop messages it missed.
    #[arg(long, default_value = "disconnect", value_parser = ["disconnect", "drop"])]
    pub slow_consumer: String,
    /// Close a client from which nothing arrived for this many seconds (off by default).
    #[arg(long, value_parser = parse_secs, value_name = "SECS")]
    pub idle_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, longest to spend delivering what is queued.
    #[arg(long, default_value = "5", value_parser = parse_secs, value_name = "SECS")]
    pub shutdown_timeout: Duration,
    /// Event loops, one thread each; every client sees the same order whichever loop serves it.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
    /// Also serve HTTP here (off by default): the chat page at `/`, WebSocket clients at `/ws`.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// A browser origin (e.g. https://example.com) allowed to open a WebSocket besides the
    /// server's own host; repeatable; `*` allows any.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// A client that joins is first sent up to the last N messages relayed before it (as many
    /// as --max-pending holds).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub history: u64,
    /// Clients must present the token in this file (surrounding whitespace ignored) before
    /// they join: TCP clients as their first message, WebSocket clients as ?token= or
    /// Authorization: Bearer (off by default).
    #[arg(long, value_name = "PATH")]
    pub auth_token_file: Option<std::path::PathBuf>,
    /// Join a cluster: every node with the same Redis and channel serves one broadcast in one
    /// order (off by default).
    #[arg(long, value_name = "redis://HOST:PORT")]
    pub cluster: Option<String>,
    /// The cluster's channel (the Redis stream's name).
    #[arg(long, default_value = "mob", value_name = "NAME")]
    pub cluster_channel: String,
    /// About how many entries the cluster's stream keeps: a node that falls further behind
    /// (stopped, or cut off from Redis) misses the oldest (logged as a gap).
    #[arg(long, default_value_t = crate::cluster::STREAM_LENGTH, value_name = "ENTRIES")]
    pub cluster_keep: usize,
    /// Serve Prometheus metrics at /metrics (and /healthz) on this address (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Serve TLS on the listener and on the --http listener (https, wss) with this certificate
    /// chain (PEM, the server's certificate first); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1); needs --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// How log lines on stderr are written: text for people, json (one object a line, fields
    /// as keys) for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written on stderr.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, coloured on a terminal.
    Text,
    /// One JSON object per line, with the level, target, message and every field as keys, so a
    /// log shipper can index `peer` or `reason` without parsing the message.
    Json,
}

/// `mob serve`'s flags as a command of their own (what the config file's keys are checked
/// against, and what the fuzz target parses a file's flags with).
pub fn serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("serve"))
}
