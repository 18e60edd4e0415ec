//! Plans that never scan a growing table: every statement pgchat runs on the paths of
//! send, delivery, catch-up, resume, history, conversations, read, presence and retention
//! is run against a database of 20k users, 200k messages and a million events, with 1, 30
//! and 500 keys, under both `force_custom_plan` and `force_generic_plan`, first with
//! statistics taken when the tables were nearly empty and then with fresh ones. Every plan
//! (the statements inside pgchat.apply_batch included, through auto_explain) must reach
//! `event_queue`, `messages`, `conversations`, `members` and `users` through an index.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::TestDb;
use futures_util::StreamExt;
use pgchat::db::queries as q;
use postgres_types::ToSql;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// The tables that grow with use; a plan may reach them only by key.
const GROWING: [&str; 9] = [
    "event_queue",
    "messages",
    "conversations",
    "members",
    "users",
    "mentions",
    "reactions",
    "reaction_counts",
    "reaction_changes",
];
const USERS: i64 = 20_000;

/// The generated database: users u00001..u20000; direct conversations d1..d40000 (user i
/// with i+1, and with i+2), 5 messages each; groups g1..g1000 of 20 (u00001 in the first
/// 500 as well); 50 events per user spread over ten days, so retention has work.
const GROW: &str = r#"
SET synchronous_commit = off;
CREATE FUNCTION pg_temp.u(i bigint) RETURNS text IMMUTABLE LANGUAGE sql AS
    $$ SELECT 'u' || lpad((((i - 1) % 20000) + 1)::text, 5, '0') $$;
INSERT INTO pgchat.users (id, name, head)
SELECT pg_temp.u(g), 'User ' || g, 50 FROM generate_series(1, 20000) g;
INSERT INTO pgchat.conversations (id, kind, direct_key, last_cseq, version, created_at)
SELECT 'd' || g, 'direct', least(a, b) || E'\n' || greatest(a, b), 5, 6,
       now() - interval '10 days'
FROM (SELECT g, pg_temp.u(g) AS a, pg_temp.u(g + 1 + (g - 1) / 20000) AS b
      FROM generate_series(1, 40000) g) p;
INSERT INTO pgchat.conversations (id, kind, name, last_cseq, version, created_by)
SELECT 'g' || g, 'group', 'group ' || g, 0, 1, pg_temp.u(g * 20) FROM generate_series(1, 1000) g;
SELECT setval('pgchat.conversation_ids', 50000);
INSERT INTO pgchat.members (conversation_id, user_id)
SELECT c.id, x FROM pgchat.conversations c,
       unnest(string_to_array(c.direct_key, E'\n')) x WHERE c.kind = 'direct';
INSERT INTO pgchat.members (conversation_id, user_id)
SELECT DISTINCT 'g' || g, pg_temp.u(g * 20 + j)
FROM generate_series(1, 1000) g, generate_series(0, 19) j;
INSERT INTO pgchat.members (conversation_id, user_id)
SELECT 'g' || g, 'u00001' FROM generate_series(1, 500) g ON CONFLICT DO NOTHING;
INSERT INTO pgchat.messages (id, conversation_id, cseq, sender_id, body, client_msg_id, created_at)
SELECT (g - 1) * 5 + c, 'd' || g, c, pg_temp.u(g + (c % 2) * (1 + (g - 1) / 20000)),
       'message ' || c, 'm' || ((g - 1) * 5 + c), now() - interval '10 days'
FROM generate_series(1, 40000) g, generate_series(1, 5) c;
SELECT setval('pgchat.messages_id_seq', 200000);
INSERT INTO pgchat.event_queue (user_id, seq, kind, message_id, conversation_id, created_at)
SELECT pg_temp.u(i), s,
       CASE WHEN s = 1 THEN 'conversation' ELSE 'message' END,
       CASE WHEN s = 1 THEN NULL ELSE ((i * 50 + s) % 200000) + 1 END,
       CASE WHEN s = 1 THEN 'd' || i END,
       now() - interval '10 days' + s * interval '4 hours'
FROM generate_series(1, 20000) i, generate_series(1, 50) s;
-- Reactions on every fourth message (two users each), mentions of the second member in
-- every tenth, and the changes that told of the reactions.
INSERT INTO pgchat.reactions (conversation_id, message_id, user_id, emoji)
SELECT m.conversation_id, m.id, x, '👍' FROM pgchat.messages m,
       unnest(string_to_array((SELECT c.direct_key FROM pgchat.conversations c
                               WHERE c.id = m.conversation_id), E'\n')) x
