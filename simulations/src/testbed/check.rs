//! What every fault test checks, and how it reports: figures are printed as they are
//! measured; violations are collected so that a test reports everything it saw (not only
//! the first failure) and fails at the end with all of them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::clients::{Client, Publish};

/// Violations and figures of one test (or one run of it).
pub struct Findings {
    name: String,
    pub violations: Vec<String>,
}

impl Findings {
    pub fn new(name: &str) -> Findings {
        Findings {
            name: name.to_owned(),
            violations: Vec::new(),
        }
    }

    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    pub fn fail(&mut self, what: String) {
        eprintln!("[faults] {}: VIOLATION: {what}", self.name);
        self.violations.push(what);
    }

    /// Prints a measured figure.
    pub fn figure(&self, what: &str, value: impl std::fmt::Display) {
        eprintln!("[faults] {}: {what} = {value}", self.name);
    }

    pub fn note(&self, what: &str) {
        eprintln!("[faults] {}: {what}", self.name);
    }

    /// Records how long a wait took (`took`, `None` after `timeout`) as `figure`, and
    /// `violation` if what it waited for never came.
    pub fn waited(
        &mut self,
        figure: &str,
        took: Option<Duration>,
        timeout: Duration,
        violation: &str,
    ) {
        self.figure(
            figure,
            took.map_or(format!("never ({} s)", timeout.as_secs()), |d| {
                ms(d).to_string()
            }),
        );
        self.check(took.is_some(), || violation.to_owned());
    }

    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics with every violation.
    pub fn finish(self) {
        if !self.violations.is_empty() {
            panic!(
                "{}: {} violation(s):\n  - {}",
                self.name,
                self.violations.len(),
                self.violations.join("\n  - ")
            );
        }
    }
}

pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Milliseconds from `t0` to `t` (negative when before).
pub fn rel(t0: Instant, t: Instant) -> i128 {
    if t >= t0 {
        t.duration_since(t0).as_millis() as i128
    } else {
        -(t0.duration_since(t).as_millis() as i128)
    }
}

/// An acknowledged event a connected subscriber did not receive.
pub struct Lost {
    pub client: String,
    pub session: usize,
    pub node: String,
    pub publish: Publish,
    /// The newest event of the channel this connection did receive: when it is newer than
    /// the lost one, the lost one is not merely late.
    pub newest_received: Option<u64>,
}

/// The outcome of every publish against what each subscriber received.
#[derive(Default)]
pub struct Delivery {
    pub published: usize,
    pub acked: usize,
    /// Answers other than 200, by status ("503", "504", …, or "error").
    pub refused: BTreeMap<String, usize>,
    /// Events acknowledged with 200 that a subscriber connected and subscribed at the time
    /// never received: (client, session, node, publish).
    pub lost: Vec<Lost>,
    /// (Session, event) pairs in a session's window: each is received or lost.
    pub expected: usize,
    /// Of `expected`, those the session received.
    pub received: usize,
    pub duplicates: Vec<(String, usize, u64)>,
    /// Events received with a smaller sequence number than the one before (same channel,
    /// same session). Publishes overlap in time, so this is only a figure.
    pub reordered: usize,
    /// Events refused (503/504) that some subscriber received anyway (allowed).
    pub refused_but_delivered: usize,
    /// Subscriber sessions whose window was checked.
    pub sessions: usize,
    /// Median and maximum time to a 200.
    pub ack_time: (Duration, Duration),
    /// The longest time from a 200 to the event's arrival at a subscriber.
    pub late: Duration,
}

