//! What a bench run measured, for people (a few aligned lines) and for scripts (one JSON object).

use std::fmt;

use serde_json::json;

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: String,
    /// The addresses loaded (resolved), in the order given: one, or a cluster's nodes.
    pub addrs: Vec<String>,
    /// The local addresses connected from (`--source`); empty when the kernel chose.
    pub sources: Vec<String>,
    pub publishers: usize,
    pub subscribers: usize,
    pub size: usize,
    /// Messages per second asked for in total; 0 is closed loop.
    pub rate: f64,
    pub window: usize,
    /// Seconds measured (after warm-up).
    pub duration: f64,
    /// Seconds from the first connect until the clock started: every connection open (and
    /// past its handshake or upgrade) and every subscriber synced.
    pub setup_s: f64,
    /// Messages published during the measured seconds.
    pub published: u64,
    /// Deliveries (one message to one subscriber) received during the measured seconds.
    pub delivered: u64,
    /// Deliveries over the whole run, warm-up and drain included (to divide server CPU by).
    pub delivered_total: u64,
    /// Latency percentiles from send to receipt, in microseconds: p50, p99, p99.9, max.
    pub latency_us: [f64; 4],
    /// Over the whole run, checked after it drained: messages a connected subscriber never got.
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Servers that promise one order to all (mob): subscribers whose whole sequence differs
    /// from the most common one (another order, or a loss or duplicate). 0 for the others.
    pub diverged: u64,
    /// Deliveries that were not a payload the bench sent (torn or garbled).
    pub corrupt: u64,
    /// Connections the server closed (or that failed) during the run.
    pub disconnects: u64,
}

impl Report {
    pub fn published_per_sec(&self) -> f64 {
        self.published as f64 / self.duration
    }

    pub fn delivered_per_sec(&self) -> f64 {
        self.delivered as f64 / self.duration
    }

    /// Payload megabytes (10^6) delivered per second.
    pub fn delivered_mb_per_sec(&self) -> f64 {
        self.delivered_per_sec() * self.size as f64 / 1e6
    }

    /// Whether the server relayed everything exactly once, in order, to everyone.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.diverged == 0
            && self.corrupt == 0
            && self.disconnects == 0
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "target": self.target,
            "addr": self.addrs.join(","),
            "addrs": self.addrs,
            "sources": self.sources,
            "publishers": self.publishers,
            "subscribers": self.subscribers,
            "size": self.size,
            "rate": self.rate,
            "window": self.window,
            "duration_s": self.duration,
            "setup_s": self.setup_s,
            "published": self.published,
            "delivered": self.delivered,
            "delivered_total": self.delivered_total,
            "published_per_s": self.published_per_sec(),
            "delivered_per_s": self.delivered_per_sec(),
            "delivered_mb_per_s": self.delivered_mb_per_sec(),
            "latency_us": {
                "p50": self.latency_us[0],
                "p99": self.latency_us[1],
                "p999": self.latency_us[2],
                "max": self.latency_us[3],
            },
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "diverged": self.diverged,
            "corrupt": self.corrupt,
            "disconnects": self.disconnects,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.rate > 0.0 {
            format!("open loop at {} msg/s", self.rate)
        } else {
            format!("closed loop, window {}", self.window)
        };
        let from = if self.sources.is_empty() {
            String::new()
        } else {
            format!(" from {}", self.sources.join(", "))
        };
        writeln!(
            f,
            "{} at {}{from}: {} publishers, {} subscribers, {} B payloads, {mode}, {:.1} s measured",
            self.target,
            self.addrs.join(" + "),
            self.publishers,
            self.subscribers,
            self.size,
            self.duration
        )?;
        writeln!(
            f,
            "set up     {:>14} connections in {:.2} s",
            self.subscribers + self.publishers,
            self.setup_s
        )?;
        writeln!(f, "published  {:>14.0} msg/s", self.published_per_sec())?;
        writeln!(
            f,
            "delivered  {:>14.0} msg/s  {:>10.1} MB/s",
            self.delivered_per_sec(),
            self.delivered_mb_per_sec()
        )?;
        let ms = |us: f64| us / 1000.0;
        writeln!(
            f,
            "latency    p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            ms(self.latency_us[0]),
            ms(self.latency_us[1]),
            ms(self.latency_us[2]),
            ms(self.latency_us[3])
        )?;
        write!(
            f,
            "integrity  lost {}  duplicated {}  out of order {}  corrupt {}  disconnects {}",
            self.lost, self.duplicated, self.out_of_order, self.corrupt, self.disconnects
        )?;
        if self.diverged > 0 {
            write!(
                f,
                "  diverged {} (subscribers whose order is not the others')",
                self.diverged
            )?;
        }
        Ok(())
    }
}
