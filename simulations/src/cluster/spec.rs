//! The command line's small languages, parsed without I/O: regions (`eu:2,us:2,ap:1`),
//! latency between regions (`eu-us=80ms`), durations (`500ms`, `10s`, `2m`) and the fault
//! schedule (`10s:kill:eu-1,30s:partition:eu-2/us-2:5s`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

/// Nodes one run may have (the testbed's host limit, less the control plane).
pub const NODES_MAX: usize = 30;

/// A command-line value that does not parse; the message names it.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct SpecError(String);

fn err<T>(what: String) -> Result<T, SpecError> {
    Err(SpecError(what))
}

/// A region and its nodes, `{region}-1` … `{region}-{n}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Region {
    pub name: String,
    pub nodes: Vec<String>,
}

pub fn regions(text: &str) -> Result<Vec<Region>, SpecError> {
    let mut regions: Vec<Region> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, count)) = part.split_once(':') else {
            return err(format!("--regions: `{part}` is not NAME:COUNT"));
        };
        let valid = !name.is_empty()
            && name.len() <= 8
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid {
            return err(format!(
                "--regions: `{name}`: a region is 1 to 8 lowercase letters or digits"
            ));
        }
        if name == "cp" || regions.iter().any(|r| r.name == name) {
            return err(format!("--regions: `{name}` is reserved or given twice"));
        }
        let Ok(count) = count.parse::<usize>() else {
            return err(format!("--regions: `{count}` is not a node count"));
        };
        if count == 0 {
            return err(format!("--regions: {name} has no node"));
        }
        regions.push(Region {
            name: name.to_owned(),
            nodes: (1..=count).map(|i| format!("{name}-{i}")).collect(),
        });
    }
    let total: usize = regions.iter().map(|r| r.nodes.len()).sum();
    if total == 0 || total > NODES_MAX {
        return err(format!("--regions: {total} nodes, 1 to {NODES_MAX}"));
    }
    Ok(regions)
}

/// `500ms`, `10s`, `1.5s`, `2m`.
pub fn duration(text: &str) -> Result<Duration, SpecError> {
    let text = text.trim();
    let (number, unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        return err(format!("`{text}`: a duration needs a unit (ms, s, m)"));
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && (0.0..=86_400.0).contains(&(n * unit)) => {
            Ok(Duration::from_secs_f64(n * unit))
        }
        _ => err(format!("`{text}` is not a duration")),
    }
}

/// One-way latency between two regions, keyed by the sorted pair.
pub fn latency(
    text: &str,
    regions: &[Region],
) -> Result<BTreeMap<(String, String), Duration>, SpecError> {
    let mut map = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((pair, value)) = part.split_once('=') else {
            return err(format!("--latency: `{part}` is not A-B=DURATION"));
        };
        let Some((a, b)) = pair.split_once('-') else {
            return err(format!("--latency: `{pair}` is not A-B"));
        };
        for r in [a, b] {
            if !regions.iter().any(|x| x.name == r) {
                return err(format!("--latency: no region `{r}` in --regions"));
            }
        }
        if a == b {
            return err(format!(
                "--latency: `{pair}`: within a region there is none"
            ));
        }
        let key = if a < b { (a, b) } else { (b, a) };
        map.insert(
            (key.0.to_owned(), key.1.to_owned()),
            duration(value).map_err(|e| SpecError(format!("--latency: {e}")))?,
        );
    }
    Ok(map)
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Action {
    /// SIGKILL of a node.
    Kill { node: String },
    /// SIGTERM: the node drains, then exits.
    Drain { node: String },
    /// iptables cut between two hosts (a node and another, or `cp`), healed after `for_`
    /// or at the end of the run.
    Partition {
        a: String,
        b: String,
        #[serde(rename = "heal_after_s", serialize_with = "opt_secs")]
        for_: Option<Duration>,
    },
    /// Starts a killed or drained node again.
    Restart { node: String },
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl Action {
    /// `kill eu-1`, `partition eu-2/us-2 for 5s`.
    pub fn describe(&self) -> String {
        match self {
            Action::Kill { node } => format!("kill {node}"),
            Action::Drain { node } => format!("drain {node}"),
            Action::Restart { node } => format!("restart {node}"),
            Action::Partition { a, b, for_ } => match for_ {
                Some(d) => format!("partition {a}/{b} for {:.1}s", d.as_secs_f64()),
                None => format!("partition {a}/{b}"),
            },
        }
    }
}

/// A fault at a time after the start of the schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub at: Duration,
    pub action: Action,
}

