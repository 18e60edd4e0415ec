//! `growth`: the dm load for N rounds back to back on the same sockets, one table row
//! per round, so that a latency that grows with the tables (or with time) shows.
//!
//! Pre-filling the database to a target size before the first round is not done here:
//! it belongs with the schema, and its author will add it.

use std::sync::Arc;

use super::dm::{self, Load};
use super::report::Report;
use super::{BenchError, Ctx, GrowthOptions};

pub async fn run(ctx: &Arc<Ctx>, o: &GrowthOptions) -> Result<Report, BenchError> {
    let load = Load {
        rate: o.rate,
        pairs: o.pairs,
        cross: o.cross,
        round: o.round_duration,
        rounds: o.rounds,
    };
    let mut report = dm::run_rounds(ctx, "growth", load).await?;
    report.last_to_first_p99 = last_to_first(&report);
    Ok(report)
}

/// The last round's delivery p99 over the first's (None with one round or no data).
fn last_to_first(report: &Report) -> Option<f64> {
    let (first, last) = (report.rounds.first()?, report.rounds.last()?);
    if report.rounds.len() < 2 || first.delivery.p99_us == 0 {
        return None;
    }
    let ratio = last.delivery.p99_us as f64 / first.delivery.p99_us as f64;
    Some((ratio * 100.0).round() / 100.0)
}
