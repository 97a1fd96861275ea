//! The mesh between nodes (issue 5, in progress). Today: the cluster's mutual-TLS identity
//! ([`tls`]) and [`link`]s — ordered frames each way, several coalesced per write, bounded
//! queues — over QUIC ([`quic`], with [`frame`] on the stream), over a gRPC bidirectional
//! stream ([`grpc`], for networks that block UDP) and in memory ([`memory`], for tests);
//! one conformance suite runs against all three. [`peers`] is the table of live links, one
//! per other node of the view (`[mesh]` config); the task that keeps it is `links.rs`.
//! Routing (owners, interest, presence at the owner) will run over these links; today they
//! only carry what the peers send, counted.

pub mod endpoint;
pub mod frame;
pub mod grpc;
pub mod link;
pub mod memory;
pub mod peers;
pub mod quic;
pub mod tls;