WHERE m.id % 4 = 0;
INSERT INTO pgchat.reaction_counts (conversation_id, message_id, emoji, count, first_at)
SELECT conversation_id, message_id, emoji, count(*), min(created_at) FROM pgchat.reactions
GROUP BY 1, 2, 3;
INSERT INTO pgchat.reaction_changes (conversation_id, message_id, change_id, user_id, emoji,
                                     added, created_at)
SELECT conversation_id, message_id, row_number() OVER (), user_id, emoji, true,
       now() - interval '9 days'
FROM pgchat.reactions;
SELECT setval('pgchat.reaction_change_ids', (SELECT count(*) FROM pgchat.reactions) + 1);
UPDATE pgchat.messages m SET mentions = ARRAY[x.other], body = body || ' @' || x.other
FROM (SELECT c.id, split_part(c.direct_key, E'\n', 2) AS other FROM pgchat.conversations c
      WHERE c.kind = 'direct') x
WHERE x.id = m.conversation_id AND m.id % 10 = 0;
INSERT INTO pgchat.mentions (conversation_id, user_id, cseq)
SELECT conversation_id, mentions[1], cseq FROM pgchat.messages WHERE mentions IS NOT NULL;
UPDATE pgchat.members m SET mentions_unread = x.n
FROM (SELECT conversation_id, user_id, count(*) AS n FROM pgchat.mentions GROUP BY 1, 2) x
WHERE m.conversation_id = x.conversation_id AND m.user_id = x.user_id;
"#;

/// A session whose every plan, nested ones included, arrives as a JSON notice.
struct Explained {
    client: Client,
    plans: mpsc::UnboundedReceiver<String>,
}

impl Explained {
    async fn connect(db: &TestDb, plan_cache_mode: &str) -> Explained {
        let (client, mut connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
        let (tx, plans) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notice(n) = m {
                    let _ = tx.send(n.message().to_string());
                }
            }
        });
        client
            .batch_execute(&format!(
                "LOAD 'auto_explain';
                 SET auto_explain.log_min_duration = 0;
                 SET auto_explain.log_nested_statements = on;
                 SET auto_explain.log_format = json;
                 SET auto_explain.log_level = notice;
                 SET client_min_messages = notice;
                 SET plan_cache_mode = {plan_cache_mode};"
            ))
            .await
            .unwrap();
        Explained { client, plans }
    }

    /// Runs `sql`; returns every plan it (and the statements it calls) used.
    async fn run(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<Value> {
        let stmt = self.client.prepare(sql).await.unwrap();
        if let Err(e) = self.client.query(&stmt, params).await {
            panic!("{sql}\nfailed: {e:?}");
        }
        // A round trip after the statement: every notice it raised has arrived by then.
        self.client.simple_query("").await.unwrap();
        let mut plans = Vec::new();
        while let Ok(notice) = self.plans.try_recv() {
            if let Some(at) = notice.find('{') {
                plans.push(serde_json::from_str(&notice[at..]).expect("a JSON plan"));
            }
        }
        assert!(!plans.is_empty(), "auto_explain reported no plan for {sql}");
        plans
    }
}

/// Where a plan reaches a growing table other than by key: a sequential scan, or an index
/// scan without a condition (the whole index).
fn scans(node: &Value, found: &mut Vec<String>) {
    let kind = node["Node Type"].as_str().unwrap_or_default();
    if let Some(rel) = node["Relation Name"].as_str() {
        let whole_index =
            matches!(kind, "Index Scan" | "Index Only Scan") && node.get("Index Cond").is_none();
        if GROWING.contains(&rel) && (kind == "Seq Scan" || whole_index) {
            found.push(format!("{kind} on {rel}"));
        }
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        scans(child, found);
    }
}

fn u(i: i64) -> String {
    format!("u{:05}", (i - 1).rem_euclid(USERS) + 1)
}

/// A unique suffix for idempotency keys and new names, across all runs of one test.
fn fresh() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The arguments of pgchat.apply_batch, built up one command at a time.
#[derive(Default)]
struct Batch {
    kind: Vec<&'static str>,
    actor: Vec<String>,
    conv: Vec<Option<String>>,
    to: Vec<Option<String>>,
    text: Vec<Option<String>>,
    key: Vec<Option<String>>,
    num: Vec<Option<i64>>,
    list_cmd: Vec<i32>,
    list_user: Vec<String>,
}

