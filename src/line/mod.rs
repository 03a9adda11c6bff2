//! The line protocol: framing ([`codec`]), the socket with its buffers ([`connection`]),
//! the verbs ([`command`]), what is written back ([`reply`]) and one connection's life
//! ([`session`]); [`pool`] recycles the buffers of busy connections.

pub mod codec;
pub mod command;
pub mod connection;
pub mod pool;
pub mod reply;
pub mod session;
pub mod verbs;
