//! Integration tests of the query engine over a real fixture lake.

mod cache;
mod distributed;
mod fixture;
mod freshness;
mod interop;
mod limits;
mod replay;
mod slt;
mod sql;
mod stats;
mod subscription;
mod time_travel;
