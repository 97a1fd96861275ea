//! `relaymesh-sim ring`: how evenly the ownership ring spreads channels, and how many move
//! when one node joins or leaves, for cluster and channel counts far past this machine.
//! Beyond `--sample` channels the figures come from a uniform sample of channel keys
//! (a channel's position is a hash, so a sample of keys is a sample of channels).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use relaymesh_proto::ring::{channel_key, Ring};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Cluster sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    nodes: Vec<usize>,
    /// Channel counts, comma separated (e.g. 1e6, 1e8).
    #[arg(long, value_delimiter = ',', default_value = "1e6,1e8", value_parser = parse_count)]
    channels: Vec<u64>,
    /// Most channel keys examined per case; larger counts are sampled.
    #[arg(long, default_value_t = 2_000_000)]
    sample: u64,
    /// Seed of the sample and of the node that joins or leaves.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the figures as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_count(text: &str) -> Result<u64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|v| *v >= 1.0 && *v <= 1e12)
        .map(|v| v as u64)
        .ok_or_else(|| format!("{text:?} is not a count (1 to 1e12)"))
}

/// The figures of one (nodes, channels) case.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub nodes: usize,
    pub channels: u64,
    pub examined: u64,
    /// Busiest node's exact share of the key space over the mean (no sampling).
    pub max_share_over_mean: f64,
    /// Busiest node's count of the examined channels over the mean count.
    pub max_over_mean: f64,
    pub min_over_mean: f64,
    /// Share of channels that changed owner when one node left; ideal 1/N.
    pub moved_on_leave: f64,
    /// Share of channels that changed owner when one node joined; ideal 1/(N+1).
    pub moved_on_join: f64,
    /// Channels that moved between two nodes that both stayed (must be 0).
    pub moved_elsewhere: u64,
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

/// Runs one case over `examined` channel keys (sequential names up to the sample size,
/// random keys beyond it).
pub fn simulate(nodes: usize, channels: u64, sample: u64, seed: u64) -> Figures {
    let examined = channels.min(sample);
    let sampled = channels > sample;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let members = ids(nodes);
    let ring = Ring::new(members.iter().map(String::as_str));
    let leaver = members[rng.random_range(0..nodes)].clone();
    let without = Ring::new(members.iter().filter(|m| **m != leaver).map(String::as_str));
    let joiner = format!("node-{nodes}");
    let with = Ring::new(members.iter().map(String::as_str).chain([joiner.as_str()]));
    let mut load: HashMap<&str, u64> = HashMap::new();
    let (mut moved_leave, mut moved_join, mut elsewhere) = (0u64, 0u64, 0u64);
    for i in 0..examined {
        let key = if sampled {
            rng.random::<u64>()
        } else {
            channel_key("app", &format!("channel-{i}"))
        };
        let owner = ring.owner_of_key(key).unwrap_or_default();
        *load.entry(owner).or_default() += 1;
        let after_leave = without.owner_of_key(key).unwrap_or_default();
        if after_leave != owner {
            moved_leave += 1;
            elsewhere += u64::from(owner != leaver);
        }
        let after_join = with.owner_of_key(key).unwrap_or_default();
        if after_join != owner {
            moved_join += 1;
            elsewhere += u64::from(after_join != joiner);
        }
    }
    let max_share = ring.shares().into_iter().fold(0.0, f64::max);
    let mean = examined as f64 / nodes as f64;
    let max = load.values().copied().max().unwrap_or(0) as f64;
    // Nodes that own nothing count as zero.
    let min = if load.len() < nodes {
        0.0
    } else {
        load.values().copied().min().unwrap_or(0) as f64
    };
    Figures {
        nodes,
        channels,
        examined,
        max_share_over_mean: max_share * nodes as f64,
        max_over_mean: max / mean,
        min_over_mean: min / mean,
        moved_on_leave: moved_leave as f64 / examined as f64,
        moved_on_join: moved_join as f64 / examined as f64,
        moved_elsewhere: elsewhere,
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.nodes.iter().any(|n| *n < 2) {
        bail!("--nodes needs at least 2 nodes per case");
    }
    println!("| nodes | channels | examined | busiest share / mean (exact) | busiest / mean (counted) | idlest / mean (counted) | moved on leave (ideal 1/N) | moved on join (ideal 1/(N+1)) | moved between stayers |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut all = Vec::new();
    for &nodes in &args.nodes {
        for &channels in &args.channels {
            let f = simulate(nodes, channels, args.sample, args.seed);
            println!(
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.5} ({:.5}) | {:.5} ({:.5}) | {} |",
                f.nodes,
                f.channels,
                f.examined,
                f.max_share_over_mean,
                f.max_over_mean,
                f.min_over_mean,
                f.moved_on_leave,
                1.0 / nodes as f64,
                f.moved_on_join,
                1.0 / (nodes + 1) as f64,
                f.moved_elsewhere
            );
            all.push(json!({
                "nodes": f.nodes, "channels": f.channels, "examined": f.examined,
                "max_share_over_mean": f.max_share_over_mean,
                "max_over_mean": f.max_over_mean, "min_over_mean": f.min_over_mean,
                "moved_on_leave": f.moved_on_leave, "moved_on_join": f.moved_on_join,
                "moved_between_stayers": f.moved_elsewhere,
            }));
        }
    }
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&all)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulation agrees with the ring's own property tests (relaymesh-proto ring.rs):
    /// 100 nodes and 1,000,000 channels within 1.15× the mean, movement close to 1/N and
    /// nothing moving between nodes that stay.
    #[test]
    fn agrees_with_the_ring_properties() {
        let f = simulate(100, 1_000_000, 1_000_000, 1);
        assert!(f.max_over_mean <= 1.15, "{f:?}");
        assert!(f.max_share_over_mean <= 1.15, "{f:?}");
        assert_eq!(f.moved_elsewhere, 0, "{f:?}");
        assert!((f.moved_on_leave - 0.01).abs() < 0.005, "{f:?}");
        assert!((f.moved_on_join - 1.0 / 101.0).abs() < 0.005, "{f:?}");
        // Sampling gives the same picture as the full count.
        let sampled = simulate(100, 100_000_000, 1_000_000, 1);
        assert!(
            (sampled.max_over_mean - f.max_over_mean).abs() < 0.05,
            "{sampled:?} vs {f:?}"
        );
    }
}
