//! What the benchmark programs share: which parts run, the results table, medians and percentiles.
//! Each program includes it with `mod common;` (a folder without `main.rs` is not a benchmark of its own).
#![allow(dead_code)]

use std::time::Duration;

/// `FORGEFLEET_BENCH_QUICK=1`: small sizes, a smoke test.
pub fn quick() -> bool {
    std::env::var("FORGEFLEET_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether `FORGEFLEET_BENCH_ONLY` (a comma-separated list; unset: everything) names this part.
/// A whole number from the environment variable `name`, if it is set and parses.
pub fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok())
}

pub fn wanted(name: &str) -> bool {
    match std::env::var("FORGEFLEET_BENCH_ONLY") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|s| s.trim() == name),
        _ => true,
    }
}

/// One line of the results table: ours against the baseline measured in the same run.
pub struct Row {
    pub name: String,
    pub ours: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub met: Option<bool>,
}

impl Row {
    pub fn new(name: &str, ours: String, baseline: String, ratio: String, target: &str, met: Option<bool>) -> Row {
        Row { name: name.into(), ours, baseline, ratio, target: target.into(), met }
    }
}

/// The table as markdown, the form docs/benchmarks*.md quote.
pub fn print_rows(rows: &[Row]) {
    println!("| benchmark | ours | baseline | ratio | target | met? |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        println!("| {} | {} | {} | {} | {} | {} |", r.name, r.ours, r.baseline, r.ratio, r.target, met);
    }
    println!();
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The value below which `p` percent of the sorted samples fall (nearest rank); zero without samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