impl Delivery {
    /// Checks `clients` against the publishes to their channels. A session is expected to receive every event of
    /// its channel acknowledged with 200 that was published after its subscription
    /// succeeded and acknowledged before the session closed, minus `margin`.
    pub fn of(pubs: &[Publish], clients: &[&Client], margin: Duration) -> Delivery {
        let pubs: Vec<&Publish> = pubs
            .iter()
            .filter(|p| clients.iter().any(|c| c.channel == p.channel))
            .collect();
        let mut d = Delivery {
            published: pubs.len(),
            acked: pubs.iter().filter(|p| p.ok()).count(),
            ..Delivery::default()
        };
        let ack_times: Vec<Duration> = pubs
            .iter()
            .filter(|p| p.ok())
            .filter_map(|p| Some(p.done?.duration_since(p.sent)))
            .collect();
        d.ack_time = median_max(&ack_times);
        for p in pubs.iter().filter(|p| !p.ok()) {
            let key = match &p.outcome {
                Some(Ok(status)) => status.to_string(),
                Some(Err(_)) => "error".to_owned(),
                None => "unanswered".to_owned(),
            };
            *d.refused.entry(key).or_default() += 1;
        }
        let by_seq: HashMap<u64, &Publish> = pubs.iter().map(|p| (p.seq, *p)).collect();
        let mut delivered_anywhere = std::collections::HashSet::new();
        for client in clients {
            for (i, session) in client.sessions().iter().enumerate() {
                d.sessions += 1;
                let mut counts: HashMap<u64, usize> = HashMap::new();
                let mut previous = 0;
                for s in &session.seen {
                    if let super::clients::Seen::Tick(seq, at) = s {
                        if let Some(done) = by_seq.get(seq).filter(|p| p.ok()).and_then(|p| p.done)
                        {
                            d.late = d.late.max(at.saturating_duration_since(done));
                        }
                    }
                }
                for seq in session.ticks() {
                    *counts.entry(seq).or_default() += 1;
                    delivered_anywhere.insert(seq);
                    if seq < previous {
                        d.reordered += 1;
                    }
                    previous = seq;
                }
                for (seq, n) in &counts {
                    if *n > 1 {
                        d.duplicates.push((client.label.clone(), i, *seq));
                    }
                }
                let end = session
                    .closed
                    .map(|(_, at)| at.checked_sub(margin).unwrap_or(at));
                for p in &pubs {
                    let in_window = p.channel == client.channel
                        && p.ok()
                        && p.sent >= session.subscribed_at
                        && match (end, p.done) {
                            (Some(end), Some(done)) => done <= end,
                            _ => true,
                        };
                    if in_window {
                        d.expected += 1;
                        d.received += usize::from(counts.contains_key(&p.seq));
                    }
                    if in_window && !counts.contains_key(&p.seq) {
                        d.lost.push(Lost {
                            client: client.label.clone(),
                            session: i,
                            node: session.node.clone(),
                            publish: (*p).clone(),
                            newest_received: counts.keys().max().copied(),
                        });
                    }
                }
            }
        }
        d.refused_but_delivered = pubs
            .iter()
            .filter(|p| !p.ok() && delivered_anywhere.contains(&p.seq))
            .count();
        d
    }

    /// Prints the figures and records the violations: lost or duplicated events, and
    /// answers other than 200, 503 and 504.
    pub fn report(&self, f: &mut Findings, t0: Instant, what: &str) {
        f.figure(
            &format!("{what}: publishes (200 / refused)"),
            format!("{} ({} / {:?})", self.published, self.acked, self.refused),
        );
        f.figure(
            &format!("{what}: time to a 200, median / max (ms)"),
            format!("{} / {}", ms(self.ack_time.0), ms(self.ack_time.1)),
        );
        f.figure(
            &format!("{what}: longest time from a 200 to the event's arrival at a subscriber (ms)"),
            ms(self.late),
        );
        f.figure(
            &format!(
                "{what}: acknowledged events lost / duplicated (over {} subscriber sessions)",
                self.sessions
            ),
            format!("{} / {}", self.lost.len(), self.duplicates.len()),
        );
        f.figure(
            &format!("{what}: reordered / refused-but-delivered"),
            format!("{} / {}", self.reordered, self.refused_but_delivered),
        );
        let bad: usize = self
            .refused
            .iter()
            // "error": no HTTP answer at all (the publisher's node exited under it, as in a
            // rolling restart): not acknowledged, so never a false success either.
            .filter(|(k, _)| *k != "503" && *k != "504" && *k != "error")
            .map(|(_, n)| n)
            .sum();
        f.check(bad == 0, || {
            format!(
                "{what}: {bad} publishes answered neither 200 nor 503/504 (nor failed without an answer): {:?}",
                self.refused
            )
        });
        if !self.lost.is_empty() {
            let mut by_client: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for lost in &self.lost {
                let p = &lost.publish;
                let newest = lost.newest_received.unwrap_or(0);
                by_client
                    .entry(format!(
                        "{} (session {} on {}, newest received #{newest})",
                        lost.client, lost.session, lost.node
                    ))
                    .or_default()
                    .push(format!(
                        "#{} {} via {} sent t+{}ms acked t+{}ms",
                        p.seq,
                        p.channel,
                        p.via,
                        rel(t0, p.sent),
                        p.done.map_or(-1, |d| rel(t0, d))
                    ));
            }
            let detail: Vec<String> = by_client
                .iter()
                .map(|(c, l)| {
                    let shown: Vec<&String> = l.iter().take(8).collect();
                    format!("{c}: {} lost, e.g. {shown:?}", l.len())
                })
                .collect();
            f.fail(format!(
                "{what}: {} acknowledged (200) events never reached a subscriber that was connected: {}",
                self.lost.len(),
                detail.join("; ")
            ));
        }
        f.check(self.duplicates.is_empty(), || {
            let shown: Vec<_> = self.duplicates.iter().take(10).collect();
            format!(
                "{what}: {} events received twice by one connection, e.g. {shown:?}",
                self.duplicates.len()
            )
        });
    }
}

