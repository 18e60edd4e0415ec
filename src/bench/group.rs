//! `group`: G groups of K members, one socket each, spread over the workers; one member
//! of each group sends to it, open loop. Every other member's `message` event is one
//! delivery; a message is complete when its last recipient has it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::changes::Mix;
use super::client::Conn;
use super::load::{Phase, Recipient, Recorder, BODY};
use super::pool;
use super::report::{Latency, Report};
use super::schedule::Schedule;
use super::{BenchError, Ctx, GroupOptions};

const CREATE_REF: i64 = -1;
const WARM_UP_REF: i64 = -2;
/// The `extra` histogram: send → the last recipient.
const LAST: usize = 0;

pub(crate) async fn run(ctx: &Arc<Ctx>, o: &GroupOptions) -> Result<Report, BenchError> {
    let groups = open_groups(ctx, o).await?;
    let recipients = (o.size - 1) as u32;
    let start = Instant::now() + Duration::from_millis(100);
    let sched = Schedule::new(start, o.groups, o.rate, o.duration, 1);
    let rec = Recorder::new(1, 1);
    let mut phase = Phase::start(ctx, sched, &rec, o.duration);
    for (i, (group, id)) in groups.into_iter().enumerate() {
        start_group(&mut phase, i, group, id, recipients);
    }
    let (mut report, _) = phase.finish("group", u64::from(recipients)).await;

    let rec = rec.lock().unwrap();
    report.latency = vec![
        Latency::of("send → ack", &rec.ack[0]),
        Latency::of("send → each recipient", &rec.delivery[0]),
        Latency::of("send → last recipient", &rec.extra[LAST]),
    ];
    Ok(report)
}

/// Opens the sockets of `o.groups` groups of `o.size`, and creates and warms up each group
/// (see [`set_up`]). Returns each group's sockets with its conversation id. One group that
/// fails fails the run, and every socket is closed then, since no phase will close them.
async fn open_groups(
    ctx: &Arc<Ctx>,
    o: &GroupOptions,
) -> Result<Vec<(Vec<Conn>, String)>, BenchError> {
    // Consecutive sockets are on different workers, so each group spans them.
    let mut sockets = pool::spread(ctx, o.groups * o.size).await?;
    let mut groups: Vec<Vec<Conn>> = Vec::with_capacity(o.groups);
    while !sockets.is_empty() {
        let rest = sockets.split_off(o.size);
        groups.push(std::mem::replace(&mut sockets, rest));
    }
    let made = join_all(groups.iter_mut().enumerate().map(|(i, g)| set_up(i, g))).await;
    let mut ids = Vec::with_capacity(made.len());
    for m in made {
        match m {
            Ok(id) => ids.push(id),
            Err(e) => {
                join_all(groups.into_iter().flatten().map(Conn::close)).await;
                return Err(e);
            }
        }
    }
    Ok(groups.into_iter().zip(ids).collect())
}

/// Starts group `i`: its first socket sends to the conversation `id`, and every other
/// member reads the deliveries; the last of `recipients` to get a message completes it.
fn start_group(phase: &mut Phase, i: usize, group: Vec<Conn>, id: String, recipients: u32) {
    let mut members = group.into_iter();
    let sender = members.next().expect("a group has a sender");
    // The id is the server's: quote it as JSON once, not per message.
    let id = serde_json::to_string(&id).expect("a string serializes");
    let make = move |k: u64, _: Option<i64>| {
        format!(
            r#"{{"type":"send","conversation":{id},"body":"{BODY}","client_msg_id":"{k}","ref":{k}}}"#
        )
    };
    let track = phase.sender(i, sender, Mix::NONE, make);
    let who = Recipient {
        of: recipients,
        each: None,
        last: Some(LAST),
    };
    for member in members {
        phase.recipient(i, member, track.clone(), who);
    }
}

/// Creates group `i` (its first socket creates it with the others as members) and sends
/// one warm-up message that every member must receive. Returns the conversation id.
async fn set_up(i: usize, group: &mut [Conn]) -> Result<String, BenchError> {
    let (sender, members) = group.split_first_mut().expect("a group has members");
    let names: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    let create = json!({
        "type": "group_create",
        "name": format!("bench group {i}"),
        "members": names,
        "ref": CREATE_REF,
    });
    let reply = sender.request(create.to_string(), CREATE_REF).await?;
    let reply: Value = serde_json::from_str(&reply).unwrap_or_default();
    let Some(id) = reply["conversation"]["id"].as_str().map(str::to_string) else {
        return Err(BenchError::Setup(format!(
            "group_create: no conversation id in {reply}"
        )));
    };
    let warm = json!({
        "type": "send",
        "conversation": id,
        "body": "warm-up",
        "client_msg_id": "w",
        "ref": WARM_UP_REF,
    });
    let arrivals = members.iter_mut().map(|m| {
        m.wait_for("the warm-up message", |f, _| {
            f.kind == "message" && f.client_msg_id() == Some("w")
        })
    });
    let (ack, arrived) = tokio::join!(
        sender.request(warm.to_string(), WARM_UP_REF),
        join_all(arrivals)
    );
    ack?;
    for a in arrived {
        a?;
    }
    Ok(id)
}
