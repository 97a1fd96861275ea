//! A testbed of hosts made of Linux network namespaces, with the real `relaymesh-control`
//! and `relaymesh-node` binaries running on them, latency between hosts, faults injected
//! the way a network or an operator does (SIGKILL, SIGTERM, iptables cuts), Pusher clients
//! and a publisher in the calling process, and the delivery accounting that says which
//! acknowledged events a connected subscriber never got. The fault tests
//! (control-plane/tests/faults) and `relaymesh-sim cluster` are built on it.
//!
//! | piece | file |
//! | --- | --- |
//! | namespaces on a bridge, cuts, netem, DNAT | `netns.rs` |
//! | delay relays where the kernel has no netem | `relay.rs` |
//! | latency per pair of hosts: netem or relays | `latency.rs` |
//! | control plane and nodes as processes: start, kill, drain, readiness, logs | `cluster.rs` |
//! | subscribers that record every event (and reconnect), members, publisher | `clients.rs` |
//! | lost / duplicated / refused events, presence checks, findings | `check.rs` |
//!
//! Needs root and iproute2 / iptables / tc: [`netns::unavailable`] says why not.

pub mod check;
pub mod clients;
pub mod cluster;
pub mod latency;
pub mod netns;
pub mod relay;

use std::path::Path;

/// Why a testbed could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This machine cannot host namespaces (not root, no `ip netns`, no iptables or tc).
    #[error("the testbed cannot run here: {0}")]
    Unavailable(String),
    /// Building the testbed failed (a bind, a binary missing, a bad size).
    #[error("{0}")]
    Setup(String),
    /// A command (`ip`, `iptables`, `tc`, `kill`) could not run or failed.
    #[error("{0}")]
    Command(String),
    /// A host name that is not in the testbed.
    #[error("no host {0}")]
    NoHost(String),
    /// A file of the run could not be written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A process did not start, or did not become ready.
    #[error("{0}")]
    Process(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
