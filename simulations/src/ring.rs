//! `relaymesh-sim ring`: how evenly the ownership ring spreads channels, and how many move
//! when one node joins or leaves, for cluster and channel counts far past this machine.
//!
//! Up to `--sample` channels every channel is named and counted. Beyond it, movement is
//! measured on a uniform sample of `--sample` channel keys (a channel's position is a
//! hash, so a sample of keys is a sample of channels), and each node's channel count is
//! drawn from the binomial distribution of that many uniform channels over its exact share
//! of the key space, so the balance columns describe the real channel count, not the
//! sample's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relaymesh_proto::ring::{channel_key, Ring, MOVED_RELATIVE_ERROR_MAX};
use serde_json::{json, Value};

use crate::plot::{Cdf, CdfChart, Histogram, Legend, LineChart, Style};

#[derive(clap::Args)]
pub struct Args {
    /// Cluster sizes: counts and ranges, comma separated. A range `A..B` runs A, the
    /// 1-2-5 steps between (10..1000: 10, 20, 50, 100, 200, 500, 1000), and B.
    #[arg(long, default_value = "10,100,1000,10000", value_parser = parse_counts)]
    nodes: Counts,
    /// Channel counts, as `--nodes` (e.g. 1e6..1e8: 1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8).
    #[arg(long, default_value = "1e6,1e8", value_parser = parse_counts)]
    channels: Counts,
    /// Most channel keys examined per case; larger counts are sampled.
    #[arg(long, default_value_t = 2_000_000)]
    sample: u64,
    /// Seed of the sample, of the node that leaves and of the drawn counts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the figures as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write ring.json and the charts (PNG and SVG) into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Counts from `--nodes` or `--channels`: ascending, without repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts(pub Vec<u64>);

fn parse_count(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| *v >= 1.0 && *v <= 1e12)
        .map(|v| v as u64)
        .ok_or_else(|| format!("{text:?} is not a count (1 to 1e12)"))
}

/// `10,100..1000`: the counts and ranges of a comma list (see [`steps`]).
pub fn parse_counts(text: &str) -> Result<Counts, String> {
    let mut counts = Vec::new();
    for item in text.split(',') {
        match item.split_once("..") {
            Some((low, high)) => {
                let (low, high) = (parse_count(low)?, parse_count(high)?);
                if low > high {
                    return Err(format!("{item:?}: the range runs backwards"));
                }
                counts.extend(steps(low, high));
            }
            None => counts.push(parse_count(item)?),
        }
    }
    counts.sort_unstable();
    counts.dedup();
    Ok(Counts(counts))
}

/// `low`, every 1×, 2× and 5× a power of ten strictly between, and `high`: evenly spaced on
/// a log axis, and round numbers a reader can compare.
pub fn steps(low: u64, high: u64) -> Vec<u64> {
    let mut out = vec![low];
    let mut decade = 1u64;
    while decade.saturating_mul(10) <= low {
        decade *= 10;
    }
    // A decade past `high` ends the walk; u64 holds every decade up to 1e19.
    while decade <= high {
        for step in [1, 2, 5] {
            let value = decade.saturating_mul(step);
            if value > low && value < high {
                out.push(value);
            }
        }
        match decade.checked_mul(10) {
            Some(next) => decade = next,
            None => break,
        }
    }
    if high != low {
        out.push(high);
    }
    out
}

/// The figures of one (nodes, channels) case.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub nodes: usize,
    pub channels: u64,
    /// Channel keys examined for the movement (and counted for the balance when not sampled).
    pub examined: u64,
    /// More channels than `--sample`: keys sampled, per-node counts drawn.
    pub sampled: bool,
    /// Busiest node's exact share of the key space over the mean (no sampling).
    pub max_share_over_mean: f64,
    /// Idlest node's exact share over the mean.
    pub min_share_over_mean: f64,
    /// Busiest node's channel count over the mean count.
    pub max_over_mean: f64,
    pub min_over_mean: f64,
    /// Share of channels that changed owner when one node left; ideal 1/N.
    pub moved_on_leave: f64,
    /// The same, exact: the leaver's share of the key space.
    pub moved_on_leave_exact: f64,
    /// Share of channels that changed owner when one node joined; ideal 1/(N+1).
    pub moved_on_join: f64,
    /// The same, exact: the joiner's share of the key space after the join.
    pub moved_on_join_exact: f64,
    /// Channels that moved between two nodes that both stayed (must be 0).
    pub moved_elsewhere: u64,
}

