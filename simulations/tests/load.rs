//! `relaymesh-sim load` end to end against a real node (the debug `relaymesh-node` beside
//! this crate's binary, as `scripts/test` builds it): every scenario runs briefly with small
//! counts, and its JSON report must add up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const APP: [&str; 3] = ["load-app", "load-key", "load-secret"];

/// A node process; killed when dropped, so also when an assertion fails.
struct Node {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_relaymesh-sim"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn readyz(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

/// A standalone node serving one app from a config file, on a free port.
fn start_node() -> Node {
    let node = bin_dir().join("relaymesh-node");
    assert!(
        node.is_file(),
        "{} is missing: run `cargo build -p relaymesh-node` first",
        node.display()
    );
    let port = free_port();
    let dir =
        std::env::temp_dir().join(format!("relaymesh-load-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    let config = dir.0.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[[apps]]\nid = \"{}\"\nkey = \"{}\"\nsecret = \"{}\"\n",
            APP[0], APP[1], APP[2]
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.0.join("node.log")).unwrap();
    let child = Command::new(node)
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut node = Node {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !readyz(port) {
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "the node exited: {}",
            std::fs::read_to_string(node._dir.0.join("node.log")).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "the node was not ready in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    node
}

/// Runs `relaymesh-sim load SCENARIO ARGS… --json` against `node`; the exit code and the
/// report.
fn load(node: &Node, scenario: &str, args: &[&str]) -> (i32, Value) {
    let json = std::env::temp_dir().join(format!(
        "relaymesh-load-test-{}-{}-{scenario}.json",
        std::process::id(),
        node.port
    ));
    let url = format!("ws://127.0.0.1:{}", node.port);
    let output = Command::new(env!("CARGO_BIN_EXE_relaymesh-sim"))
        .args(["load", scenario, "--url", &url])
        .args(["--app-id", APP[0], "--key", APP[1]])
        .args(["--time-limit", "40", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap_or_else(|e| {
        panic!(
            "no report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    }))
    .unwrap();
    let _ = std::fs::remove_file(&json);
    // The table on stdout names the scenario and ends with the errors row.
    assert!(
        stdout.contains(scenario) && stdout.contains("errors"),
        "{stdout}"
    );
    (output.status.code().unwrap_or(-1), report)
}

fn n(v: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} in {v:#}"))
}

fn f(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} in {v:#}"))
}

fn assert_no_errors(r: &Value) {
    assert_eq!(r["errors"], serde_json::json!({}), "{r:#}");
    assert!(r["error"].is_null(), "{r:#}");
}

fn assert_latency(l: &Value, count: u64) {
    assert_eq!(n(l, "count"), count, "{l}");
    let (p50, p90, p99, max) = (
        f(l, "p50_ms"),
        f(l, "p90_ms"),
        f(l, "p99_ms"),
        f(l, "max_ms"),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{l}");
}

#[test]
fn fanout_over_two_labelled_targets_delivers_every_event_once() {
    let node = start_node();
    let pid = node.child.id().to_string();
    let second = format!("b=ws://127.0.0.1:{}", node.port);
    let (code, r) = load(
        &node,
        "fanout",
        &[
            "--url", &second, "--secret", APP[2], "--subs", "20", "--events", "50", "--pid", &pid,
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_no_errors(&r);
    assert_eq!(n(&r, "open.connected"), 20);
    assert_eq!(n(&r, "open.subscribed"), 20);
    assert_eq!(n(&r, "publish.acked_ok"), 50);
    assert_eq!(n(&r, "delivery.expected"), 20 * 50);
    assert_eq!(n(&r, "delivery.delivered_unique"), 20 * 50);
    assert_eq!(n(&r, "delivery.deliveries_total"), 20 * 50);
    for zero in ["lost", "duplicates", "misrouted", "out_of_range", "echoed"] {
        assert_eq!(n(&r, &format!("delivery.{zero}")), 0, "{zero}");
    }
    assert!(r["delivery"]["drained"].as_bool().unwrap());
    assert_latency(&r["delivery"]["latency"], 1000);
    // Clients alternate between the two labels: 10 subscribers, 500 deliveries each.
    let by_label = r["delivery"]["latency_by_label"].as_object().unwrap();
    assert_eq!(by_label.len(), 2, "{by_label:?}");
    for l in by_label.values() {
        assert_latency(l, 500);
    }
    let timeline = r["timeline"].as_array().unwrap();
    let per_second: u64 = timeline.iter().map(|s| n(s, "delivered")).sum();
    assert_eq!(per_second, 1000, "{timeline:?}");
    assert!(f(&r, "delivery.delivered_per_s") > 0.0);
    // The generator's own CPU always; the server's with --pid.
    assert!(f(&r, "cpu.generator_cpu_s") > 0.0, "{:#}", r["cpu"]);
    assert!(f(&r, "cpu.server_cpu_s") >= 0.0, "{:#}", r["cpu"]);
    assert!(f(&r, "cpu.server_us_per_delivery") >= 0.0, "{:#}", r["cpu"]);
    assert!(
        r["params"]["secret"].is_null(),
        "the secret is not in the report"
    );
}

#[test]
fn channels_paced_routes_each_event_to_its_channel_only() {
    let node = start_node();
    let (code, r) = load(
        &node,
        "channels",
        &[
            "--secret",
            APP[2],
            "--channels",
            "10",
            "--subs-per-channel",
            "3",
            "--events",
            "60",
            "--rate",
            "300",
            "--warmup",
            "0",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_no_errors(&r);
    assert_eq!(n(&r, "open.subscribed"), 30);
    assert_eq!(n(&r, "delivery.expected"), 60 * 3);
    assert_eq!(n(&r, "delivery.delivered_unique"), 60 * 3);
    assert_eq!(n(&r, "delivery.misrouted"), 0);
    assert_eq!(n(&r, "delivery.lost"), 0);
    assert_eq!(n(&r, "delivery.duplicates"), 0);
    assert!(r["publish"]["mode"].as_str().unwrap().starts_with("paced"));
}

#[test]
fn presence_lists_are_exact_on_join_and_on_leave() {
    let node = start_node();
    let (code, r) = load(&node, "presence", &["--secret", APP[2], "--members", "20"]);
    assert_eq!(code, 0, "{r:#}");
    assert_no_errors(&r);
    let p = &r["presence"];
    assert_eq!(n(p, "joined_ok"), 20);
    assert_eq!(n(p, "join_failed"), 0);
    assert!(p["converged"].as_bool().unwrap(), "{p:#}");
    assert_eq!(n(p, "members_seeing_all"), 20);
    assert_eq!(
        (n(p, "min_members_seen"), n(p, "max_members_seen")),
        (20, 20)
    );
    assert_eq!(n(p, "member_added_expected"), 190);
    assert_eq!(n(p, "member_added_received"), 190);
    for zero in [
        "self_member_added",
        "duplicate_member_added",
        "initial_count_mismatch",
        "foreign_ids",
    ] {
        assert_eq!(n(p, zero), 0, "{zero}: {p:#}");
    }
    assert_eq!(n(p, "api_users_count"), 20);
    assert_eq!(n(p, "left"), 20);
    assert_eq!(n(p, "member_removed_expected"), 190);
    assert_eq!(n(p, "member_removed_received"), 190);
    assert!(p["every_removal_seen"].as_bool().unwrap(), "{p:#}");
    assert!(f(p, "time_to_all_joined_ms") > 0.0, "{p:#}");
    assert!(f(p, "time_to_full_member_list_ms") > 0.0, "{p:#}");
}

#[test]
fn connect_opens_every_connection_and_reads_server_memory() {
    let node = start_node();
    let pid = node.child.id().to_string();
    let (code, r) = load(
        &node,
        "connect",
        &["--conns", "300", "--pid", &pid, "--settle-ms", "300"],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_no_errors(&r);
    assert_eq!(n(&r, "open.requested"), 300);
    assert_eq!(n(&r, "open.connected"), 300);
    assert_eq!(n(&r, "open.failed"), 0);
    assert_latency(&r["open"]["connect_latency"], 300);
    let m = &r["server_memory"];
    assert!(n(m, "rss_after_kib") > n(m, "rss_before_kib"), "{m:#}");
    assert!(f(m, "kib_per_conn") > 0.0, "{m:#}");
    assert!(f(&r, "cpu.server_us_per_connect") > 0.0, "{:#}", r["cpu"]);
}

#[test]
fn churn_cycles_connect_subscribe_disconnect() {
    let node = start_node();
    let (code, r) = load(
        &node,
        "churn",
        &[
            "--cycles",
            "150",
            "--churn-concurrency",
            "6",
            "--duration-s",
            "30",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_no_errors(&r);
    let c = &r["churn"];
    assert_eq!(n(c, "cycles_ok"), 150);
    assert_eq!(n(c, "cycles_failed"), 0);
    assert_eq!((n(c, "connects"), n(c, "subscriptions")), (150, 150));
    assert!(f(c, "connects_per_s") > 0.0);
    assert_latency(&c["cycle_latency"], 150);
}

#[test]
fn client_events_reach_every_other_member_and_never_the_sender() {
    let node = start_node();
    for kind in ["private", "presence"] {
        let (code, r) = load(
            &node,
            "client-events",
            &[
                "--secret",
                APP[2],
                "--channel-kind",
                kind,
                "--members",
                "5",
                "--senders",
                "3",
                "--events-per-sender",
                "6",
                "--sender-rate",
                "10",
            ],
        );
        assert_eq!(code, 0, "{kind}: {r:#}");
        assert_no_errors(&r);
        let c = &r["client_events"];
        assert_eq!(
            (n(c, "members_joined"), n(c, "sent")),
            (5, 18),
            "{kind}: {c:#}"
        );
        let d = &r["delivery"];
        // Each event reaches the 4 other members; none comes back to its sender.
        assert_eq!(n(d, "expected"), 18 * 4, "{kind}");
        assert_eq!(n(d, "delivered_unique"), 18 * 4, "{kind}: {d:#}");
        assert_eq!(n(d, "echoed"), 0, "{kind}");
        assert_eq!(n(d, "lost"), 0, "{kind}");
        assert_eq!(n(d, "duplicates"), 0, "{kind}");
    }
}

#[test]
fn a_bad_secret_is_counted_as_401_errors() {
    let node = start_node();
    let (code, r) = load(
        &node,
        "fanout",
        &[
            "--secret", "wrong", "--subs", "3", "--events", "10", "--warmup", "0",
        ],
    );
    assert_eq!(code, 1, "nothing was acknowledged: {r:#}");
    assert_eq!(r["errors"], serde_json::json!({"http 401": 10}), "{r:#}");
    assert_eq!(r["publish"]["statuses"], serde_json::json!({"401": 10}));
    assert_eq!(n(&r, "publish.acked_ok"), 0);
    assert_eq!(n(&r, "delivery.expected"), 0);
    assert_eq!(n(&r, "delivery.delivered_unique"), 0);
    assert!(r["error"].as_str().unwrap().contains("401"));
    // Channel auth signed with the wrong secret: the server refuses every join with 401.
    let (code, r) = load(&node, "presence", &["--secret", "wrong", "--members", "4"]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["errors"]["subscription_error 401"], 4, "{r:#}");
    assert_eq!(n(&r, "presence.join_failed"), 4);
}