/// Waits until every acknowledged event reached its subscribers (or `timeout`), so that
/// events still in flight are not counted as lost.
pub async fn settle(pubs: &[Publish], clients: &[&Client], margin: Duration, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if Delivery::of(pubs, clients, margin).lost.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// When an event published after `after` (acknowledged with 200) first reached every
/// client's current connection: the time from `after`, or `None` if none did.
pub fn full_delivery_after(
    after: Instant,
    pubs: &[Publish],
    clients: &[&Client],
) -> Option<Duration> {
    let arrivals: Vec<HashMap<u64, Instant>> = clients
        .iter()
        .map(|c| {
            c.last()
                .seen
                .iter()
                .filter_map(|s| match s {
                    super::clients::Seen::Tick(seq, at) => Some((*seq, *at)),
                    _ => None,
                })
                .collect()
        })
        .collect();
    pubs.iter()
        .filter(|p| p.ok() && p.sent >= after)
        .filter(|p| clients.iter().any(|c| c.channel == p.channel))
        .filter_map(|p| {
            let mut last = after;
            for (client, arrived) in clients.iter().zip(&arrivals) {
                if p.channel != client.channel {
                    continue;
                }
                last = last.max(*arrived.get(&p.seq)?);
            }
            Some(last.duration_since(after))
        })
        .min()
}

/// Median and maximum.
pub fn median_max(values: &[Duration]) -> (Duration, Duration) {
    let mut sorted = values.to_vec();
    sorted.sort();
    let median = if sorted.is_empty() {
        Duration::ZERO
    } else if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2
    };
    (median, sorted.last().copied().unwrap_or_default())
}

/// Presence: the members every connected client of `members` was told about must be
/// `expected`, with no event that did not fit, and the HTTP API must list `expected`.
pub fn presence(
    f: &mut Findings,
    what: &str,
    members: &[&Client],
    expected: &std::collections::BTreeSet<String>,
    api: Result<std::collections::BTreeSet<String>, String>,
) -> usize {
    let mut spurious_total = 0;
    for member in members {
        if !member.connected() {
            let last = member.last();
            f.fail(format!(
                "{what}: {} lost its connection to {} ({:?}) though the test did not close it",
                member.label,
                last.node,
                last.closed.map(|(code, _)| code)
            ));
            continue;
        }
        for (i, session) in member.sessions().iter().enumerate() {
            let (_, spurious) = session.members();
            spurious_total += spurious.len();
            f.check(spurious.is_empty(), || {
                format!(
                    "{what}: {} (session {i} on {}) saw presence events that do not fit: {spurious:?} (roster {:?}, events {:?})",
                    member.label, session.node, session.roster, session.member_events()
                )
            });
        }
        let last = member.last();
        let (told, _) = last.members();
        f.check(&told == expected, || {
            format!(
                "{what}: {} on {} was told the members are {told:?}, connected are {expected:?} (roster {:?}, events {:?})",
                member.label, last.node, last.roster, last.member_events()
            )
        });
    }
    match api {
        Ok(users) => f.check(&users == expected, || {
            format!("{what}: the HTTP API lists the members {users:?}, connected are {expected:?}")
        }),
        Err(e) => f.fail(format!(
            "{what}: the users of the presence channel could not be read: {e}"
        )),
    }
    spurious_total
}

/// The longest time `clients` (their last connections) went without an event between
/// `from` and `to`: from `from` to the first arrival, between arrivals, from the last to
/// `to`.
pub fn longest_silence(clients: &[&Client], from: Instant, to: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    for client in clients {
        let mut previous = from;
        for s in &client.last().seen {
            if let super::clients::Seen::Tick(_, at) = s {
                if *at < from || *at > to {
                    continue;
                }
                longest = longest.max(at.duration_since(previous));
                previous = *at;
            }
        }
        longest = longest.max(to.saturating_duration_since(previous));
    }
    longest
}
