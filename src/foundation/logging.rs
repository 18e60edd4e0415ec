//! Log lines: on stderr, each naming the worker and the process that wrote it; JSON lines
//! with `NODE_ENV=production` (or `log_format = "json"`), readable text otherwise.
//!
//! Colour only when stderr is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>): a log file or the journal gets plain text, never escape codes.
//!
//! Why a formatter of our own rather than a root span: a span entered on the main thread
//! is not entered on the runtime's other threads, so tasks spawned there would log without
//! it. The worker and pid are fixed for the process, so the formatter writes them itself.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::foundation::config::{Config, LogFormat};

/// Which process of a deployment is logging.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Who {
    /// A single process (`pgchat serve` with one worker): worker 0.
    Single,
    /// Worker `i` of `serve --workers N`.
    Worker(usize),
    /// The supervisor of `serve --workers N`.
    Supervisor,
}

impl Who {
    fn json(self) -> Value {
        match self {
            Who::Single => Value::from(0),
            Who::Worker(i) => Value::from(i),
            Who::Supervisor => Value::from("supervisor"),
        }
    }

    fn text(self) -> String {
        match self {
            Who::Single => "0".into(),
            Who::Worker(i) => i.to_string(),
            Who::Supervisor => "supervisor".into(),
        }
    }
}

/// True when log lines should be JSON: `log_format = "json"`, or `"auto"` in production.
pub(crate) fn json_lines(config: &Config) -> bool {
    match config.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => config.is_production(),
    }
}

/// Colour when stderr is a terminal, unless `NO_COLOR` is set to anything but "".
pub(crate) fn colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`).
pub(crate) fn init(config: &Config, who: Who) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour());
    let pid = std::process::id();
    // A second init (tests run several servers in one process) keeps the first.
    let _ = if json_lines(config) {
        builder.event_format(JsonLine { who, pid }).try_init()
    } else {
        builder
            .event_format(TextLine {
                who,
                pid,
                inner: Format::default().without_time(),
            })
            .try_init()
    };
}

/// `2026-01-01T00:00:00.000000Z worker=1 pid=42  INFO pgchat::app: message key=value`
struct TextLine {
    who: Who,
    pid: u32,
    inner: Format<Full, ()>,
}

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
        let prefix = format!("{time} worker={} pid={}", self.who.text(), self.pid);
        if writer.has_ansi_escapes() {
            write!(writer, "\x1b[2m{prefix}\x1b[0m ")?;
        } else {
            write!(writer, "{prefix} ")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// One JSON object per line: `timestamp`, `level`, `worker`, `pid`, `target`, `message`,
/// then the event's fields, then the names of the spans it happened in (if any).
struct JsonLine {
    who: Who,
    pid: u32,
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("worker".into(), self.who.json());
        line.insert("pid".into(), self.pid.into());
        line.insert("target".into(), meta.target().into());
        event.record(&mut Fields(&mut line));
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope.from_root().map(|s| s.name().into()).collect();
            line.insert("spans".into(), spans.into());
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The event's fields into the line; one named like a key of the line itself (`worker`,
/// `pid`, …) is kept as `field.<name>` rather than replacing it.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        let key = if name != "message" && self.0.contains_key(name) {
            format!("field.{name}")
        } else {
            name.to_string()
        };
        self.0.insert(key, value);
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
}
