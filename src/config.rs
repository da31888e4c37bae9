//! Server settings, their defaults, and the parsing of human-friendly sizes.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::protocol::Protocol;

/// What to do with a receiver that falls more than `--max-pending` bytes behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close the connection: the receiver can never have a gap in what it sees.
    Disconnect,
    /// Skip the receiver ahead to the newest message and count what it missed.
    Drop,
}

impl FromStr for SlowConsumerPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disconnect" => Ok(SlowConsumerPolicy::Disconnect),
            "drop" => Ok(SlowConsumerPolicy::Drop),
            other => Err(format!(
                "unknown slow-consumer policy {other:?} (expected disconnect or drop)"
            )),
        }
    }
}

impl fmt::Display for SlowConsumerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlowConsumerPolicy::Disconnect => "disconnect",
            SlowConsumerPolicy::Drop => "drop",
        })
    }
}

/// Everything `mob serve` can be told. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free port (the real one is printed on start).
    pub listen: SocketAddr,
    /// Wire format spoken by every client of this server.
    pub protocol: Protocol,
    /// Whether a sender also receives its own messages (the original multi-echo behaviour).
    pub echo_self: bool,
    /// Connections beyond this are accepted and closed at once, so the rest keep their service.
    pub max_connections: usize,
    /// Largest message a client may send; a larger one is a protocol error for that client.
    pub max_message: usize,
    /// Bytes of relayed messages held for receivers that are behind, over all receivers.
    pub max_pending: usize,
    /// What happens to a receiver that falls more than `max_pending` behind.
    pub slow_consumer: SlowConsumerPolicy,
    /// Close a client from which no bytes arrived for this long; `None` never does.
    pub idle_timeout: Option<Duration>,
    /// Longest a graceful shutdown waits to deliver what is queued.
    pub shutdown_timeout: Duration,
    /// Event loops, each on a thread of its own; all clients share one order whatever loop
    /// serves them.
    pub threads: usize,
    /// Where to serve HTTP (the page at `/`, WebSocket clients at `/ws`); `None` serves none.
    pub http: Option<SocketAddr>,
    /// Browser origins allowed to open a WebSocket besides the server's own host (`*`: any).
    pub allowed_origins: Vec<String>,
    /// Where to serve `/metrics` and `/healthz`; `None` serves none.
    pub metrics: Option<SocketAddr>,
    /// A client that joins is first sent up to this many of the messages relayed before it
    /// (as far as `max_pending` holds them); 0 sends none.
    pub history: u64,
    /// Clients must present this token before they join (`--auth-token-file`); `None`: no
    /// authentication.
    pub auth_token: Option<crate::auth::Token>,
    /// With a Redis backplane: several nodes serve one broadcast in one order.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Serve TLS on the listener and the HTTP listener with this certificate and key; `None`
    /// serves plain TCP.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// The private key of the server's certificate.
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            protocol: Protocol::Line,
            echo_self: true,
            max_connections: 10_000,
            max_message: 1 << 20,
            max_pending: 8 << 20,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            idle_timeout: None,
            shutdown_timeout: Duration::from_secs(5),
            threads: 1,
            http: None,
            allowed_origins: Vec::new(),
            metrics: None,
            history: 0,
            auth_token: None,
            cluster: None,
            tls: None,
        }
    }
}

