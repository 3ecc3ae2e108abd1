//! Integration tests of the query engine over a real fixture lake.

mod cache;
mod fixture;
mod limits;
mod slt;
mod sql;
mod stats;
