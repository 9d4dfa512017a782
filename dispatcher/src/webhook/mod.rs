//! Calling a partner: the signed POST (client), its signature, the SSRF guard on where
//! it may connect, what its answer makes us do (outcome), and how much we may send to
//! that partner right now (flow control).

pub mod client;
pub mod flow;
pub mod outcome;
pub mod signing;
pub mod ssrf;
pub mod tls;
