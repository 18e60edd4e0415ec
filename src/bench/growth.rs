//! `growth`: the dm load in rounds, one table row per round, so that a latency that grows
//! with the tables (or with time) shows.
//!
//! Without `--grow-events` the rounds run back to back on the same sockets, and the tables
//! grow only by what the load writes. With it, the database grows in bulk between rounds
//! ([`grow`]), each round runs on fresh pairs, and each row says how many
//! event rows the round began with and how many sequential scans of the growing tables
//! PostgreSQL counted during it.

use std::sync::Arc;

use super::dm::{self, Load};
use super::grow::{self, Db};
use super::report::Report;
use super::{BenchError, Ctx, GrowthOptions};

pub(crate) async fn run(ctx: &Arc<Ctx>, o: &GrowthOptions) -> Result<Report, BenchError> {
    let load = Load {
        rate: o.rate,
        pairs: o.pairs,
        cross: o.cross,
        round: o.round_duration,
        rounds: o.rounds,
        changes: 0.0,
    };
    let mut report = match (o.grow_events, &o.database_url) {
        (0, _) | (_, None) => dm::run_rounds(ctx, "growth", load).await?,
        (events, Some(url)) => growing(ctx, load, events, url).await?,
    };
    report.last_to_first_p99 = last_to_first(&report);
    Ok(report)
}

/// Rounds with the database grown by `events` rows between them.
async fn growing(ctx: &Arc<Ctx>, load: Load, events: u64, url: &str) -> Result<Report, BenchError> {
    let mut db = Db::connect(url, &ctx.prefix).await?;
    let mut total: Option<Report> = None;
    for round in 1..=load.rounds {
        if round > 1 {
            if !ctx.quiet {
                eprintln!("growing the database by {events} events…");
            }
            db.grow(events, |_| {}).await?;
        }
        let rows = db.event_rows().await?;
        let before = db.seq_scans().await?;
        let one = Load { rounds: 1, ..load };
        let mut r = dm::run_rounds(ctx, "growth", one).await?;
        let after = db.seq_scans().await?;
        let mut row = r.rounds.pop().expect("a round's row");
        row.round = round;
        row.event_rows = Some(rows);
        row.seq_scans = Some(grow::delta(&before, &after));
        match &mut total {
            None => {
                r.rounds = vec![row];
                total = Some(r);
            }
            Some(t) => t.add_round(r, row),
        }
    }
    let mut report = total.expect("at least one round");
    report.notes.push(format!(
        "the database grew by {events} events between rounds, and each round ran on fresh pairs"
    ));
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
