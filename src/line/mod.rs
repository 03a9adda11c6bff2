//! The line protocol: framing ([`codec`]), the socket with its buffers ([`connection`]),
//! the verbs ([`command`]), what is written back ([`reply`]) and one connection's life
//! ([`session`]).

pub mod codec;
pub mod command;
pub mod connection;
pub mod reply;
pub mod session;
