//! The node binary in a pod's environment: the service variables Kubernetes injects
//! (`RELAYMESH_CONTROL_PORT=tcp://…` for a Service named `relaymesh-control`) do not stop
//! it, and a cluster node listening on 0.0.0.0 without an advertised address does (64).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// As Kubernetes writes them for `relaymesh-control` (gRPC on 7000) and `relaymesh-mesh`.
const INJECTED: [(&str, &str); 8] = [
    ("RELAYMESH_CONTROL_SERVICE_HOST", "10.0.0.1"),
    ("RELAYMESH_CONTROL_SERVICE_PORT", "7000"),
    ("RELAYMESH_CONTROL_SERVICE_PORT_GRPC", "7000"),
    ("RELAYMESH_CONTROL_PORT", "tcp://10.0.0.1:7000"),
    ("RELAYMESH_CONTROL_PORT_7000_TCP", "tcp://10.0.0.1:7000"),
    ("RELAYMESH_CONTROL_PORT_7000_TCP_ADDR", "10.0.0.1"),
    ("RELAYMESH_MESH_PORT_7100_UDP", "udp://10.0.0.3:7100"),
    ("RELAYMESH_MESH_SERVICE_HOST", "10.0.0.3"),
];

fn node(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relaymesh-node"));
    command
        .args(args)
        .env("RUST_LOG", "info")
        .envs(INJECTED)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Kills the node when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_node_starts_with_kubernetes_service_variables_and_logs_only_their_names() {
    let mut running = Running(node(&["--listen", "127.0.0.1:0"]).spawn().unwrap());
    // The first line names the bound address: "relaymesh-node listening on 127.0.0.1:PORT".
    // Kept open until the node is gone: it prints more lines, and a closed pipe fails it.
    let mut stdout = BufReader::new(running.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("relaymesh-node listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let health = get(&addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(get(&addr, "/readyz").starts_with("HTTP/1.1 200"));
    running.0.kill().unwrap();
    running.0.wait().unwrap();
    let mut log = String::new();
    running
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("ignoring Kubernetes service variables"),
        "{log}"
    );
    for (name, _) in INJECTED {
        assert!(log.contains(name), "{name} not logged: {log}");
    }
    // The values (addresses here) are not logged.
    assert!(!log.contains("10.0.0.") && !log.contains("://"), "{log}");
    drop(stdout);
}

/// Runs the node to its end: it must stop with 64 and say that `key` must be set.
fn refused(mut command: Command, key: &str) {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(&format!("{key} must be set")), "{stderr}");
}

#[test]
fn a_cluster_node_on_an_unspecified_address_must_advertise_one() {
    // Refused before anything is bound or dialled: port 1 is never contacted.
    let cluster = "http://127.0.0.1:1";
    refused(
        node(&["--control-plane", cluster, "--listen", "0.0.0.0:0"]),
        "advertise",
    );
    let mut command = node(&["--control-plane", cluster, "--listen", "127.0.0.1:0"]);
    command
        .env("RELAYMESH_MESH__LISTEN", "0.0.0.0:0")
        .env("RELAYMESH_MESH__DEV_CA_DIR", "/nonexistent");
    refused(command, "mesh.advertise");
}
