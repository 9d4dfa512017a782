//! Examples of what partners and internal consumers write against this system.

pub mod receiver;