/// One cluster size: its ring, the ring after one node left and after one joined.
struct Cluster {
    nodes: usize,
    ring: Ring,
    without: Ring,
    with: Ring,
    leaver: String,
    joiner: String,
    /// Each node's exact share, in `ring.nodes()` order.
    shares: Vec<f64>,
    moved_on_leave_exact: f64,
    moved_on_join_exact: f64,
    /// Continues from the leaver's draw: the sampled keys.
    rng: StdRng,
}

/// What one pass over channel keys saw.
struct Pass {
    examined: u64,
    load: HashMap<String, u64>,
    moved_on_leave: u64,
    moved_on_join: u64,
    moved_elsewhere: u64,
}

impl Cluster {
    fn new(nodes: usize, seed: u64) -> Cluster {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes_in_view: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
        let ring = Ring::new(nodes_in_view.iter().map(String::as_str));
        let leaver = nodes_in_view[rng.random_range(0..nodes)].clone();
        let without = Ring::new(
            nodes_in_view
                .iter()
                .filter(|m| **m != leaver)
                .map(String::as_str),
        );
        let joiner = format!("node-{nodes}");
        let with = Ring::new(
            nodes_in_view
                .iter()
                .map(String::as_str)
                .chain([joiner.as_str()]),
        );
        let shares = ring.shares();
        let share_of = |ring: &Ring, shares: &[f64], node: &str| {
            let at = ring.nodes().iter().position(|n| n == node);
            at.map_or(0.0, |at| shares[at])
        };
        let moved_on_leave_exact = share_of(&ring, &shares, &leaver);
        let moved_on_join_exact = share_of(&with, &with.shares(), &joiner);
        Cluster {
            nodes,
            ring,
            without,
            with,
            leaver,
            joiner,
            shares,
            moved_on_leave_exact,
            moved_on_join_exact,
            rng,
        }
    }

    fn pass(&self, keys: impl Iterator<Item = u64>) -> Pass {
        let mut pass = Pass {
            examined: 0,
            load: HashMap::new(),
            moved_on_leave: 0,
            moved_on_join: 0,
            moved_elsewhere: 0,
        };
        let mut load: HashMap<&str, u64> = HashMap::new();
        for key in keys {
            pass.examined += 1;
            let owner = self.ring.owner_of_key(key).unwrap_or_default();
            *load.entry(owner).or_default() += 1;
            let after_leave = self.without.owner_of_key(key).unwrap_or_default();
            if after_leave != owner {
                pass.moved_on_leave += 1;
                pass.moved_elsewhere += u64::from(owner != self.leaver);
            }
            let after_join = self.with.owner_of_key(key).unwrap_or_default();
            if after_join != owner {
                pass.moved_on_join += 1;
                pass.moved_elsewhere += u64::from(after_join != self.joiner);
            }
        }
        pass.load = load.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        pass
    }

    /// Every channel named and counted.
    fn counted(&self, channels: u64) -> Pass {
        self.pass((0..channels).map(|i| channel_key("app", &format!("channel-{i}"))))
    }

    /// `sample` uniform keys.
    fn sampled(&mut self, sample: u64) -> Pass {
        let keys: Vec<u64> = (0..sample).map(|_| self.rng.random::<u64>()).collect();
        self.pass(keys.into_iter())
    }

