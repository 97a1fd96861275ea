//! The consistent-hash ring: which node owns a channel.
//!
//! Every node must compute the same owner from the same membership view, so this module is
//! part of the wire contract: the hash is xxh3-64 (stable across processes, platforms and
//! releases, unlike Rust's randomized `DefaultHasher`), each node gets [`VNODES`] points
//! hashed from `"{node_id}#{i}"`, and a channel's key is `app_id`, a zero byte, then the
//! channel name. The owner is the node of the first point at or after the key, wrapping.

use std::io::Write;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Points per node. 256 keeps the busiest of 100 nodes within ~1.15× of the mean load.
pub const VNODES: usize = 256;

// The ring's promises, checked by this module's tests and by `relaymesh-sim ring`'s
// tests, which share these numbers so the two cannot drift apart.

/// The busiest of 100 nodes holds at most this multiple of the mean share of the key space
/// ([`Ring::shares`], exact). A node's share is the sum of its [`VNODES`] arcs, which
/// spreads by about 1/√256 ≈ 6 %; the busiest of 100 sits some 2.5 spreads above.
pub const SHARE_OVER_MEAN_MAX: f64 = 1.15;
/// The busiest of 100 nodes holds at most this multiple of the mean count of 1,000,000
/// channels: the exact imbalance plus the noise of counting (about 1 %).
pub const COUNT_OVER_MEAN_MAX: f64 = 1.2;
/// When one of 10 nodes leaves or an 11th joins, the share of channels that change owner
/// is within this fraction of the ideal (1/N on a leave, 1/(N+1) on a join): it is the
/// leaver's or the joiner's own share, which spreads like [`SHARE_OVER_MEAN_MAX`] says.
pub const MOVED_RELATIVE_ERROR_MAX: f64 = 0.3;

/// An immutable ring built from one membership view.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (point hash, index into `nodes`), sorted.
    points: Vec<(u64, u32)>,
    /// Node ids, sorted and de-duplicated.
    nodes: Vec<String>,
}

/// The ring position of a channel.
pub fn channel_key(app_id: &str, channel: &str) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(app_id.as_bytes());
    hasher.update(&[0]);
    hasher.update(channel.as_bytes());
    hasher.digest()
}

