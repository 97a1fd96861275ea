//! The owners' webhooks, as raised (before batching), checked against who is subscribed
//! when each is raised: no channel_vacated and no member_removed while someone (that
//! user) is subscribed on a node of the cluster, occupied/vacated and member_added/
//! member_removed alternate, and at rest they add up to who is there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use relaymesh_node::webhooks::WebhookEvent;

use super::clients::{Client, Population};
use super::world::World;

/// A known limit: a member event the previous owner raised just before a channel moved
/// can reach a node after it resynced the channel (its hub drops it as late news, and its
/// part says what its subscribers were told before it). The new owner then corrects them
/// and raises the webhook again. Such a repeat, by another node within this long of the
/// first, is counted apart instead of failing the run.
const LATE_NEWS: Duration = Duration::from_secs(2);

/// What the webhooks said so far.
#[derive(Default)]
pub struct WebhookCheck {
    occupied: BTreeSet<String>,
    /// (channel, user).
    present: BTreeSet<(String, String)>,
    /// Channels whose owner was killed or dropped its state (fenced): what it alone knew
    /// (an occupancy whose every subscriber was on it) is gone with it, so their
    /// occupancy is only checked at rest, where someone is subscribed.
    orphaned: BTreeSet<String>,
    /// Who raised the last member event of each (channel, user), and when.
    last_member_event: BTreeMap<(String, String), (usize, Duration)>,
    /// How many were checked (a run that raised none checked nothing).
    pub checked: usize,
    /// Member events a new owner raised again for what its predecessor had just raised
    /// (see [`LATE_NEWS`]).
    pub repeated: usize,
    pub violations: Vec<String>,
}

/// The clients subscribed to `channel` on a node of the cluster, now, whose subscription
/// succeeded before `before` (what one step raised is checked at its end: a subscription
/// that succeeded in it may come after the event).
pub fn subscribed<'a>(
    world: &World,
    people: &'a Population,
    channel: &str,
    before: Duration,
) -> Vec<&'a Client> {
    people
        .clients
        .iter()
        .filter(|c| c.connected && world.nodes[c.node].alive && world.in_cluster(c.node))
        .filter(|c| {
            c.channels
                .get(channel)
                .and_then(|s| s.succeeded_at)
                .is_some_and(|at| at < before)
        })
        .collect()
}

impl WebhookCheck {
    /// Takes what every node raised since the last call and checks it against now.
    pub fn observe(world: &mut World, people: &Population) {
        let mut raised = Vec::new();
        for (index, node) in world.nodes.iter().enumerate() {
            raised.extend(node.webhooks.take().into_iter().map(|(_, e)| (index, e)));
        }
        let mut check = std::mem::take(&mut world.webhook_check);
        for (index, event) in raised {
            world.log(format!("n{index} raises {event:?}"));
            check.checked += 1;
            check.check(world, people, index, event);
        }
        world.webhook_check = check;
    }

    /// The owners of `channels` lost their state.
    pub fn orphan(&mut self, channels: impl IntoIterator<Item = String>) {
        self.orphaned.extend(channels);
    }

    /// Records a member event of `node`; whether it may repeat another node's (see
    /// [`LATE_NEWS`]).
    fn is_repeat(&mut self, key: &(String, String), node: usize, now: Duration) -> bool {
        let last = self.last_member_event.insert(key.clone(), (node, now));
        last.is_some_and(|(by, at)| by != node && now.saturating_sub(at) <= LATE_NEWS)
    }

    fn check(&mut self, world: &World, people: &Population, node: usize, event: WebhookEvent) {
        let mut problems = Vec::new();
        let mut fail = |what: String| problems.push(what);
        match event {
            WebhookEvent::ChannelOccupied { channel } => {
                let channel = channel.to_string();
                if !self.occupied.insert(channel.clone()) && !self.orphaned.contains(&channel) {
                    fail(format!("channel_occupied for {channel}, already occupied"));
                }
            }
            WebhookEvent::ChannelVacated { channel } => {
                let channel = channel.to_string();
                let there = subscribed(world, people, &channel, world.now);
                if let Some(c) = there.first() {
                    fail(format!(
                        "channel_vacated for {channel} while {} on n{} is subscribed",
                        c.user, c.node
                    ));
                }
                if !self.occupied.remove(&channel) && !self.orphaned.contains(&channel) {
                    fail(format!("channel_vacated for {channel}, not occupied"));
                }
            }
            WebhookEvent::MemberAdded { channel, user_id } => {
                let key = (channel.to_string(), user_id.to_string());
                let repeat = self.is_repeat(&key, node, world.now);
                if !self.present.insert(key) && !self.orphaned.contains(&*channel) {
                    if repeat {
                        self.repeated += 1;
                    } else {
                        fail(format!(
                            "member_added for {user_id} on {channel}, already there"
                        ));
                    }
                }
            }
            WebhookEvent::MemberRemoved { channel, user_id } => {
                let there = subscribed(world, people, &channel, world.now);
                if let Some(c) = there.iter().find(|c| *c.user == *user_id) {
                    fail(format!(
                        "member_removed for {user_id} on {channel} while it is subscribed on n{}",
                        c.node
                    ));
                }
                let key = (channel.to_string(), user_id.to_string());
                let repeat = self.is_repeat(&key, node, world.now);
                if !self.present.remove(&key) && !self.orphaned.contains(&*channel) {
                    if repeat {
                        self.repeated += 1;
                    } else {
                        fail(format!(
                            "member_removed for {user_id} on {channel}, not there"
                        ));
                    }
                }
            }
            _ => {}
        }
        let at = world.now.as_millis();
        let found = problems.into_iter().map(|p| format!("{at}ms n{node}: {p}"));
        self.violations.extend(found);
    }

    /// At rest, the webhooks add up to who is subscribed on `channels` (on orphaned
    /// channels only where someone is, and only what is missing).
    pub fn at_rest(&self, world: &World, people: &Population, channels: &[&str]) -> Vec<String> {
        let mut found = self.violations.clone();
        for channel in channels {
            let there = subscribed(world, people, channel, Duration::MAX);
            let users: BTreeSet<String> = there.iter().map(|c| c.user.clone()).collect();
            let told: BTreeSet<String> = self
                .present
                .iter()
                .filter(|(c, _)| c == channel)
                .map(|(_, u)| u.clone())
                .collect();
            let occupied = self.occupied.contains(*channel);
            let orphaned = self.orphaned.contains(*channel);
            if orphaned && users.is_empty() {
                continue;
            }
            if occupied == there.is_empty() {
                found.push(format!(
                    "webhooks say {channel} is occupied: {occupied}; subscribed: {}",
                    there.len()
                ));
            }
            // An owner that lost its state may have announced a user nobody else heard of:
            // on an orphaned channel only a missing member_added is a failure.
            let wrong = if orphaned {
                !told.is_superset(&users)
            } else {
                told != users
            };
            if channel.starts_with("presence-") && wrong {
                found.push(format!(
                    "webhooks say {told:?} are on {channel}; subscribed are {users:?}"
                ));
            }
        }
        found
    }
}