    fn figures(&self, channels: u64, pass: &Pass, loads: &[u64], sampled: bool) -> Figures {
        let nodes = self.nodes as f64;
        let mean = channels as f64 / nodes;
        let examined = pass.examined.max(1) as f64;
        // Nodes that own nothing count as zero.
        let min = if loads.len() < self.nodes {
            0
        } else {
            loads.iter().copied().min().unwrap_or(0)
        };
        let max = loads.iter().copied().max().unwrap_or(0);
        Figures {
            nodes: self.nodes,
            channels,
            examined: pass.examined,
            sampled,
            max_share_over_mean: self.shares.iter().copied().fold(0.0, f64::max) * nodes,
            min_share_over_mean: self.shares.iter().copied().fold(1.0, f64::min) * nodes,
            max_over_mean: max as f64 / mean,
            min_over_mean: min as f64 / mean,
            moved_on_leave: pass.moved_on_leave as f64 / examined,
            moved_on_leave_exact: self.moved_on_leave_exact,
            moved_on_join: pass.moved_on_join as f64 / examined,
            moved_on_join_exact: self.moved_on_join_exact,
            moved_elsewhere: pass.moved_elsewhere,
        }
    }
}

/// A count of `trials` uniform channels landing on a share `p` of the key space: binomial,
/// drawn as Poisson when the mean is small and as a normal beyond (both within a fraction of
/// a percent of the binomial there).
fn draw_count(rng: &mut StdRng, trials: u64, p: f64) -> u64 {
    let mean = trials as f64 * p;
    if mean < 30.0 {
        // Knuth: multiply uniforms until the product falls below e^-mean.
        let limit = (-mean).exp();
        let (mut count, mut product) = (0u64, rng.random::<f64>());
        while product > limit {
            count += 1;
            product *= rng.random::<f64>();
        }
        return count;
    }
    // Box-Muller; 1 - u keeps the logarithm finite.
    let (u, v) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
    let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
    (mean + z * (mean * (1.0 - p)).sqrt()).round().max(0.0) as u64
}

/// Every case of one cluster size, one figure per channel count (ascending), and each
/// node's exact share over the mean.
fn simulate_cluster(
    nodes: usize,
    channels: &[u64],
    sample: u64,
    seed: u64,
) -> (Vec<Figures>, Vec<f64>) {
    let mut cluster = Cluster::new(nodes, seed);
    // All sampled cases share one sample: movement does not depend on the channel count.
    let sampled_pass = channels
        .iter()
        .any(|c| *c > sample)
        .then(|| cluster.sampled(sample));
    let mut out = Vec::new();
    for &count in channels {
        let figures = match &sampled_pass {
            Some(pass) if count > sample => {
                let mut rng = StdRng::seed_from_u64(seed ^ count);
                let loads: Vec<u64> = cluster
                    .shares
                    .iter()
                    .map(|p| draw_count(&mut rng, count, *p))
                    .collect();
                cluster.figures(count, pass, &loads, true)
            }
            _ => {
                let pass = cluster.counted(count);
                let loads: Vec<u64> = pass.load.values().copied().collect();
                cluster.figures(count, &pass, &loads, false)
            }
        };
        out.push(figures);
    }
    let mean = 1.0 / nodes as f64;
    (out, cluster.shares.iter().map(|s| s / mean).collect())
}

/// One case on its own (see [`simulate_cluster`]).
#[cfg(test)]
fn simulate(nodes: usize, channels: u64, sample: u64, seed: u64) -> Figures {
    let (mut all, _) = simulate_cluster(nodes, &[channels], sample, seed);
    // One channel count in, one figure out.
    all.remove(0)
}

fn to_json(f: &Figures) -> Value {
    json!({
        "nodes": f.nodes, "channels": f.channels, "examined": f.examined, "sampled": f.sampled,
        "max_share_over_mean": f.max_share_over_mean,
        "min_share_over_mean": f.min_share_over_mean,
        "max_over_mean": f.max_over_mean, "min_over_mean": f.min_over_mean,
        "moved_on_leave": f.moved_on_leave, "moved_on_leave_exact": f.moved_on_leave_exact,
        "moved_on_join": f.moved_on_join, "moved_on_join_exact": f.moved_on_join_exact,
        "moved_between_stayers": f.moved_elsewhere,
    })
}