impl Batch {
    fn push(&mut self, kind: &'static str, actor: String, conv: Option<String>) -> &mut Self {
        self.kind.push(kind);
        self.actor.push(actor);
        self.conv.push(conv);
        self.to.push(None);
        self.text.push(None);
        self.key.push(None);
        self.num.push(None);
        self
    }

    fn send(&mut self, actor: String, conv: Option<String>, to: Option<String>) {
        self.push("send", actor, conv);
        *self.to.last_mut().unwrap() = to;
        *self.text.last_mut().unwrap() = Some("hello".into());
        *self.key.last_mut().unwrap() = Some(format!("plan-{}", fresh()));
    }

    /// A change of message `cseq` of `conv`: an edit, a deletion or a reaction.
    fn change(&mut self, kind: &'static str, actor: String, conv: String, cseq: i64) {
        self.push(kind, actor, Some(conv));
        *self.num.last_mut().unwrap() = Some(cseq);
        match kind {
            "edit" => *self.text.last_mut().unwrap() = Some(format!("edited {}", fresh())),
            "react" => {
                *self.text.last_mut().unwrap() = Some("🎉".into());
                *self.key.last_mut().unwrap() = Some("on".into());
            }
            _ => {}
        }
    }

    fn users(&mut self, users: impl IntoIterator<Item = String>) {
        let cmd = self.kind.len() as i32;
        for user in users {
            self.list_cmd.push(cmd);
            self.list_user.push(user);
        }
    }

    async fn explain(&self, s: &mut Explained) -> Vec<Value> {
        let (worker, max) = ("plans", 1000i32);
        s.run(
            q::APPLY_BATCH,
            &[
                &worker,
                &max,
                &self.kind,
                &self.actor,
                &self.conv,
                &self.to,
                &self.text,
                &self.key,
                &self.num,
                &self.list_cmd,
                &self.list_user,
            ],
        )
        .await
    }
}

