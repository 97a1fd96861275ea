//! Following a control plane: register, keep the lease, apply the watched view. The view
//! (members, apps, the ring) is published as an `Arc` snapshot that request paths read
//! without locks; when the control plane is gone the node keeps its last view.

mod follower;

pub use follower::spawn;
