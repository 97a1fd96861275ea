//! relaymesh's simulations as a library: the binary `relaymesh-sim` is a thin CLI over
//! these modules, and the fault tests (control-plane/tests/faults) use [`testbed`].

pub mod cluster;
pub mod control_plane;
pub mod load;
pub mod mesh;
pub mod plot;
pub mod procstat;
pub mod ring;
pub mod testbed;
