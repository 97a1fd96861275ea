//! `presence`: `members` connections join one presence channel (auth signed locally from
//! the secret), `join_concurrency` at a time; then every member's list must become exactly
//! the set of members that joined. Then they leave one by one, and each leave must reach
//! every member still there.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::run_id;
use crate::load::connection::Presence as MemberView;
use crate::load::cpu::{Cpu, Mark};
use crate::load::recorder::{now_us, Seen, Summary};
use crate::load::report::Report;
use crate::load::session::Session;

/// How long one leave may take to reach every member.
const STEP_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Presence {
    pub members: u64,
    pub join_concurrency: usize,
    pub user_info_bytes: usize,
    /// How long to wait for every list to be complete after the joins.
    pub converge: Duration,
}

/// The presence figures (names as in the neutral bench where it has them).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PresenceStats {
    pub members_requested: u64,
    pub joined_ok: u64,
    pub join_failed: u64,
    /// Every member's list was exactly the joined members.
    pub converged: bool,
    /// First join sent → last own subscription_succeeded.
    pub time_to_all_joined_ms: Option<f64>,
    /// First join sent → last change that completed the lists.
    pub time_to_full_member_list_ms: Option<f64>,
    pub members_seeing_all: u64,
    pub min_members_seen: u64,
    pub max_members_seen: u64,
    pub member_added_received: u64,
    /// S(S−1)/2 for S joins.
    pub member_added_expected: u64,
    pub self_member_added: u64,
    pub duplicate_member_added: u64,
    pub member_added_before_own_subscription_succeeded: u64,
    pub initial_count_mismatch: u64,
    /// Ids that were no member of this run.
    pub foreign_ids: u64,
    pub join_latency: Summary,
    /// `GET /channels/{name}/users` after the joins.
    pub api_users_count: Option<u64>,
    pub left: u64,
    pub member_removed_received: u64,
    pub member_removed_expected: u64,
    /// Every leave reached exactly the members still there.
    pub every_removal_seen: bool,
    pub time_to_all_removed_ms: Option<f64>,
}

