//! Log set-up shared by both daemons: human-readable text by default, one
//! JSON object per line with `--log-format json` or `PLEXUS_LOG_FORMAT=json`
//! for log shippers. The level follows `RUST_LOG` (default `info`). JSON
//! lines carry the event's fields, the current span and the span list, so
//! a job's `job_id`, `study` and `node` come with every line inside it.

use std::str::FromStr;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::OpsError;

/// The environment variable that selects the log format.
pub const LOG_FORMAT_ENV: &str = "PLEXUS_LOG_FORMAT";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = OpsError;

    fn from_str(s: &str) -> Result<Self, OpsError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(OpsError::LogFormat(other.to_string())),
        }
    }
}

/// A subscriber writing `format` lines to `writer`, filtered by `filter`
/// (an `EnvFilter` directive such as `info` or `plexus_node=debug`), with
/// no colour codes.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    build(format, filter, writer, false)
}

fn build<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

/// Colour codes only for a person at a terminal: a log written to a file,
/// a pipe or the journal gets plain text. `NO_COLOR` turns them off too.
fn colour(stdout_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the process-wide subscriber writing to stdout, where
/// systemd's journal and container runtimes collect it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = colour(
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        std::env::var_os("NO_COLOR"),
    );
    // A second init (tests starting a daemon twice) keeps the first.
    let _ = tracing::subscriber::set_global_default(build(format, filter, std::io::stdout, ansi));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_unknown_ones_say_what_to_use() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!(" TEXT ".parse::<LogFormat>().unwrap(), LogFormat::Text);
        let e = "yaml".parse::<LogFormat>().unwrap_err().to_string();
        assert_eq!(e, "log format \"yaml\" is not known; use text or json");
    }

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }

    #[test]
    fn lines_written_elsewhere_than_a_terminal_carry_no_colour_codes() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(buf.clone());
        let sub = subscriber(LogFormat::Text, EnvFilter::new("info"), move || {
            sink.clone()
        });
        tracing::subscriber::with_default(sub, || tracing::warn!(node = "a", "disk full"));
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(text.contains("disk full"), "{text}");
        assert!(!text.contains('\u{1b}'), "colour codes in {text:?}");
    }
}
