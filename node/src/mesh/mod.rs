//! The mesh between nodes (issue 5, in progress). Today: the cluster's mutual-TLS identity
//! ([`tls`]) and links over QUIC that carry ordered, length-delimited frames with several
//! frames coalesced per write and a bounded queue ([`quic`], [`frame`]). Routing (owners,
//! interest, presence at the owner) will run over these links; nothing uses them yet.

pub mod frame;
pub mod quic;
pub mod tls;
