//! Several addresses (the nodes of one cluster): which connection goes to which node, and
//! which publishers prove, before the clock starts, that every subscriber hears every node.
//!
//! Plain functions of the counts, so the spreading is tested without sockets.

/// The node subscriber `s` connects to: round-robin, so every node serves its share (with 100
/// subscribers and two nodes, 50 each).
pub fn of_subscriber(s: usize, nodes: usize) -> usize {
    s % nodes.max(1)
}

/// The node publisher `p` connects to: round-robin too, starting again at node 0, so W1's one
/// publisher is on node 0 and half the subscribers hear it through the backplane.
pub fn of_publisher(p: usize, nodes: usize) -> usize {
    p % nodes.max(1)
}

/// The publishers that send the sync message before the clock starts, in the order of their
/// rank (the sync's sequence number): a subscriber is ready once it has the sync of each.
///
/// One address: the last publisher, connected after every subscriber, for servers that relay
/// to all (mob, WebSocket); none for Redis and NATS, whose subscriptions are confirmed.
/// Several: the last publisher on each node that has one, for every target. A confirmed
/// subscription says nothing about the other nodes: a NATS cluster passes interest over its
/// routes a little later, and what a publisher on another node sends meanwhile is not
/// delivered. Only a message that came through proves the path from that node.
pub fn sync_senders(publishers: usize, nodes: usize, relays_to_all: bool) -> Vec<usize> {
    let nodes = nodes.max(1);
    if nodes == 1 && !relays_to_all {
        return Vec::new();
    }
    (0..nodes.min(publishers))
        .map(|node| {
            // The highest p below `publishers` with p % nodes == node.
            node + (publishers - 1 - node) / nodes * nodes
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_takes_everyone() {
        assert!((0..10).all(|s| of_subscriber(s, 1) == 0));
        assert!((0..3).all(|p| of_publisher(p, 1) == 0));
    }

    #[test]
    fn subscribers_and_publishers_alternate_over_nodes() {
        let subs: Vec<usize> = (0..5).map(|s| of_subscriber(s, 2)).collect();
        assert_eq!(subs, [0, 1, 0, 1, 0]);
        let pubs: Vec<usize> = (0..10).map(|p| of_publisher(p, 3)).collect();
        assert_eq!(pubs, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn each_node_gets_its_share() {
        let mut per_node = [0; 2];
        for s in 0..100 {
            per_node[of_subscriber(s, 2)] += 1;
        }
        assert_eq!(per_node, [50, 50]);
    }

    #[test]
    fn one_address_syncs_like_before() {
        assert_eq!(sync_senders(1, 1, true), [0]);
        assert_eq!(sync_senders(10, 1, true), [9]);
        assert!(sync_senders(10, 1, false).is_empty());
    }

    #[test]
    fn several_addresses_sync_from_the_last_publisher_of_each_node() {
        assert_eq!(sync_senders(10, 2, true), [8, 9]);
        assert_eq!(sync_senders(10, 2, false), [8, 9]);
        assert_eq!(sync_senders(7, 3, false), [6, 4, 5]);
        for (publishers, nodes) in [(10, 2), (7, 3), (2, 2), (5, 4)] {
            for (node, p) in sync_senders(publishers, nodes, true)
                .into_iter()
                .enumerate()
            {
                assert_eq!(of_publisher(p, nodes), node);
                assert!(p < publishers && p + nodes >= publishers);
            }
        }
    }

    #[test]
    fn nodes_without_a_publisher_send_no_sync() {
        // W1 over two nodes: one publisher, on node 0; node 1's subscribers hear it through the
        // backplane, and that is what the sync proves.
        assert_eq!(sync_senders(1, 2, true), [0]);
        assert_eq!(sync_senders(1, 2, false), [0]);
    }
}
