//! The line protocol: framing ([`codec`]) over the shared socket ([`connection`]), the verbs
//! ([`verbs`], [`command`]), what is written back ([`reply`]) and one connection's life
//! ([`session`]).

pub mod codec;
pub mod command;
pub mod connection;
pub mod reply;
pub mod session;
pub mod verbs;
