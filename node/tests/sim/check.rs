//! The invariants, checked on what the clients received against what really happened.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::clients::Population;
use super::world::World;

/// Every violation of the invariants, empty when the run is correct.
pub fn violations(world: &World, people: &Population) -> Vec<String> {
    let mut found = people.violations.clone();
    one_owner_per_view(world, &mut found);
    acknowledged_events_arrive_once_in_order(world, people, &mut found);
    rosters_match_who_is_there(world, people, &mut found);
    found
}

/// Never two owners numbering one channel in one view.
fn one_owner_per_view(world: &World, found: &mut Vec<String>) {
    for ((channel, version), owners) in &world.numbering.owners {
        if owners.len() > 1 {
            found.push(format!(
                "{channel} was numbered by {owners:?} in view {version}"
            ));
        }
    }
}

/// Every event acknowledged to its publisher reaches every subscriber that was subscribed
/// before it was sent and stayed (connected, on a node that stayed), exactly once and
/// after every acknowledged event published before it was sent.
fn acknowledged_events_arrive_once_in_order(
    world: &World,
    people: &Population,
    found: &mut Vec<String>,
) {
    for (index, client) in people.clients.iter().enumerate() {
        let stayed = client.connected && !client.interrupted && world.nodes[client.node].alive;
        let subscriptions = client
            .channels
            .iter()
            .map(|(c, s)| (c, s, stayed))
            .chain(client.left.iter().map(|(c, s)| (c, s, false)));
        for (channel, sub, stayed) in subscriptions {
            let mut seen = BTreeSet::new();
            for id in &sub.events {
                if !seen.insert(*id) {
                    found.push(format!("c{index} got event {id} on {channel} twice"));
                }
            }
            let Some(since) = sub.succeeded_at else {
                continue;
            };
            let position = |id: u64| sub.events.iter().position(|e| *e == id);
            for p in people.publishes.iter().filter(|p| p.channel == *channel) {
                if p.acked != Some(true) || p.sent_at <= since {
                    continue;
                }
                let lost_with_owner = world.lost_in_flight.contains(&(p.id, client.node));
                if stayed && position(p.id).is_none() && !lost_with_owner {
                    found.push(format!(
                        "c{index} on n{} never got acknowledged event {} on {channel} (sent at {:?}, subscribed at {since:?})",
                        client.node, p.id, p.sent_at
                    ));
                }
                // Causal order: an event acknowledged before `p` was sent comes first.
                let earlier = people.publishes.iter().filter(|e| {
                    e.channel == *channel
                        && e.acked == Some(true)
                        && e.acked_at.is_some_and(|at| at < p.sent_at)
                });
                for e in earlier {
                    if let (Some(a), Some(b)) = (position(e.id), position(p.id)) {
                        if a > b {
                            found.push(format!(
                                "c{index} got event {} before {} on {channel}",
                                p.id, e.id
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// At rest, every presence subscriber's roster is the set of users with a subscribed
/// connection on a node that stayed.
fn rosters_match_who_is_there(world: &World, people: &Population, found: &mut Vec<String>) {
    let present = |channel: &str| -> BTreeSet<String> {
        people
            .clients
            .iter()
            .filter(|c| c.connected && world.nodes[c.node].alive)
            .filter(|c| {
                c.channels
                    .get(channel)
                    .is_some_and(|s| s.succeeded_at.is_some())
            })
            .map(|c| c.user.clone())
            .collect()
    };
    for (index, client) in people.clients.iter().enumerate() {
        if !client.connected || !world.nodes[client.node].alive {
            continue;
        }
        for (channel, sub) in &client.channels {
            if !channel.starts_with("presence-") || sub.succeeded_at.is_none() {
                continue;
            }
            let truth = present(channel);
            if sub.roster != truth {
                found.push(format!(
                    "c{index} on n{} sees {:?} on {channel}, present are {truth:?}",
                    client.node, sub.roster
                ));
            }
        }
    }
}

/// What a channel's owner says at rest.
pub struct Owned {
    pub sockets: u32,
    pub users: BTreeSet<String>,
}

/// At rest, every channel's owner has exactly the sockets subscribed on nodes in the
/// cluster (no ghost left by a lost leave, no subscriber it forgot, so no
/// channel_vacated under anyone's feet), and on presence channels exactly their users.
pub fn owners_know_who_is_there(
    world: &World,
    people: &Population,
    owners: &BTreeMap<String, Result<Owned, String>>,
) -> Vec<String> {
    let mut found = Vec::new();
    for (channel, owned) in owners {
        let subscribed = super::webhooks::subscribed(world, people, channel, Duration::MAX);
        let users: BTreeSet<String> = subscribed.iter().map(|c| c.user.clone()).collect();
        match owned {
            Err(e) => found.push(format!("the owner of {channel} did not answer: {e}")),
            Ok(owned) => {
                if owned.sockets as usize != subscribed.len() {
                    found.push(format!(
                        "the owner of {channel} counts {} sockets, {} are subscribed",
                        owned.sockets,
                        subscribed.len()
                    ));
                }
                if channel.starts_with("presence-") && owned.users != users {
                    found.push(format!(
                        "the owner of {channel} lists {:?}, present are {users:?}",
                        owned.users
                    ));
                }
            }
        }
    }
    found
}
