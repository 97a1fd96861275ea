//! Latency between hosts, per pair: `tc netem` where the kernel has it (one netem band per
//! destination on the sender's egress), relays otherwise. Both delay a packet once each
//! way between two hosts and leave the calling process's own traffic (clients) alone;
//! what was used is returned so that callers say it loudly.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::netns::Net;
use super::relay::Relays;
use super::Error;

/// One-way delay and loss on a path between two hosts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub delay: Duration,
    pub loss_percent: f64,
}

/// How latency was put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No path has latency.
    None,
    /// `tc netem` on every host's egress, chosen by destination.
    Netem,
    /// Relays in the calling process (the kernel has no netem).
    Relays,
}

/// A path with latency, from one host to another (the other direction is its own path).
#[derive(Debug, Clone)]
pub struct Path {
    pub from: String,
    pub to: String,
    pub latency: Latency,
}

/// A port a host serves to other hosts: what a relay must carry.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// "udp" or "tcp".
    pub proto: &'static str,
    pub port: u16,
}

/// Puts `paths` in place: netem if every host takes it, otherwise (after undoing any
/// partial netem) one relay per path and service of its destination (`services(host)`),
/// redirected with DNAT in the source's namespace. Returns the mode and a sentence that
/// says what was done.
pub async fn apply(
    net: &Net,
    relays: &mut Relays,
    paths: &[Path],
    services: &dyn Fn(&str) -> Vec<Service>,
) -> Result<(Mode, String), Error> {
    if paths.is_empty() {
        return Ok((Mode::None, "no latency between hosts".into()));
    }
    let mut by_source: BTreeMap<&str, Vec<(std::net::Ipv4Addr, Latency)>> = BTreeMap::new();
    for path in paths {
        by_source
            .entry(&path.from)
            .or_default()
            .push((net.host(&path.to)?.ip, path.latency));
    }
    let mut netem_error = None;
    for (host, to) in &by_source {
        if let Err(e) = net.netem_to(host, to) {
            netem_error = Some(e);
            break;
        }
    }
    let Some(error) = netem_error else {
        return Ok((
            Mode::Netem,
            format!(
                "latency by tc netem on each host's egress, per destination ({} paths)",
                paths.len()
            ),
        ));
    };
    // Undo a partial set-up, then relay.
    for host in by_source.keys() {
        net.clear_netem(host);
    }
    for path in paths {
        let (from, to) = (net.host(&path.from)?, net.host(&path.to)?);
        for service in services(&path.to) {
            let target = SocketAddr::new(IpAddr::V4(to.ip), service.port);
            let (front, source) = (IpAddr::V4(to.alias), IpAddr::V4(from.alias));
            let delay = path.latency.delay;
            let relay = match service.proto {
                "udp" => {
                    let loss = path.latency.loss_percent / 100.0;
                    relays.udp(front, source, target, delay, loss).await?
                }
                _ => relays.tcp(front, source, target, delay).await?,
            };
            net.redirect(&path.from, service.proto, target, relay)?;
        }
    }
    Ok((
        Mode::Relays,
        format!(
            "NOTE: tc netem is not available here ({error}); this kernel has no netem \
             (CONFIG_NET_SCH_NETEM). Latency is simulated instead by relays in this process: \
             each of the {} host-to-host paths (mesh over UDP or TCP, control-plane gRPC) \
             goes through a relay that delays each direction by the path's latency (UDP: \
             and drops its loss share); the hosts' traffic is redirected there with DNAT. \
             Client traffic is not delayed.",
            paths.len()
        ),
    ))
}

/// Every ordered pair of `hosts` whose `latency(a, b)` is some, as paths.
pub fn paths(hosts: &[String], latency: &dyn Fn(&str, &str) -> Option<Latency>) -> Vec<Path> {
    let mut paths = Vec::new();
    for a in hosts {
        for b in hosts {
            if a == b {
                continue;
            }
            if let Some(latency) = latency(a, b) {
                paths.push(Path {
                    from: a.clone(),
                    to: b.clone(),
                    latency,
                });
            }
        }
    }
    paths
}
