//! The clients of a run, in the calling process: subscribers (or presence members) spread
//! round-robin over the regions and, within a region, over its nodes; each reconnects to
//! another live node of its own region when its node goes (to any live node when its region
//! has none left), and each reconnection is a new session. One paced publisher publishes
//! through a node of the first region. The clients are the testbed's, so the delivery
//! accounting is `testbed::check`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use super::spec::Region;
use crate::testbed::clients::{lock, Client, Nodes, Publisher};
use crate::testbed::cluster::Cluster;

/// Subscriptions opened at once while the run starts.
const OPENING_MAX: usize = 32;

/// What the clients do.
#[derive(Debug, Clone)]
pub enum Scenario {
    /// `subs` subscribers of one public channel.
    Fanout { subs: usize },
    /// `channels` channels with `subs` subscribers each; events go round the channels.
    Channels { channels: usize, subs: usize },
    /// `members` members of one presence channel (each its own user); events go to it too.
    Presence { members: usize },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout { .. } => "fanout",
            Scenario::Channels { .. } => "channels",
            Scenario::Presence { .. } => "presence",
        }
    }

    /// The channels events are published to.
    pub fn channels(&self) -> Vec<String> {
        match self {
            Scenario::Fanout { .. } => vec!["cluster-fanout".into()],
            Scenario::Channels { channels, .. } => {
                (0..*channels).map(|i| format!("cluster-{i}")).collect()
            }
            Scenario::Presence { .. } => vec!["presence-cluster".into()],
        }
    }

    /// Client `i`'s channel and presence user.
    fn client(&self, i: usize) -> (String, Option<String>) {
        let channels = self.channels();
        match self {
            Scenario::Presence { .. } => (channels[0].clone(), Some(format!("u{i}"))),
            _ => (channels[i % channels.len()].clone(), None),
        }
    }

    fn count(&self) -> usize {
        match self {
            Scenario::Fanout { subs } => *subs,
            Scenario::Channels { channels, subs } => channels * subs,
            Scenario::Presence { members } => *members,
        }
    }
}

/// One client and where it lives.
pub struct Member {
    pub client: Client,
    /// Its home region (where it connected first and reconnects while it can).
    pub region: String,
    pub user: Option<String>,
}

/// The clients and the publisher of a run.
pub struct Workload {
    pub members: Vec<Member>,
    /// Clients that could not connect or subscribe at the start, with why.
    pub failed: Vec<String>,
    pub channels: Vec<String>,
    /// Per region, the nodes its clients may (re)connect to.
    lists: BTreeMap<String, Nodes>,
    regions: Vec<Region>,
    pub publisher: Option<Publisher>,
    /// Where the publisher publishes now.
    pub publishing_via: String,
}

impl Workload {
    /// Connects every client, `OPENING_MAX` at a time.
    pub async fn start(
        cluster: &Cluster,
        regions: &[Region],
        scenario: &Scenario,
    ) -> anyhow::Result<Workload> {
        let lists: BTreeMap<String, Nodes> = regions
            .iter()
            .map(|r| (r.name.clone(), Arc::new(Mutex::new(Vec::new()))))
            .collect();
        let mut workload = Workload {
            members: Vec::new(),
            failed: Vec::new(),
            channels: scenario.channels(),
            lists,
            regions: regions.to_vec(),
            publisher: None,
            publishing_via: String::new(),
        };
        let live: BTreeSet<String> = cluster.nodes.iter().cloned().collect();
        workload.follow(cluster, &live);
        let mut opening = JoinSet::new();
        let mut next = 0;
        let count = scenario.count();
        while next < count || !opening.is_empty() {
            while opening.len() < OPENING_MAX && next < count {
                let region = &regions[next % regions.len()];
                let node = region.nodes[(next / regions.len()) % region.nodes.len()].clone();
                let (channel, user) = scenario.client(next);
                let label = format!("c{next}@{node}");
                let nodes = workload.lists[&region.name].clone();
                let home = region.name.clone();
                opening.spawn(async move {
                    let started =
                        Client::start(&label, &nodes, &node, &channel, user.as_deref(), true).await;
                    (started, home, user)
                });
                next += 1;
            }
            match opening.join_next().await {
                Some(Ok((Ok(client), region, user))) => workload.members.push(Member {
                    client,
                    region,
                    user,
                }),
                Some(Ok((Err(e), _, _))) => workload.failed.push(e),
                Some(Err(e)) => workload.failed.push(format!("a client task failed: {e}")),
                None => break,
            }
        }
        anyhow::ensure!(
            !workload.members.is_empty(),
            "no client could connect and subscribe: {:?}",
            &workload.failed[..workload.failed.len().min(5)]
        );
        Ok(workload)
    }

    /// Starts publishing `rate` events per second over every channel, through the first
    /// live node of the first region.
    pub fn publish(&mut self, cluster: &Cluster, rate: f64) {
        let via = self.regions[0].nodes[0].clone();
        // One event per channel per tick.
        let interval = Duration::from_secs_f64(self.channels.len() as f64 / rate.max(0.001))
            .max(Duration::from_millis(1));
        self.publisher = Some(Publisher::start(
            &cluster.http,
            &via,
            &cluster.base(&via),
            &self.channels,
            interval,
        ));
        self.publishing_via = via;
    }

    /// Points every region's clients at its live nodes (all live nodes when it has none),
    /// and the publisher away from a node that is gone; returns the publisher's new node
    /// when it moved.
    pub fn follow(&mut self, cluster: &Cluster, live: &BTreeSet<String>) -> Option<String> {
        let all: Vec<(String, String)> = cluster
            .nodes
            .iter()
            .filter(|n| live.contains(*n))
            .map(|n| (n.clone(), cluster.ws_addr(n)))
            .collect();
        for region in &self.regions {
            let own: Vec<(String, String)> = all
                .iter()
                .filter(|(n, _)| region.nodes.contains(n))
                .cloned()
                .collect();
            if let Some(list) = self.lists.get(&region.name) {
                *lock(list) = if own.is_empty() { all.clone() } else { own };
            }
        }
        let publisher = self.publisher.as_ref()?;
        if live.contains(&self.publishing_via) {
            return None;
        }
        // The same region first, as a load balancer in front of it would choose.
        let home = &self.regions[0];
        let next = all
            .iter()
            .map(|(n, _)| n)
            .find(|n| home.nodes.contains(n))
            .or_else(|| all.first().map(|(n, _)| n))?
            .clone();
        publisher.retarget(&next, &cluster.base(&next));
        self.publishing_via = next.clone();
        Some(next)
    }

    /// Presence: whether every connected member was told exactly the connected members.
    pub fn presence_agrees(&self) -> bool {
        let connected: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.user.is_some() && m.client.connected())
            .collect();
        let users: BTreeSet<String> = connected.iter().filter_map(|m| m.user.clone()).collect();
        connected
            .iter()
            .all(|m| m.client.last().members().0 == users)
    }
}
