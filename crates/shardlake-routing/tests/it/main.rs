//! Routing properties over many keys, golden vectors, the assigner and the
//! keyed lanes.

mod assigner;
mod golden;
mod lanes;
mod properties;