/// The word that stands for the node owning the run's first channel.
pub const OWNER: &str = "owner";

/// The schedule, sorted by time. Node names must be among `nodes` (or `owner`; `cp` on
/// one side of a partition).
pub fn faults(text: &str, nodes: &[String]) -> Result<Vec<Fault>, SpecError> {
    let known = |n: &str| n == OWNER || nodes.iter().any(|x| x == n);
    let mut faults = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let fields: Vec<&str> = part.split(':').collect();
        if fields.len() < 3 || fields.len() > 4 {
            return err(format!("--faults: `{part}` is not AT:KIND:TARGET[:FOR]"));
        }
        let at = duration(fields[0]).map_err(|e| SpecError(format!("--faults: {e}")))?;
        let target = fields[2];
        let node = |n: &str| {
            if known(n) {
                Ok(n.to_owned())
            } else {
                err(format!("--faults: `{part}`: no node `{n}`"))
            }
        };
        let action = match (fields[1], fields.len()) {
            ("kill", 3) => Action::Kill {
                node: node(target)?,
            },
            ("drain", 3) => Action::Drain {
                node: node(target)?,
            },
            ("restart", 3) => Action::Restart {
                node: node(target)?,
            },
            ("partition", _) => {
                let Some((a, b)) = target.split_once('/') else {
                    return err(format!("--faults: `{part}`: a partition is A/B"));
                };
                let side = |n: &str| if n == "cp" { Ok(n.to_owned()) } else { node(n) };
                let for_ = match fields.get(3) {
                    Some(d) => Some(duration(d).map_err(|e| SpecError(format!("--faults: {e}")))?),
                    None => None,
                };
                let (a, b) = (side(a)?, side(b)?);
                if a == b {
                    return err(format!("--faults: `{part}`: a partition needs two hosts"));
                }
                Action::Partition { a, b, for_ }
            }
            (kind, _) => {
                return err(format!(
                    "--faults: `{part}`: `{kind}` is not kill, drain, partition or restart \
                     (only a partition takes a fourth field)"
                ))
            }
        };
        faults.push(Fault { at, action });
    }
    faults.sort_by_key(|f| f.at);
    Ok(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_regions_latency_and_faults() {
        let r = regions("eu:2,us:2,ap:1").unwrap();
        assert_eq!(r[0].nodes, ["eu-1", "eu-2"]);
        assert_eq!(r[2].nodes, ["ap-1"]);
        let l = latency("eu-us=80ms, us-ap=0.12s", &r).unwrap();
        assert_eq!(l[&("eu".into(), "us".into())], Duration::from_millis(80));
        assert_eq!(l[&("ap".into(), "us".into())], Duration::from_millis(120));
        let nodes: Vec<String> = r.iter().flat_map(|r| r.nodes.clone()).collect();
        let f = faults(
            "40s:restart:eu-1,10s:kill:eu-1,30s:partition:eu-2/us-2:5s,20s:drain:owner,25s:partition:ap-1/cp",
            &nodes,
        )
        .unwrap();
        assert_eq!(f.len(), 5);
        assert_eq!(
            f[0].action,
            Action::Kill {
                node: "eu-1".into()
            }
        );
        assert_eq!(f[1].action, Action::Drain { node: OWNER.into() });
        assert_eq!(
            f[3].action,
            Action::Partition {
                a: "eu-2".into(),
                b: "us-2".into(),
                for_: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(f[4].at, Duration::from_secs(40));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert!(regions("eu:0").is_err());
        assert!(regions("eu:2,eu:1").is_err());
        assert!(regions("EU:1").is_err());
        assert!(regions("a:31").is_err());
        let r = regions("a:2,b:1").unwrap();
        assert!(latency("a-c=1ms", &r).is_err());
        assert!(latency("a-b=1", &r).is_err());
        let nodes = vec!["a-1".to_owned()];
        assert!(faults("1s:kill:a-2", &nodes).is_err());
        assert!(faults("1s:reboot:a-1", &nodes).is_err());
        assert!(faults("1s:kill:a-1:2s", &nodes).is_err());
        assert!(faults("1s:partition:a-1", &nodes).is_err());
        assert!(duration("10").is_err() && duration("xs").is_err());
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
    }
}
