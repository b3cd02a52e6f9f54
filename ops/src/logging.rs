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
/// (an `EnvFilter` directive such as `info` or `plexus_node=debug`).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
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

/// Installs the process-wide subscriber writing to stdout, where
/// systemd's journal and container runtimes collect it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // A second init (tests starting a daemon twice) keeps the first.
    let _ = tracing::subscriber::set_global_default(subscriber(format, filter, std::io::stdout));
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
}
