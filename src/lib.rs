//! forgefleet: runs a fleet of AI coding agents from Forgejo issues.
//!
//! Dependencies flow one way: `api` -> `engine` -> `core`; `store` serves the engine. `core` imports nothing
//! from the rest of the crate and does no I/O.

pub mod adapters;
pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod core;
pub mod engine;
pub mod integrations;
pub mod server;
pub mod store;
pub mod telemetry;
