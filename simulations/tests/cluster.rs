//! `relaymesh-sim cluster` end to end, small: two regions (a: 2 nodes with the control
//! plane, b: 1) 20 ms apart, 20 subscribers, ~300 paced events, and a SIGKILL of the node
//! that owns the channel 3 s in. The report must add up, lose no acknowledged event for a
//! subscriber that stayed connected, show the kill in the timeline at about its time,
//! have its charts, and nothing may be left of the run's namespaces. Needs root and
//! `ip netns` (CI runs as root); without them the run fails and this test with it, saying
//! why. The node binaries come from `cargo build -p relaymesh-node -p relaymesh-control`
//! (scripts/test builds them first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

mod common;

#[test]
fn a_kill_of_the_owner_loses_no_acknowledged_event_and_leaves_nothing() {
    let bin_dir = common::node_bin_dir();
    let out =
        std::env::temp_dir().join(format!("relaymesh-sim-cluster-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(env!("CARGO_BIN_EXE_relaymesh-sim"))
        .arg("cluster")
        .args(["--regions", "a:2,b:1", "--latency", "a-b=20ms"])
        .args(["--scenario", "fanout", "--subs", "20", "--rate", "40"])
        .args([
            "--faults",
            "3s:kill:owner",
            "--duration",
            "7s",
            "--settle",
            "3s",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "relaymesh-sim cluster failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));

    // Publishes add up; some were acknowledged, refusals are 503/504 only.
    let p = &report["publishes"];
    let refused: u64 = p["refused"].as_object().unwrap().values().map(n).sum();
    assert_eq!(n(&p["sent"]), n(&p["acked"]) + refused, "{p}");
    assert!(n(&p["acked"]) >= 200, "{p}");
    for status in p["refused"].as_object().unwrap().keys() {
        assert!(["503", "504"].contains(&status.as_str()), "{p}");
    }
    // Deliveries add up, and nothing acknowledged was lost by a connected subscriber.
    let d = &report["delivery"];
    assert_eq!(n(&d["expected"]), n(&d["received"]) + n(&d["lost"]), "{d}");
    assert_eq!(n(&d["lost"]), 0, "{d}");
    assert_eq!(n(&d["duplicates"]), 0, "{d}");
    assert!(n(&d["expected"]) >= 20 * 200, "{d}");
    let regions = report["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2);
    let clients: u64 = regions.iter().map(|r| n(&r["clients"])).sum();
    assert_eq!(clients, 20, "{regions:?}");
    // The subscribers of the killed node came back as new sessions.
    let sessions: u64 = regions.iter().map(|r| n(&r["sessions"])).sum();
    assert!(sessions > 20, "no subscriber reconnected: {regions:?}");

    // The kill was done at about its time and shows in the timeline's second.
    let fault = &report["faults"][0];
    assert_eq!(fault["kind"], "kill", "{fault}");
    assert_eq!(fault["outcome"], "ok", "{fault}");
    let at = fault["actual_s"].as_f64().unwrap();
    assert!((3.0..4.0).contains(&at), "{fault}");
    let timeline = report["timeline"].as_array().unwrap();
    let second = &timeline[at as usize];
    assert!(
        second["faults"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("kill")),
        "{second}"
    );
    assert!(timeline.iter().filter(|s| n(&s["delivered"]) > 0).count() >= 6);

    // Charts exist and are not empty.
    for stem in ["latency-cdf", "throughput", "latency-over-time"] {
        for ext in ["png", "svg"] {
            let path = out.join(format!("{stem}.{ext}"));
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            assert!(len > 1000, "{} is missing or empty", path.display());
        }
    }

    // Nothing is left of the run's namespaces.
    let tag = report["layout"]["tag"].as_str().unwrap();
    assert!(tag.starts_with("rc"), "{tag}");
    assert!(report["namespaces_left"].as_array().unwrap().is_empty());
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| l.starts_with(tag))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}