impl Ring {
    pub fn new<'a>(node_ids: impl IntoIterator<Item = &'a str>) -> Ring {
        let mut nodes: Vec<String> = node_ids.into_iter().map(str::to_owned).collect();
        nodes.sort();
        nodes.dedup();
        let mut points = Vec::with_capacity(nodes.len() * VNODES);
        // One buffer for every "{node_id}#{i}": no allocation per point.
        let mut label = Vec::new();
        for (index, node) in nodes.iter().enumerate() {
            for i in 0..VNODES {
                label.clear();
                // Writing to a Vec cannot fail.
                let _ = write!(label, "{node}#{i}");
                points.push((xxh3_64(&label), index as u32));
            }
        }
        // Ties (astronomically rare) resolve by node order, the same everywhere.
        points.sort_unstable();
        Ring { points, nodes }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The owner of `key` (see [`channel_key`]); `None` on an empty ring.
    pub fn owner_of_key(&self, key: u64) -> Option<&str> {
        if self.points.is_empty() {
            return None;
        }
        let at = self.points.partition_point(|(point, _)| *point < key);
        let (_, node) = self.points[at % self.points.len()];
        Some(&self.nodes[node as usize])
    }

    /// Each node's share of the key space (in [`Ring::nodes`] order): the exact fraction of
    /// channels it owns as their number grows. A key belongs to the first point at or after
    /// it, so each point owns the arc from the previous point (exclusive) to itself.
    pub fn shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.nodes.len()];
        let Some(&(last, _)) = self.points.last() else {
            return shares;
        };
        let mut previous = last;
        for &(point, node) in &self.points {
            let arc = point.wrapping_sub(previous);
            shares[node as usize] += arc as f64 / 2f64.powi(64);
            previous = point;
        }
        if self.nodes.len() == 1 {
            shares[0] = 1.0;
        }
        shares
    }

    pub fn owner(&self, app_id: &str, channel: &str) -> Option<&str> {
        self.owner_of_key(channel_key(app_id, channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ring_of(n: usize) -> Ring {
        let ids: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
        Ring::new(ids.iter().map(String::as_str))
    }

    #[test]
    fn hash_is_stable_across_processes() {
        // Fixed values: if these change, nodes of different builds disagree on owners.
        assert_eq!(channel_key("app-id", "news"), 0x0b58_3dac_a969_238e);
        assert_eq!(xxh3_64(b"node-0#0"), 0x83a4_7bc9_4be7_b766);
        assert_ne!(channel_key("a", "bc"), channel_key("ab", "c"));
    }

    #[test]
    fn same_view_same_owner_whatever_the_order() {
        let a = Ring::new(["x", "y", "z"]);
        let b = Ring::new(["z", "x", "y", "x"]);
        for i in 0..1000 {
            let channel = format!("ch-{i}");
            assert_eq!(a.owner("app", &channel), b.owner("app", &channel));
        }
        assert_eq!(Ring::new([]).owner("app", "c"), None);
        assert_eq!(Ring::new(["only"]).owner("app", "c"), Some("only"));
    }

    #[test]
    fn balance_of_100_nodes() {
        let ring = ring_of(100);
        let channels = 1_000_000;
        let mut load: HashMap<&str, usize> = HashMap::new();
        for i in 0..channels {
            *load
                .entry(ring.owner("app", &format!("channel-{i}")).unwrap())
                .or_default() += 1;
        }
        let max = *load.values().max().unwrap() as f64;
        let mean = channels as f64 / 100.0;
        assert!(
            max / mean <= COUNT_OVER_MEAN_MAX,
            "busiest node holds {:.3}× the mean",
            max / mean
        );
    }

    #[test]
    fn shares_cover_the_key_space() {
        let ring = ring_of(100);
        let shares = ring.shares();
        let total: f64 = shares.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let max = shares.iter().cloned().fold(0.0, f64::max);
        // The exact imbalance; the 1M-channel count above adds sampling noise to it.
        assert!(
            max * 100.0 <= SHARE_OVER_MEAN_MAX,
            "busiest share {:.4}× the mean",
            max * 100.0
        );
        assert_eq!(Ring::new(["solo"]).shares(), vec![1.0]);
    }

    /// Share of 50,000 channels whose owner differs between `before` and `after`;
    /// `check(old, new)` runs on every channel that moved.
    fn moved_share(before: &Ring, after: &Ring, check: impl Fn(&str, &str)) -> f64 {
        let mut moved = 0;
        for i in 0..50_000 {
            let channel = format!("c{i}");
            let (b, a) = (
                before.owner("app", &channel).unwrap(),
                after.owner("app", &channel).unwrap(),
            );
            if b != a {
                check(b, a);
                moved += 1;
            }
        }
        moved as f64 / 50_000.0
    }

    #[test]
    fn adding_a_node_moves_only_channels_to_it() {
        let share = moved_share(&ring_of(10), &ring_of(11), |_, new| {
            assert_eq!(new, "node-10", "a channel moved between two old nodes")
        });
        let ideal = 1.0 / 11.0;
        assert!(
            (share - ideal).abs() <= MOVED_RELATIVE_ERROR_MAX * ideal,
            "moved {share:.3} of channels, expected ~1/11"
        );
    }

    #[test]
    fn removing_a_node_moves_only_its_channels() {
        let ids: Vec<String> = (0..10)
            .filter(|i| *i != 3)
            .map(|i| format!("node-{i}"))
            .collect();
        let after = Ring::new(ids.iter().map(String::as_str));
        let share = moved_share(&ring_of(10), &after, |old, _| {
            assert_eq!(old, "node-3", "a channel of a surviving node moved")
        });
        let ideal = 1.0 / 10.0;
        assert!(
            (share - ideal).abs() <= MOVED_RELATIVE_ERROR_MAX * ideal,
            "moved {share:.3} of channels, expected ~1/10"
        );
    }
}