/// The most event loops: far more than the cores of any machine this runs on, and few enough
/// that every loop being woken for every batch stays cheap.
pub const MAX_THREADS: usize = 256;
/// The largest `--max-message`: messages are held with 32-bit offsets, and no broadcast
/// message needs more.
pub const MAX_MESSAGE_LIMIT: usize = 1 << 30;
/// The largest `--max-connections`: far above what one process's descriptors allow, and far
/// below the tokens the event loop keeps for itself.
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 24;
/// The longest duration a setting takes (a year): longer ones are surely a mistake, and
/// deadlines computed from them must not overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl ServerConfig {
    /// Checks the settings against their limits; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_message > MAX_MESSAGE_LIMIT {
            return Err(format!(
                "--max-message {} is above the limit of {MAX_MESSAGE_LIMIT} bytes (1GiB)",
                self.max_message
            ));
        }
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS_LIMIT {
            return Err(format!(
                "--max-connections {} must be between 1 and {MAX_CONNECTIONS_LIMIT}",
                self.max_connections
            ));
        }
        for (flag, value) in [
            ("--idle-timeout", self.idle_timeout),
            ("--shutdown-timeout", Some(self.shutdown_timeout)),
        ] {
            if value.is_some_and(|d| d > MAX_DURATION) {
                return Err(format!(
                    "{flag} is above the limit of {} seconds (a year)",
                    MAX_DURATION.as_secs()
                ));
            }
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(format!(
                "--threads {} must be between 1 and {MAX_THREADS}",
                self.threads
            ));
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err("--idle-timeout must be above 0 (leave it out to turn it off)".into());
        }
        if let Some(cluster) = &self.cluster {
            if cluster.keep == 0 {
                return Err("--cluster-keep must be at least 1".into());
            }
            // A URL that cannot work is refused before anything listens.
            cluster.client()?;
        }
        Ok(())
    }
}

/// Parses a duration in seconds, fractions allowed (`30`, `0.5`), up to [`MAX_DURATION`].
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected seconds, like 30 or 0.5"))?;
    if !(0.0..=MAX_DURATION.as_secs_f64()).contains(&secs) {
        return Err(format!(
            "invalid duration {s:?}: expected 0 to {} seconds (a year)",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte count: `4096`, `64KiB`, `8MiB`, `1GiB` (binary), `64KB`, `8MB` (decimal),
/// `64K` / `8M` / `1G` (binary). Case-insensitive, optional space before the unit.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number like 4096, 64KiB or 8MiB"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: number too large"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8 mib"), Ok(8 << 20));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    }

    #[test]
    fn bad_sizes_are_explained() {
        assert!(parse_size("").unwrap_err().contains("expected a number"));
        assert!(parse_size("MiB").unwrap_err().contains("expected a number"));
        assert!(parse_size("12parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn durations_parse_and_extremes_are_refused() {
        assert_eq!(parse_secs("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["1e19", "-1", "NaN", "inf", "5s", ""] {
            assert!(parse_secs(bad).is_err(), "{bad} was accepted");
        }
        assert!(parse_secs("1e19").unwrap_err().contains("a year"));
    }

    #[test]
    fn extreme_settings_are_refused_with_the_flag_named() {
        let ok = ServerConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (
                ServerConfig {
                    max_message: usize::MAX,
                    ..ok.clone()
                },
                "--max-message",
            ),
            (
                ServerConfig {
                    max_connections: usize::MAX,
                    ..ok.clone()
                },
                "--max-connections",
            ),
            (
                ServerConfig {
                    max_connections: 0,
                    ..ok.clone()
                },
                "--max-connections",
            ),
            (
                ServerConfig {
                    shutdown_timeout: Duration::MAX,
                    ..ok.clone()
                },
                "--shutdown-timeout",
            ),
            (
                ServerConfig {
                    idle_timeout: Some(Duration::MAX),
                    ..ok.clone()
                },
                "--idle-timeout",
            ),
            (
                ServerConfig {
                    idle_timeout: Some(Duration::ZERO),
                    ..ok.clone()
                },
                "--idle-timeout",
            ),
        ];
        for (config, flag) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.contains(flag), "{err:?} does not name {flag}");
        }
    }

    #[test]
    fn policies_parse() {
        assert_eq!("drop".parse(), Ok(SlowConsumerPolicy::Drop));
        assert_eq!("disconnect".parse(), Ok(SlowConsumerPolicy::Disconnect));
        assert!("nope".parse::<SlowConsumerPolicy>().is_err());
    }
}
