//! The `mob` command: parses arguments, sets up logging and calls the library.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use mob::bench::{BenchConfig, Target};
use mob::cli::{LogFormat, ServeArgs};
use mob::config::{parse_secs, parse_size};
use mob::{Protocol, Server, ServerConfig, SlowConsumerPolicy};

#[derive(Parser)]
#[command(
    name = "mob",
    version,
    about = "A multi-echo server: every message any client sends is relayed to every connected client."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    // (A flag given twice takes the last: ServeArgs says so, for --config.)
    Serve(Box<ServeArgs>),
    /// Interactive client: stdin lines go to the server, messages received go to stdout.
    Chat(ChatArgs),
    /// Load generator: publishers and subscribers against mob, Redis, NATS or a WebSocket
    /// broadcast server, with checks.
    Bench(BenchArgs),
}

#[derive(Args)]
struct ChatArgs {
    /// Server address.
    #[arg(default_value = "127.0.0.1:8000")]
    addr: String,
    /// Wire protocol the server speaks.
    #[arg(long, default_value = "line", value_parser = ["line", "frame"])]
    protocol: String,
    #[command(flatten)]
    access: AccessArgs,
}

/// How a client gets in: TLS and a token, for a server started with `--tls-cert` or
/// `--auth-token-file`.
#[derive(Args)]
struct AccessArgs {
    /// Send the token in this file first (for `serve --auth-token-file`): as the first
    /// message, or as ?token= in a WebSocket request URL (bench's ws and mob-ws).
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// Connect over TLS, trusting the built-in (Mozilla) roots unless --ca is given.
    #[arg(long)]
    tls: bool,
    /// Trust the certificates in this PEM file instead of the built-in roots (implies --tls).
    #[arg(long, value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
}

impl AccessArgs {
    fn load(self) -> anyhow::Result<mob::client::Access> {
        mob::client::AccessOptions {
            token_file: self.token_file,
            tls: self.tls,
            ca: self.ca,
        }
        .load()
    }
}

#[derive(Args)]
struct BenchArgs {
    /// Server address, host:port; for ws and mob-ws also ws://host:port/path (the path is / for
    /// ws, /ws for mob-ws unless given) [default: 127.0.0.1 and the target's usual port: 8000,
    /// 6379, 4222 or 8080]. Several: the nodes of one cluster; subscribers and publishers are
    /// spread over them round-robin.
    #[arg(value_name = "ADDR")]
    addrs: Vec<String>,
    /// What the server speaks: ws is any WebSocket broadcast server, mob-ws is mob's
    /// `serve --http` port.
    #[arg(long, default_value = "mob-line", value_parser = target_parser())]
    target: Target,
    /// Subscriber connections (each receives every message).
    #[arg(long, default_value_t = 100, value_name = "N")]
    subscribers: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1, value_name = "P")]
    publishers: usize,
    /// Payload bytes per message (at least 32).
    #[arg(long, default_value = "64", value_parser = parse_size, value_name = "BYTES")]
    size: usize,
    /// Messages per second in total (open loop); 0 publishes as fast as the slowest subscriber keeps up.
    #[arg(long, default_value_t = 0.0, value_name = "MSGS_PER_SEC")]
    rate: f64,
    /// Seconds measured.
    #[arg(long, default_value = "5", value_parser = parse_secs, value_name = "SECS")]
    duration: Duration,
    /// Seconds run before measuring.
    #[arg(long, default_value = "1", value_parser = parse_secs, value_name = "SECS")]
    warmup: Duration,
    /// Seconds every connection is held open and quiet once set up, before the warm-up (to
    /// read a server's memory with all clients connected; its start is logged on stderr).
    #[arg(long, default_value = "0", value_parser = parse_secs, value_name = "SECS")]
    idle: Duration,
    /// Closed loop: most messages a publisher may be ahead of its slowest subscriber [default: as many as fit in 1 MiB, 16 to 1000].
    #[arg(long, value_name = "W")]
    window: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Local address to connect from; repeat it or give a comma-separated list, and the
    /// connections take them in turn. Each has its own ephemeral ports (net.ipv4.ip_local_port_range,
    /// about 28,000 per server address), so more connections need more of them; on loopback
    /// any of 127.0.0.0/8 will do [default: the kernel's choice].
    #[arg(long = "source", value_name = "IP", value_delimiter = ',')]
    sources: Vec<std::net::IpAddr>,
    #[command(flatten)]
    access: AccessArgs,
}

