//! The cluster as one node sees it, without I/O: the view and the owner it names for every
//! channel ([`view`]), the node's state machine for membership changes, lease, fencing and
//! settling ([`core`]), the channels a view moved here ([`takeover`]) and its requests
//! waiting for owners ([`requests`]). The shell that carries out
//! what the core decides is `rebalance.rs`; nothing here imports the edge, the hub, the
//! owner or the links.

pub mod core;
pub mod requests;
pub mod takeover;
pub mod view;

pub use self::core::{Core, Input, Output, Readiness};
pub use takeover::Takeover;
pub use view::ClusterView;
