//! `relaymesh-sim ring --out` end to end, tiny: ranges on both flags, one channel count
//! past the sample; the table, ring.json and every chart must come out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

#[test]
fn ring_writes_json_and_charts() {
    let out = std::env::temp_dir().join(format!("relaymesh-sim-ring-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(env!("CARGO_BIN_EXE_relaymesh-sim"))
        .args(["ring", "--nodes", "10..20", "--channels", "1e3..2e3"])
        .args(["--sample", "1500", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "relaymesh-sim ring failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 10..20 is 10, 20; 1e3..2e3 is 1000, 2000: four rows.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("| 10 ") || l.starts_with("| 20 "))
            .count(),
        4,
        "{stdout}"
    );

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("ring.json")).unwrap()).unwrap();
    let cases = report.as_array().unwrap();
    let case = |nodes: u64, channels: u64| {
        cases
            .iter()
            .find(|c| c["nodes"] == nodes && c["channels"] == channels)
            .unwrap_or_else(|| panic!("no case {nodes}/{channels} in {report}"))
    };
    assert_eq!(cases.len(), 4);
    assert_eq!(case(10, 1000)["sampled"], false);
    assert_eq!(case(10, 1000)["examined"], 1000);
    assert_eq!(case(20, 2000)["sampled"], true);
    assert_eq!(case(20, 2000)["examined"], 1500);
    for c in cases {
        assert_eq!(c["moved_between_stayers"], 0, "{c}");
        let moved = c["moved_on_leave"].as_f64().unwrap();
        assert!(moved > 0.0 && moved < 0.5, "{c}");
        assert!(c["max_share_over_mean"].as_f64().unwrap() >= 1.0, "{c}");
    }

    for chart in [
        "balance",
        "movement",
        "movement-over-ideal",
        "load-histogram",
        "share-cdf",
    ] {
        for ext in ["png", "svg"] {
            let path = out.join(format!("{chart}.{ext}"));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                bytes.len() > 1000,
                "{} is {} bytes",
                path.display(),
                bytes.len()
            );
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}
