//! Carries out the fault schedule on a running cluster and records what was done when:
//! kill (SIGKILL), drain (SIGTERM), partition (iptables cut, healed after its time or at
//! the end) and restart (of a killed or drained node, which rejoins the clients' lists
//! once it answers /readyz).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::report::FaultRecord;
use super::spec::{Action, Fault, OWNER};
use super::workload::Workload;
use crate::testbed::cluster::Cluster;

/// How long a restart waits for a drained node to exit before it kills it.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long a restarted node may take to answer /readyz before the note says so.
const READY_WAIT: Duration = Duration::from_secs(20);

/// The schedule in progress.
pub struct Injector {
    schedule: Vec<Fault>,
    next: usize,
    pub records: Vec<FaultRecord>,
    /// Nodes clients and the publisher may use.
    pub live: BTreeSet<String>,
    /// Partitions to heal: when, the two hosts, their record.
    heals: Vec<(Option<Instant>, String, String, usize)>,
    /// Restarted nodes not ready yet: node, record, when started.
    starting: Vec<(String, usize, Instant)>,
}

impl Injector {
    /// `owner` stands in for the word `owner` in the schedule.
    pub fn new(mut schedule: Vec<Fault>, owner: &str, nodes: &[String]) -> Injector {
        let name = |n: &mut String| {
            if n == OWNER {
                *n = owner.to_owned();
            }
        };
        for f in &mut schedule {
            match &mut f.action {
                Action::Kill { node } | Action::Drain { node } | Action::Restart { node } => {
                    name(node)
                }
                Action::Partition { a, b, .. } => {
                    name(a);
                    name(b);
                }
            }
        }
        Injector {
            schedule,
            next: 0,
            records: Vec::new(),
            live: nodes.iter().cloned().collect(),
            heals: Vec::new(),
            starting: Vec::new(),
        }
    }

    /// Does what is due at `now` (the schedule started at `t0`).
    pub async fn step(&mut self, t0: Instant, cluster: &mut Cluster, workload: &mut Workload) {
        while let Some(fault) = self.schedule.get(self.next).cloned() {
            if t0 + fault.at > Instant::now() {
                break;
            }
            self.next += 1;
            let index = self.records.len();
            self.records.push(FaultRecord {
                planned_s: fault.at.as_secs_f64(),
                actual_s: t0.elapsed().as_secs_f64(),
                what: fault.action.describe(),
                action: fault.action.clone(),
                outcome: "ok".into(),
                notes: Vec::new(),
            });
            eprintln!(
                "[cluster] t+{:.2}s: {}",
                t0.elapsed().as_secs_f64(),
                fault.action.describe()
            );
            if let Err(e) = self.apply(&fault.action, index, cluster).await {
                self.records[index].outcome = e;
            }
            if let Some(moved) = workload.follow(cluster, &self.live) {
                self.records[index]
                    .notes
                    .push(format!("publisher moved to {moved}"));
            }
        }
        let now = Instant::now();
        let due: Vec<usize> = (0..self.heals.len())
            .filter(|&i| self.heals[i].0.is_some_and(|at| at <= now))
            .collect();
        for i in due.into_iter().rev() {
            let (_, a, b, record) = self.heals.remove(i);
            self.heal(cluster, &a, &b, record, t0);
        }
        let mut still = Vec::new();
        for (node, record, started) in std::mem::take(&mut self.starting) {
            let ready = cluster.readyz(&node).await.is_some_and(|(s, _)| s == 200);
            if ready {
                self.live.insert(node.clone());
                workload.follow(cluster, &self.live);
                self.records[record].notes.push(format!(
                    "{node} ready {:.2}s after the restart",
                    started.elapsed().as_secs_f64()
                ));
            } else if started.elapsed() > READY_WAIT {
                self.records[record]
                    .notes
                    .push(format!("{node} not ready within {READY_WAIT:?}"));
            } else {
                still.push((node, record, started));
            }
        }
        self.starting = still;
    }

    async fn apply(
        &mut self,
        action: &Action,
        index: usize,
        cluster: &mut Cluster,
    ) -> Result<(), String> {
        match action {
            Action::Kill { node } => {
                self.live.remove(node);
                cluster.kill(node);
            }
            Action::Drain { node } => {
                self.live.remove(node);
                cluster.terminate(node).map_err(|e| e.to_string())?;
            }
            Action::Partition { a, b, for_ } => {
                cluster.net.cut(a, b).map_err(|e| e.to_string())?;
                let at = for_.map(|d| Instant::now() + d);
                self.heals.push((at, a.clone(), b.clone(), index));
            }
            Action::Restart { node } => {
                if cluster.running(node) && cluster.wait_exit(node, EXIT_WAIT).await.is_none() {
                    self.records[index]
                        .notes
                        .push(format!("{node} still ran after {EXIT_WAIT:?}: killed"));
                    cluster.kill(node);
                }
                cluster.start_node(node).map_err(|e| e.to_string())?;
                self.starting.push((node.clone(), index, Instant::now()));
            }
        }
        Ok(())
    }

    fn heal(&mut self, cluster: &mut Cluster, a: &str, b: &str, record: usize, t0: Instant) {
        let note = match cluster.net.heal(a, b) {
            Ok(()) => format!("healed at t+{:.2}s", t0.elapsed().as_secs_f64()),
            Err(e) => format!("heal failed: {e}"),
        };
        self.records[record].notes.push(note);
    }

    /// Heals every partition still in place (the end of the run).
    pub fn heal_all(&mut self, cluster: &mut Cluster, t0: Instant) {
        for (_, a, b, record) in std::mem::take(&mut self.heals) {
            self.heal(cluster, &a, &b, record, t0);
        }
    }
}
