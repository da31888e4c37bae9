//! Source addresses (`--source`): which local address each connection is bound to, and whether
//! the ephemeral ports can hold the connections asked of each address.
//!
//! A TCP connection is one four-tuple: source address and port, server address and port. From
//! one source address to one server there are as many connections as ephemeral ports
//! (`net.ipv4.ip_local_port_range`, 28,232 by default), fewer while the ports of a previous run
//! wait in `TIME_WAIT` (a minute). Past that, `connect` fails with `EADDRNOTAVAIL`. Spreading
//! the connections over several source addresses gives each its own range; on Linux every
//! address of 127.0.0.0/8 is the loopback's, so a bench on one machine has as many as it needs.
//!
//! # Implementation notes
//! The addresses are explicit: the bench does not choose them itself. Only loopback has spare
//! addresses everywhere (elsewhere they must be configured on an interface, and the bench cannot
//! tell which ones the server accepts), and whether one address is enough depends on what
//! earlier runs left in `TIME_WAIT`, which the bench cannot see beforehand. So it checks what it
//! can (the port range against the connections per address and server) and, when ports run out
//! anyway, says which flag to add.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

/// The source address (by index) of connection `k`, counting subscribers then publishers:
/// round-robin, so every address carries its share.
pub fn of_connection(k: usize, sources: usize) -> usize {
    k % sources.max(1)
}

/// The kernel's ephemeral port range, or `None` where it cannot be read.
pub fn local_port_range() -> Option<RangeInclusive<u16>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_port_range(&text)
}

/// Reads `ip_local_port_range` (`"32768\t60999\n"`).
pub fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<u16>().ok());
    let (low, high) = (fields.next()??, fields.next()??);
    (low <= high).then_some(low..=high)
}

/// The pair (source index, node index) with the most connections, and that number.
/// `pairs` yields one pair per connection.
pub fn busiest_pair(
    pairs: impl IntoIterator<Item = (usize, usize)>,
) -> Option<((usize, usize), usize)> {
    let mut count: HashMap<(usize, usize), usize> = HashMap::new();
    for pair in pairs {
        *count.entry(pair).or_default() += 1;
    }
    count
        .into_iter()
        .max_by_key(|&(pair, n)| (n, std::cmp::Reverse(pair)))
}

/// What to tell a user whose connections to `server` need more source addresses than the
/// `have` given: at least `need` in all.
pub fn advice(server: SocketAddr, have: usize, need: usize) -> String {
    let more = if server.ip().is_loopback() && server.is_ipv4() {
        let list: Vec<String> = (1..=need.clamp(2, 4))
            .map(|i| format!("127.0.0.{i}"))
            .collect();
        format!(
            "spread them over at least {need} source addresses, e.g. --source {}{} (every \
             address of 127.0.0.0/8 is the loopback's)",
            list.join(","),
            if need > 4 { ",..." } else { "" }
        )
    } else {
        format!(
            "spread them over at least {need} source addresses of this machine with --source \
             (one address per flag, or a comma-separated list)"
        )
    };
    let now = if have > 1 {
        format!(" ({have} given)")
    } else {
        String::new()
    };
    format!("{more}{now}, or widen net.ipv4.ip_local_port_range")
}

/// The family of `source` must be the server's: an IPv4 socket cannot reach an IPv6 server.
pub fn same_family(source: IpAddr, server: SocketAddr) -> bool {
    source.is_ipv4() == server.is_ipv4()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_alternate_over_sources() {
        let picks: Vec<usize> = (0..7).map(|k| of_connection(k, 3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert!((0..5).all(|k| of_connection(k, 1) == 0));
        assert!((0..5).all(|k| of_connection(k, 0) == 0));
    }

    #[test]
    fn the_port_range_reads_as_the_kernel_writes_it() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("1024 65535"), Some(1024..=65535));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("x y"), None);
    }

    #[test]
    fn the_busiest_pair_is_found() {
        // Two sources, two nodes, alternating together: only the diagonal is used.
        let pairs = (0..10).map(|k| (of_connection(k, 2), k % 2));
        assert_eq!(busiest_pair(pairs), Some(((0, 0), 5)));
        let pairs = (0..9).map(|k| (of_connection(k, 3), 0));
        assert_eq!(busiest_pair(pairs), Some(((0, 0), 3)));
        assert_eq!(busiest_pair([]), None);
    }

    #[test]
    fn advice_names_loopback_addresses_for_a_loopback_server() {
        let local: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let text = advice(local, 1, 3);
        assert!(
            text.contains("--source 127.0.0.1,127.0.0.2,127.0.0.3 "),
            "{text}"
        );
        assert!(advice(local, 2, 8).contains("127.0.0.4,... "));
        let remote: SocketAddr = "10.0.0.1:8000".parse().unwrap();
        let text = advice(remote, 2, 3);
        assert!(
            text.contains("with --source") && text.contains("(2 given)"),
            "{text}"
        );
    }

    #[test]
    fn families_must_match() {
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert!(same_family("127.0.0.2".parse().unwrap(), v4));
        assert!(!same_family("127.0.0.2".parse().unwrap(), v6));
        assert!(same_family("::1".parse().unwrap(), v6));
    }
}
