//! Placeholder crate: the load generator and simulations arrive with a later issue. It holds no behaviour yet.