pub fn run(args: Args) -> Result<()> {
    let (node_counts, channel_counts) = (&args.nodes.0, &args.channels.0);
    if node_counts.iter().any(|n| *n < 2) {
        bail!("--nodes needs at least 2 nodes per case");
    }
    if args.sample == 0 {
        bail!("--sample must be at least 1");
    }
    println!("| nodes | channels | examined | busiest share / mean (exact) | busiest / mean (channels) | idlest / mean (channels) | moved on leave (exact; ideal 1/N) | moved on join (exact; ideal 1/(N+1)) | moved between stayers |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut all = Vec::new();
    let mut largest_shares = Vec::new();
    let mut share_cdfs = Vec::new();
    for &nodes in node_counts {
        let nodes = usize::try_from(nodes).context("--nodes: too many nodes")?;
        let (figures, shares) = simulate_cluster(nodes, channel_counts, args.sample, args.seed);
        for f in figures {
            println!(
                "| {} | {} | {}{} | {:.3} | {:.3} | {:.3} | {:.5} ({:.5}; {:.5}) | {:.5} ({:.5}; {:.5}) | {} |",
                f.nodes,
                f.channels,
                f.examined,
                if f.sampled { " sampled" } else { "" },
                f.max_share_over_mean,
                f.max_over_mean,
                f.min_over_mean,
                f.moved_on_leave,
                f.moved_on_leave_exact,
                1.0 / nodes as f64,
                f.moved_on_join,
                f.moved_on_join_exact,
                1.0 / (nodes + 1) as f64,
                f.moved_elsewhere
            );
            all.push(f);
        }
        share_cdfs.push(Cdf::from_values(format!("{nodes} nodes"), &shares));
        largest_shares = shares;
    }
    let json = serde_json::to_vec_pretty(&all.iter().map(to_json).collect::<Vec<_>>())?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("ring.json");
        std::fs::write(&path, &json).with_context(|| format!("writing {}", path.display()))?;
        write_charts(dir, &all, channel_counts, largest_shares, share_cdfs)?;
        println!("\nwrote {} (ring.json and charts)", dir.display());
    }
    Ok(())
}

