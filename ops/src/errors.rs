//! How a command's error reaches the person who ran it: one line, each
//! cause once, no backtrace.

use std::error::Error;

/// `error` and its causes on one line, joined by ": ", leaving out a cause
/// whose text the line already holds (many errors quote their source in
/// their own message, and printing the chain as well said everything
/// twice: "cannot listen on …: Address in use: Address in use"). Never a
/// backtrace, whatever `RUST_BACKTRACE` says: a start-up error is for an
/// operator, not a debugger.
pub fn error_text(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !more.is_empty() && !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the data file {path}: {source}")]
    struct Quoting {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the node cannot start")]
    struct Plain(#[source] std::io::Error);

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let e = Quoting {
            path: "/data/a.parquet",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(
            error_text(&e),
            "cannot read the data file /data/a.parquet: no such file"
        );
    }

    #[test]
    fn a_cause_not_quoted_is_added_once() {
        let e = Plain(std::io::Error::other("permission denied"));
        assert_eq!(error_text(&e), "the node cannot start: permission denied");
    }
}
