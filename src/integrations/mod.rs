//! The outside world, each behind a small interface the engine's workers call.

pub mod commands;
pub mod forgejo;
pub mod git;
pub mod matrix;
pub mod templates;