fn write_charts(
    dir: &Path,
    all: &[Figures],
    channel_counts: &[u64],
    largest_shares: Vec<f64>,
    share_cdfs: Vec<Cdf>,
) -> Result<()> {
    let of = |channels: u64| all.iter().filter(move |f| f.channels == channels);

    let mut balance = LineChart::new(
        "Channels per node over the mean: busiest (solid), idlest (dashed)",
        "nodes",
        "channels / mean",
    );
    // Around the data, not from zero: the spread is the picture.
    let low = all
        .iter()
        .map(|f| f.min_over_mean.min(f.min_share_over_mean));
    let high = all
        .iter()
        .map(|f| f.max_over_mean.max(f.max_share_over_mean));
    let (low, high) = (low.fold(1.0, f64::min), high.fold(1.0, f64::max));
    balance
        .log_x()
        .y_range((low - 0.05).max(0.0), high + 0.05)
        .legend(Legend::LowerLeft);
    // Busiest solid and idlest dashed, in one colour and under one legend entry.
    let mut pair =
        |name: String, colour, channels, max: fn(&Figures) -> f64, min: fn(&Figures) -> f64| {
            let (solid, dashed) = (
                Style {
                    colour,
                    dashed: false,
                },
                Style {
                    colour,
                    dashed: true,
                },
            );
            balance.series_with(name, of(channels).map(|f| (f.nodes as f64, max(f))), solid);
            balance.series_with("", of(channels).map(|f| (f.nodes as f64, min(f))), dashed);
        };
    for (colour, &channels) in channel_counts.iter().enumerate() {
        let name = format!("{} channels", crate::plot::tick(channels as f64));
        pair(
            name,
            colour,
            channels,
            |f| f.max_over_mean,
            |f| f.min_over_mean,
        );
    }
    // The limit of many channels: the exact shares (the same for every channel count).
    pair(
        "exact key-space share".into(),
        channel_counts.len(),
        channel_counts.first().copied().unwrap_or(0),
        |f| f.max_share_over_mean,
        |f| f.min_share_over_mean,
    );
    balance.write(dir, "balance")?;

    // Movement is a property of the ring, not of the channel count: the largest case's.
    let largest = channel_counts.last().copied().unwrap_or(0);
    let solid = |colour| Style {
        colour,
        dashed: false,
    };
    let dashed = |colour| Style {
        colour,
        dashed: true,
    };
    let mut movement = LineChart::new(
        "Channels moved by one leave or join",
        "nodes",
        "share moved",
    );
    movement
        .log_x()
        .log_y()
        .series_with(
            "leave",
            of(largest).map(|f| (f.nodes as f64, f.moved_on_leave)),
            solid(0),
        )
        .series_with(
            "ideal 1/N",
            of(largest).map(|f| (f.nodes as f64, 1.0 / f.nodes as f64)),
            dashed(0),
        )
        .series_with(
            "join",
            of(largest).map(|f| (f.nodes as f64, f.moved_on_join)),
            solid(1),
        )
        .series_with(
            "ideal 1/(N+1)",
            of(largest).map(|f| (f.nodes as f64, 1.0 / (f.nodes + 1) as f64)),
            dashed(1),
        )
        .write(dir, "movement")?;

    let mut ratio = LineChart::new(
        "Channels moved over the ideal share",
        "nodes",
        "moved / ideal",
    );
    ratio
        .log_x()
        .series_with(
            "leave, counted",
            of(largest).map(|f| (f.nodes as f64, f.moved_on_leave * f.nodes as f64)),
            solid(0),
        )
        .series_with(
            "leave, exact",
            of(largest).map(|f| (f.nodes as f64, f.moved_on_leave_exact * f.nodes as f64)),
            dashed(0),
        )
        .series_with(
            "join, counted",
            of(largest).map(|f| (f.nodes as f64, f.moved_on_join * (f.nodes + 1) as f64)),
            solid(1),
        )
        .series_with(
            "join, exact",
            of(largest).map(|f| (f.nodes as f64, f.moved_on_join_exact * (f.nodes + 1) as f64)),
            dashed(1),
        );
    // The band the ring's property tests allow (10 nodes), for scale.
    let nodes_span = || of(largest).map(|f| f.nodes as f64);
    let (below, above) = (
        1.0 - MOVED_RELATIVE_ERROR_MAX,
        1.0 + MOVED_RELATIVE_ERROR_MAX,
    );
    let grey = Style {
        colour: 7,
        dashed: true,
    };
    ratio
        .series_with(
            "bounds of the ring's tests",
            nodes_span().map(|n| (n, below)),
            grey,
        )
        .series_with("", nodes_span().map(|n| (n, above)), grey)
        .y_range(below - 0.1, above + 0.1)
        .legend(Legend::LowerRight)
        .write(dir, "movement-over-ideal")?;

    let nodes = largest_shares.len();
    Histogram::from_values(
        format!("Key-space share per node over the mean, {nodes} nodes"),
        "share / mean",
        "nodes",
        &largest_shares,
        40,
    )
    .write(dir, "load-histogram")?;

    let mut cdf = CdfChart::new("Key-space share per node over the mean", "share / mean");
    for one in share_cdfs {
        cdf.cdf(one);
    }
    cdf.write(dir, "share-cdf")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaymesh_proto::ring::{
        COUNT_OVER_MEAN_MAX, MOVED_RELATIVE_ERROR_MAX, SHARE_OVER_MEAN_MAX,
    };

    fn within_tolerance(moved: f64, ideal: f64) -> bool {
        (moved - ideal).abs() <= MOVED_RELATIVE_ERROR_MAX * ideal
    }

    /// The simulation agrees with the ring's own property tests (relaymesh-proto ring.rs),
    /// at their sizes and with their bounds: 100 nodes and 1,000,000 channels for the
    /// balance, 10 nodes for the movement (and 100 too), nothing moving between stayers.
    #[test]
    fn agrees_with_the_ring_properties() {
        let f = simulate(100, 1_000_000, 1_000_000, 1);
        assert!(!f.sampled);
        assert!(f.max_over_mean <= COUNT_OVER_MEAN_MAX, "{f:?}");
        assert!(f.max_share_over_mean <= SHARE_OVER_MEAN_MAX, "{f:?}");
        assert_eq!(f.moved_elsewhere, 0, "{f:?}");
        for f in [f, simulate(10, 1_000_000, 1_000_000, 1)] {
            let n = f.nodes as f64;
            assert!(within_tolerance(f.moved_on_leave, 1.0 / n), "{f:?}");
            assert!(within_tolerance(f.moved_on_join, 1.0 / (n + 1.0)), "{f:?}");
            assert!(within_tolerance(f.moved_on_leave_exact, 1.0 / n), "{f:?}");
            assert!(
                within_tolerance(f.moved_on_join_exact, 1.0 / (n + 1.0)),
                "{f:?}"
            );
            // Counting converges on the exact share (1M channels: ~0.1 % noise of 1/N).
            assert!(
                (f.moved_on_leave - f.moved_on_leave_exact).abs() < 0.1 / n,
                "{f:?}"
            );
            assert_eq!(f.moved_elsewhere, 0, "{f:?}");
        }
    }

    /// Past the sample, the figures describe the real channel count: 1e8 channels over 100
    /// nodes (1e6 each, 0.1 % noise) sit on the exact shares, and the sampled movement on
    /// the exact movement.
    #[test]
    fn sampled_cases_follow_the_exact_shares() {
        let counted = simulate(100, 1_000_000, 1_000_000, 1);
        let sampled = simulate(100, 100_000_000, 1_000_000, 1);
        assert!(
            sampled.sampled && sampled.examined == 1_000_000,
            "{sampled:?}"
        );
        let near = |a: f64, b: f64, within: f64| (a - b).abs() < within;
        let s = &sampled;
        assert!(near(s.max_over_mean, s.max_share_over_mean, 0.01), "{s:?}");
        assert!(near(s.min_over_mean, s.min_share_over_mean, 0.01), "{s:?}");
        assert!(
            near(s.max_over_mean, counted.max_over_mean, 0.05),
            "{s:?} vs {counted:?}"
        );
        assert!(
            near(s.moved_on_leave, s.moved_on_leave_exact, 0.001),
            "{s:?}"
        );
        assert_eq!(sampled.moved_elsewhere, 0);
    }

    #[test]
    fn draws_have_the_binomial_mean_and_spread() {
        let mut rng = StdRng::seed_from_u64(7);
        for (trials, p) in [(1_000u64, 0.005), (1_000_000, 0.01)] {
            let draws: Vec<f64> = (0..20_000)
                .map(|_| draw_count(&mut rng, trials, p) as f64)
                .collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
            let (m, v) = (trials as f64 * p, trials as f64 * p * (1.0 - p));
            assert!(
                (mean - m).abs() < 0.05 * m.sqrt(),
                "{trials} {p}: mean {mean} vs {m}"
            );
            assert!(
                (var / v - 1.0).abs() < 0.05,
                "{trials} {p}: variance {var} vs {v}"
            );
        }
    }

    #[test]
    fn ranges_expand_in_1_2_5_steps() {
        let counts = |text| parse_counts(text).map(|c| c.0);
        assert_eq!(
            counts("10..1000"),
            Ok(vec![10, 20, 50, 100, 200, 500, 1000])
        );
        assert_eq!(
            counts("1e6..1e8"),
            Ok(vec![
                1_000_000,
                2_000_000,
                5_000_000,
                10_000_000,
                20_000_000,
                50_000_000,
                100_000_000
            ])
        );
        assert_eq!(counts("3..300"), Ok(vec![3, 5, 10, 20, 50, 100, 200, 300]));
        assert_eq!(counts("7..7"), Ok(vec![7]));
        assert_eq!(counts("100,10..20,1e3"), Ok(vec![10, 20, 100, 1000]));
        assert!(parse_counts("20..10").is_err());
        assert!(parse_counts("ten").is_err());
        assert!(parse_counts("0..10").is_err());
    }
}