pub async fn run(p: &Presence, session: &Session) -> Report {
    let mut report = Report::new("presence");
    let channel = format!("presence-load-{}", run_id());
    let opened = session.open(p.members, &|_| None).await;
    report.open = Some(opened.stats.clone());
    if opened.conns.is_empty() {
        report.error = Some("no connection was established".into());
        return report;
    }
    let removals_seen: Arc<Vec<AtomicU32>> =
        Arc::new((0..p.members).map(|_| AtomicU32::new(0)).collect());
    for conn in &opened.conns {
        conn.state().presence = Some(MemberView::new(
            &channel,
            conn.index as u64,
            p.members,
            removals_seen.clone(),
        ));
    }
    let pid = session.options.pid;
    let before = Mark::now(pid);
    let first_join_us = now_us();
    let pad = "x".repeat(p.user_info_bytes);
    let channel_data = |user: usize| {
        Some(
            json!({"user_id": format!("u{user}"), "user_info": {"n": user, "pad": pad}})
                .to_string(),
        )
    };
    let joins = session
        .join(&opened.conns, &channel, &channel_data, p.join_concurrency)
        .await;
    // Over every requested member, so it compares with each member's own view.
    let mut joined = Seen::new(p.members);
    for user in (0..p.members).filter(|&u| joins.ok.contains(u)) {
        joined.insert(user);
    }
    let mut stats = PresenceStats {
        members_requested: p.members,
        joined_ok: joins.ok_count,
        join_failed: joins.failed,
        join_latency: joins.latency.summary(),
        ..PresenceStats::default()
    };
    stats.member_added_expected = stats.joined_ok * stats.joined_ok.saturating_sub(1) / 2;

    // Converge: every member that joined knows exactly the members that joined.
    let until = now_us() + p.converge.min(session.time_left()).as_micros() as u64;
    loop {
        let view = look(&opened.conns, &joined);
        stats.converged = view.exact == stats.joined_ok;
        if stats.converged || now_us() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let view = look(&opened.conns, &joined);
    report.cpu = Cpu::between(&before, &Mark::now(pid));
    stats.members_seeing_all = view.exact;
    stats.min_members_seen = view.min_known;
    stats.max_members_seen = view.max_known;
    stats.member_added_received = view.added;
    stats.self_member_added = view.self_added;
    stats.duplicate_member_added = view.dup_added;
    stats.member_added_before_own_subscription_succeeded = view.early_added;
    stats.initial_count_mismatch = view.count_mismatch;
    stats.foreign_ids = view.foreign;
    if stats.joined_ok > 0 {
        let ms = |us: u64| Some(us.saturating_sub(first_join_us) as f64 / 1000.0);
        stats.time_to_all_joined_ms = ms(view.last_join_us);
        if stats.converged {
            stats.time_to_full_member_list_ms = ms(view.last_change_us);
        }
    }
    stats.api_users_count = api_users(session, &channel).await;

    // Leave one at a time; each leave must reach every member still joined.
    let leave_start = now_us();
    let mut remaining = stats.joined_ok;
    stats.every_removal_seen = true;
    for conn in opened
        .conns
        .iter()
        .filter(|c| joined.contains(c.index as u64))
    {
        if session.past_deadline() {
            stats.every_removal_seen = false;
            break;
        }
        let frame = json!({"event": "pusher:unsubscribe", "data": {"channel": channel}});
        if !conn.send(frame.to_string()).await {
            stats.every_removal_seen = false;
            continue;
        }
        conn.state().presence = None;
        remaining -= 1;
        stats.left += 1;
        stats.member_removed_expected += remaining;
        let user = conn.index;
        let until = now_us() + STEP_WAIT.as_micros() as u64;
        while seen_by(&removals_seen, user) < remaining {
            if now_us() > until || session.past_deadline() {
                stats.every_removal_seen = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let leave_end = now_us();
    // Anything late would show as a count above what was expected.
    tokio::time::sleep(Duration::from_millis(100).min(session.time_left())).await;
    stats.member_removed_received = removals_seen
        .iter()
        .map(|n| u64::from(n.load(Ordering::Relaxed)))
        .sum();
    stats.every_removal_seen &= stats.member_removed_received == stats.member_removed_expected;
    if stats.every_removal_seen && stats.left > 0 {
        stats.time_to_all_removed_ms = Some((leave_end - leave_start) as f64 / 1000.0);
    }
    if stats.joined_ok == 0 {
        report.error = Some("no member could join".into());
    }
    report.presence = Some(stats);
    report
}

fn seen_by(removals_seen: &[AtomicU32], user: usize) -> u64 {
    removals_seen
        .get(user)
        .map_or(0, |n| u64::from(n.load(Ordering::Relaxed)))
}

/// Every joined member's view, summed up.
#[derive(Default)]
struct View {
    exact: u64,
    min_known: u64,
    max_known: u64,
    added: u64,
    self_added: u64,
    dup_added: u64,
    early_added: u64,
    count_mismatch: u64,
    foreign: u64,
    last_change_us: u64,
    last_join_us: u64,
}

fn look(conns: &[Arc<crate::load::connection::Conn>], joined: &Seen) -> View {
    let mut v = View {
        min_known: u64::MAX,
        ..View::default()
    };
    for conn in conns {
        if !joined.contains(conn.index as u64) {
            continue;
        }
        let state = conn.state();
        let Some(m) = state.presence.as_ref() else {
            continue;
        };
        let known = m.known.len();
        v.exact += u64::from(m.known == *joined);
        v.min_known = v.min_known.min(known);
        v.max_known = v.max_known.max(known);
        v.added += m.added;
        v.self_added += m.self_added;
        v.dup_added += m.dup_added;
        v.early_added += m.early_added;
        v.count_mismatch += u64::from(m.count_mismatch);
        v.foreign += m.foreign;
        v.last_change_us = v.last_change_us.max(m.last_change_us);
        v.last_join_us = v.last_join_us.max(m.joined_us.unwrap_or(0));
    }
    if v.min_known == u64::MAX {
        v.min_known = 0;
    }
    v
}

/// The users the HTTP API lists on the channel.
async fn api_users(session: &Session, channel: &str) -> Option<u64> {
    let answer = session
        .api
        .request(
            reqwest::Method::GET,
            &format!("/channels/{channel}/users"),
            &[],
            "",
        )
        .await;
    match answer {
        Ok((200, body)) => serde_json::from_str::<Value>(&body)
            .ok()?
            .get("users")?
            .as_array()
            .map(|u| u.len() as u64),
        Ok((status, _)) => {
            session.errors.count(&format!("http {status}"));
            None
        }
        Err(why) => {
            session.errors.count(&format!("http error {why}"));
            None
        }
    }
}
