//! Placeholder crate: the control plane arrives with issue 4. It holds no behaviour yet.