/// Every hot statement with `n` keys; returns (what ran, its plans).
async fn every_statement(s: &mut Explained, n: i64) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    let users: Vec<String> = (1..=n).map(|i| u(i * 37)).collect();
    let base = 1000 + n * 7;

    // Send: to conversations by id, to users by direct key, to new pairs; a mix with the
    // group commands and read.
    let mut b = Batch::default();
    for i in 0..n {
        b.send(u(base + i), Some(format!("d{}", base + i)), None);
    }
    out.push(("apply_batch: sends by id".into(), b.explain(s).await));
    let mut b = Batch::default();
    for i in 0..n {
        b.send(u(base + i), None, Some(u(base + i + 1)));
    }
    out.push(("apply_batch: sends by recipient".into(), b.explain(s).await));
    let mut b = Batch::default();
    let shift = 3000 + fresh() as i64 * 613;
    for i in 0..n {
        b.send(u(base + i), None, Some(u(base + i + shift)));
    }
    out.push((
        "apply_batch: new direct conversations".into(),
        b.explain(s).await,
    ));
    let mut b = Batch::default();
    let group = format!("g{}", 501 + n);
    b.push("group_create", u(7), None);
    *b.text.last_mut().unwrap() = Some(format!("new {}", fresh()));
    b.users(users.iter().take(999).cloned());
    b.push("group_add", u((501 + n) * 20), Some(group.clone()));
    b.users(users.iter().cloned());
    b.send(u((501 + n) * 20), Some(group.clone()), None);
    for i in 0..n {
        b.push("read", u(base + i), Some(format!("d{}", base + i)));
        *b.num.last_mut().unwrap() = Some(3);
    }
    b.push("group_remove", u((501 + n) * 20), Some(group.clone()));
    b.users(users.iter().cloned());
    b.push("group_leave", u((501 + n) * 20 + 1), Some(group));
    out.push(("apply_batch: groups and reads".into(), b.explain(s).await));
    // Replies and mentions; then edits, reactions (on and off) and deletions of messages
    // with reactions and mentions, and reads past unread mentions. Conversation d{i} is
    // u(i) with u(i+1); message cseq c of it is sent by u(i) for even c.
    let mut b = Batch::default();
    for i in 0..n {
        let (me, other) = (u(base + i), u(base + i + 1));
        b.send(me, Some(format!("d{}", base + i)), None);
        *b.num.last_mut().unwrap() = Some(2);
        b.users([other]);
    }
    out.push((
        "apply_batch: replies with mentions".into(),
        b.explain(s).await,
    ));
    // Conversations no earlier run changed (each run takes the next 600).
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let first = 10_000 + RUN.fetch_add(1, Ordering::Relaxed) as i64 * 600;
    let mut b = Batch::default();
    for i in 0..n {
        let (me, conv) = (u(first + i), format!("d{}", first + i));
        b.change("edit", me.clone(), conv.clone(), 2);
        b.change("react", me.clone(), conv.clone(), 4);
        b.change("react", me.clone(), conv.clone(), 3);
        *b.key.last_mut().unwrap() = Some("off".into());
        b.change("delete", me.clone(), conv.clone(), 4);
        b.push("read", u(first + i + 1), Some(conv));
        *b.num.last_mut().unwrap() = Some(5);
    }
    out.push((
        "apply_batch: edits, reactions, deletions, reads".into(),
        b.explain(s).await,
    ));
    let (editor, conv) = (u(first + 550), format!("d{}", first + 550));
    out.push((
        "pgchat.edit".into(),
        s.run(
            "SELECT pgchat.edit($1, $2, 2, 'edited from sql')",
            &[&editor, &conv],
        )
        .await,
    ));
    out.push((
        "pgchat.delete".into(),
        s.run("SELECT pgchat.delete($1, $2, 2)", &[&editor, &conv])
            .await,
    ));
    let (sender, conv) = (u(base), format!("d{base}"));
    let key = format!("sql-{}", fresh());
    out.push((
        "pgchat.send".into(),
        s.run(
            "SELECT pgchat.send($1, $2, 'from sql', $3)",
            &[&sender, &conv, &key],
        )
        .await,
    ));

    // Delivery and catch-up.
    let after: Vec<i64> = vec![40; n as usize];
    let upto: Vec<i64> = vec![50; n as usize];
    out.push((
        "events_in".into(),
        s.run(q::EVENTS_IN, &[&users, &after, &upto, &2_000_000i64])
            .await,
    ));
    out.push(("heads".into(), s.run(q::HEADS, &[&users]).await));

    // Resume, connect.
    let (one, zero, limit, bytes) = (u(n), 0i64, 500i64, 150_000i64);
    out.push((
        "events_after".into(),
        s.run(q::EVENTS_AFTER, &[&one, &zero, &limit, &bytes]).await,
    ));
    out.push((
        "stream_bounds".into(),
        s.run(q::STREAM_BOUNDS, &[&one]).await,
    ));
    out.push(("user".into(), s.run(q::USER, &[&one]).await));
    let name = Some(format!("name {}", fresh()));
    out.push((
        "upsert_user".into(),
        s.run(q::UPSERT_USER, &[&one, &name]).await,
    ));

    // History, conversations.
    let conv = format!("d{n}");
    let (before, page) = (i64::MAX, 51i64);
    out.push((
        "history_access".into(),
        s.run(q::HISTORY_ACCESS, &[&conv, &one]).await,
    ));
    out.push((
        "history_page".into(),
        s.run(q::HISTORY_PAGE, &[&conv, &before, &page, &one]).await,
    ));
    let before = 3i64;
    out.push((
        "history_page, older".into(),
        s.run(q::HISTORY_PAGE, &[&conv, &before, &page, &one]).await,
    ));
    // Search: a word in every message, a rare one, in all of a heavy user's conversations
    // and in one; a later page.
    let (all, top) = (None::<&str>, 21i64);
    for (query, conv) in [
        ("message", all),
        ("message", Some("d250")),
        (&*format!("@{}", u(2)), all),
        ("nothing-matches-this", all),
    ] {
        out.push((
            format!("search {query:?} in {conv:?}"),
            s.run(q::SEARCH, &[&u(1), &conv, &query, &i64::MAX, &top])
                .await,
        ));
    }
    out.push((
        "search, a later page".into(),
        s.run(q::SEARCH, &[&u(1), &all, &"message", &1000i64, &top])
            .await,
    ));
    out.push(("members".into(), s.run(q::MEMBERS, &[&conv]).await));
    let heavy = u(1);
    let (page, first): (i64, Option<chrono::DateTime<chrono::Utc>>) = (101, None);
    let no_id: Option<&str> = None;
    out.push((
        "conversations (500 of them)".into(),
        s.run(q::CONVERSATIONS, &[&heavy, &100i32, &page, &first, &no_id])
            .await,
    ));
    let (at, id) = (Some(chrono::Utc::now()), Some("d250"));
    out.push((
        "conversations (500 of them), a later page".into(),
        s.run(q::CONVERSATIONS, &[&heavy, &100i32, &page, &at, &id])
            .await,
    ));
    out.push((
        "conversations".into(),
        s.run(q::CONVERSATIONS, &[&one, &100i32, &page, &first, &no_id])
            .await,
    ));
    let (empty, receipts) = ("", 101i64);
    out.push((
        "receipts".into(),
        s.run(q::RECEIPTS, &[&conv, &empty, &receipts]).await,
    ));

    // Presence.
    out.push(("sharing".into(), s.run(q::SHARING, &[&heavy, &users]).await));
    out.push(("last_seen".into(), s.run(q::LAST_SEEN, &[&users]).await));
    let now = chrono::Utc::now();
    out.push((
        "store_last_seen".into(),
        s.run(q::STORE_LAST_SEEN, &[&users, &now]).await,
    ));
    let worker = format!("w{n}");
    out.push((
        "presence_on".into(),
        s.run(q::PRESENCE_ON, &[&users, &worker]).await,
    ));
    let workers = vec![worker.clone()];
    out.push((
        "forget_workers".into(),
        s.run(q::FORGET_WORKERS, &[&workers]).await,
    ));
    out.push((
        "presence_off".into(),
        s.run(q::PRESENCE_OFF, &[&users, &worker]).await,
    ));

    // Retention.
    let (retention, rows) = (7.0 * 86400.0f64, n as i32 * 10);
    out.push((
        "prune_events".into(),
        s.run(q::PRUNE_EVENTS, &[&retention, &rows]).await,
    ));
    out
}