fn main() -> ExitCode {
    // Parsed before logging starts, so that `serve` can choose the format; clap's own errors
    // are written by clap and never go through the log.
    let argv = match mob::config_file::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            // Through anyhow for its `{:#}`: the file, then what is wrong in it.
            eprintln!("mob: {:#}", anyhow::Error::from(e));
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(argv);
    let format = match &cli.command {
        Command::Serve(args) => args.log_format,
        Command::Chat(_) | Command::Bench(_) => LogFormat::Text,
    };
    init_logging(format);
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Chat(args) => chat(args),
        Command::Bench(args) => bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A shipper reading JSON would choke on a line of text: the last words are an event too.
        Err(e) if format == LogFormat::Json => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mob: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines go to stderr at the level `RUST_LOG` sets (`info` when unset), in `format`.
fn init_logging(format: LogFormat) {
    // rustls's own lines (with its `logging` feature, which the clients' use may turn on)
    // are off unless asked for: a client can cause them by the thousand, and the server logs
    // each TLS failure itself, rate-limited, naming the peer.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rustls=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // Flattened: `message`, `peer` and the other fields sit beside `level` and `target`
        // instead of inside a nested `fields` object, where most shippers would not index them.
        LogFormat::Json => {
            builder.json().flatten_event(true).init();
            // A panic's own report is a line of text: report it as an event instead, so
            // every line a shipper reads is JSON. (The loop that panicked is then shut down
            // with the others, and logged as such.)
            std::panic::set_hook(Box::new(|info| {
                let thread = std::thread::current();
                tracing::error!(
                    thread = thread.name().unwrap_or("unnamed"),
                    "panicked: {info}"
                );
            }));
        }
    }
}

fn protocol(name: &str) -> anyhow::Result<Protocol> {
    name.parse::<Protocol>().map_err(anyhow::Error::msg)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig {
        listen: args.listen,
        protocol: protocol(&args.protocol)?,
        echo_self: !args.no_echo_self,
        max_connections: args.max_connections,
        max_message: args.max_message,
        max_pending: args.max_pending,
        slow_consumer: args
            .slow_consumer
            .parse::<SlowConsumerPolicy>()
            .map_err(anyhow::Error::msg)?,
        idle_timeout: args.idle_timeout,
        shutdown_timeout: args.shutdown_timeout,
        threads: args.threads,
        http: args.http,
        allowed_origins: args.allowed_origins,
        metrics: args.metrics,
        history: args.history,
        cluster: args.cluster.map(|url| mob::cluster::ClusterConfig {
            url,
            channel: args.cluster_channel,
            keep: args.cluster_keep,
        }),
        auth_token: args
            .auth_token_file
            .as_deref()
            .map(mob::auth::Token::from_file)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| mob::config::TlsFiles { cert, key }),
    };
    let mut server = Server::bind(config)?;
    server.handle_signals()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", server.local_addr())
        .and_then(|_| match server.http_addr() {
            Some(http) => writeln!(stdout, "http on {http}"),
            None => Ok(()),
        })
        .and_then(|_| match server.metrics_addr() {
            Some(metrics) => writeln!(stdout, "metrics on {metrics}"),
            None => Ok(()),
        })
        .and_then(|_| stdout.flush())
        .context("cannot write to stdout")?;
    drop(stdout);
    server.run()?;
    Ok(())
}

/// `--target`'s names, from the one list of targets.
fn target_parser() -> impl clap::builder::TypedValueParser<Value = Target> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Target::ALL.map(Target::name))
        .map(|name| name.parse().expect("a listed target parses"))
}

fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let protocol = protocol(&args.protocol)?;
    let access = args.access.load()?;
    mob::chat::run(&args.addr, protocol, &access)
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let target = args.target;
    let access = args.access.load()?;
    let config = BenchConfig {
        addrs: if args.addrs.is_empty() {
            vec![format!("127.0.0.1:{}", target.default_port())]
        } else {
            args.addrs
        },
        target,
        subscribers: args.subscribers,
        publishers: args.publishers,
        size: args.size,
        rate: args.rate,
        duration: args.duration,
        warmup: args.warmup,
        idle: args.idle,
        window: args
            .window
            .unwrap_or_else(|| BenchConfig::default_window(args.size)),
        progress: !args.json && std::io::stderr().is_terminal(),
        access,
        sources: args.sources,
    };
    let report = mob::bench::run(config)?;
    let mut stdout = std::io::stdout().lock();
    let printed = if args.json {
        writeln!(stdout, "{}", report.to_json())
    } else {
        writeln!(stdout, "{report}")
    };
    match printed.and_then(|_| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("cannot write to stdout")
        }
        _ => {}
    }
    if !report.is_clean() {
        anyhow::bail!(
            "the server lost, duplicated or reordered messages, or dropped connections (see the report)"
        );
    }
    Ok(())
}
