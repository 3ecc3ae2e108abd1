//! The shard protocol: the in-memory shard and the HTTP shard (client and
//! service over a real socket) against events replayed from a real lake.

mod stubs;