async fn check_all(db: &TestDb, stats: &str, failures: &mut Vec<String>) -> usize {
    let mut checked = 0;
    for mode in ["force_custom_plan", "force_generic_plan"] {
        let mut session = Explained::connect(db, mode).await;
        for n in [1, 30, 500] {
            for (what, plans) in every_statement(&mut session, n).await {
                for plan in &plans {
                    checked += 1;
                    let mut found = Vec::new();
                    scans(&plan["Plan"], &mut found);
                    // A node apply_batch switches off (a sequential scan, even of a one-row
                    // table, a hash or merge join) that is planned anyway costs 1e10: past
                    // jit_above_cost, PostgreSQL then JIT-compiles the statement, a few
                    // hundred milliseconds on every call.
                    if plan["Plan"]["Total Cost"].as_f64().unwrap_or(0.0) >= 1e9 {
                        found.push("a switched-off plan node (JIT-compiled on every call)".into());
                    }
                    if !found.is_empty() {
                        failures.push(format!(
                            "{what} with {n} keys ({mode}, {stats}): {}\n  in: {}\n  plan: {}",
                            found.join(", "),
                            plan["Query Text"].as_str().unwrap_or_default(),
                            plan["Plan"]
                        ));
                    }
                }
            }
        }
    }
    checked
}

#[tokio::test]
async fn no_hot_statement_scans_a_growing_table_whatever_the_statistics_and_plan_cache() {
    common::init_logging();
    let db = TestDb::new().await;
    let admin = db.client().await;
    // Statistics from when the tables were (nearly) empty, then a million events.
    admin.batch_execute("ANALYZE").await.unwrap();
    let started = std::time::Instant::now();
    admin.batch_execute(GROW).await.unwrap();
    eprintln!("grown in {:?}", started.elapsed());
    assert_eq!(
        db.count("SELECT count(*) FROM pgchat.event_queue").await,
        1_000_000
    );

    let mut failures = Vec::new();
    let stale = check_all(&db, "statistics of empty tables", &mut failures).await;
    eprintln!("{stale} plans checked by {:?}", started.elapsed());
    admin.batch_execute("ANALYZE").await.unwrap();
    let fresh = check_all(&db, "fresh statistics", &mut failures).await;
    assert!(
        stale > 100 && fresh > 100,
        "plans checked: {stale}, {fresh}"
    );
    assert!(
        failures.is_empty(),
        "{} plans reach a growing table by scanning it:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
