//! `relaymesh-sim mesh` end to end, tiny: a baseline node and one QUIC cluster started from
//! the debug binaries (`scripts/test` builds them before `cargo test`), 20 subscribers,
//! 50 events per mode; the report must account for every delivery.

use std::process::Command;

use serde_json::Value;

mod common;

#[test]
fn mesh_delivers_every_event_once_and_counts_mesh_bytes() {
    let bin_dir = common::node_bin_dir();
    let json = std::env::temp_dir().join(format!(
        "relaymesh-sim-mesh-test-{}.json",
        std::process::id()
    ));
    let output = Command::new(env!("CARGO_BIN_EXE_relaymesh-sim"))
        .arg("mesh")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--subs", "20", "--events", "50", "--rate", "500"])
        .args(["--transports", "quic", "--time-limit", "120", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "relaymesh-sim mesh failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);

    let results = report["results"].as_array().unwrap();
    let mut seen = Vec::new();
    for r in results {
        let (target, mode) = (r["target"].as_str().unwrap(), r["mode"].as_str().unwrap());
        seen.push(format!("{target}/{mode}"));
        let n = |key: &str| r[key].as_u64().unwrap_or_else(|| panic!("{key} in {r}"));
        assert_eq!(n("events"), 50, "{r}");
        assert_eq!(n("expected_deliveries"), 20 * 50, "{r}");
        assert_eq!(n("unique_deliveries"), 20 * 50, "{target}/{mode}: {r}");
        assert_eq!(n("lost"), 0, "{r}");
        assert_eq!(n("duplicates"), 0, "{r}");
        assert_eq!(n("unexpected"), 0, "{r}");
        assert_eq!(n("publish_failed"), 0, "{r}");
        assert_eq!(n("closed_subscribers"), 0, "{r}");
        assert!(r["delivered_per_s"].as_f64().unwrap() > 0.0, "{r}");
        let latency = &r["latency_ms"];
        let (p50, p99, max) = (
            latency["p50"].as_f64().unwrap(),
            latency["p99"].as_f64().unwrap(),
            latency["max"].as_f64().unwrap(),
        );
        assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{r}");
        let bytes = r["mesh_bytes_out"].as_f64().unwrap();
        if target == "baseline" {
            assert_eq!(
                bytes, 0.0,
                "a standalone node sends nothing over a mesh: {r}"
            );
            assert_eq!(r["control_plane_cpu_s"].as_f64().unwrap(), 0.0, "{r}");
        } else {
            // Every event crosses b → c and c → a at least.
            assert!(bytes > 0.0, "{r}");
            assert!(r["mesh_bytes_per_event"].as_f64().unwrap() > 100.0, "{r}");
        }
    }
    assert_eq!(
        seen,
        [
            "baseline/closed",
            "baseline/paced",
            "quic/closed",
            "quic/paced"
        ]
    );
    assert_eq!(report["comparisons"].as_array().unwrap().len(), 2);
}
