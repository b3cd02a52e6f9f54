//! The text forms of a query, in R's notation: cohort expressions
//! (`age >= 65 & sex == "M" & !is.na(bmi)`) and model formulas
//! (`Surv(followup_days, death) ~ age + smoking`). Text only ever becomes
//! the query tree of [`super`]; nothing is evaluated, and the tree a text
//! gives is the one its JSON form gives, so hashes and cache keys do not
//! depend on the form a researcher chose.
//!
//! Parsing is in two steps: a grammar (chumsky) that knows nothing of the
//! dictionary turns the text into a syntax tree with spans, then a lowering
//! step resolves variable names against the dictionary and refuses what the
//! query model cannot express, naming the column of the offending text.

use std::ops::Range;

use chumsky::error::{Rich, RichPattern, RichReason};

use crate::error::{Error, Result};

mod cohort;
mod formula;
mod lex;
mod print;
#[cfg(test)]
mod proptests;
mod request;
#[cfg(test)]
mod tests;

pub use cohort::parse_cohort;
pub use formula::{parse_formula, Formula, Outcome};
pub use print::{cohort_text, formula_text};

/// Longest text accepted for one expression or formula, in bytes.
pub const MAX_TEXT_LEN: usize = 8192;
/// Deepest nesting of parentheses and `!` accepted in one text; deeper
/// texts are refused before the grammar runs, so parsing never recurses
/// without bound.
pub const MAX_NESTING: usize = 64;

/// A piece of syntax and the bytes of the text it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spanned<T> {
    pub node: T,
    pub span: Range<usize>,
}

/// Checks done before any grammar runs: size, control characters and
/// nesting depth.
fn precheck(what: &str, text: &str) -> Result<()> {
    if text.len() > MAX_TEXT_LEN {
        return Err(Error::invalid(format!(
            "the {what} is longer than {MAX_TEXT_LEN} bytes; shorten it"
        )));
    }
    // Line breaks and tabs are layout here, not control characters.
    let flat = text.replace(['\n', '\r', '\t'], " ");
    crate::text::check(&format!("the {what}"), &flat)?;
    if text.trim().is_empty() {
        return Err(Error::invalid(format!("the {what} is empty")));
    }
    // Parentheses open, and the `!`s in a row (each nests the rest).
    let (mut depth, mut bangs, mut quote) = (0usize, 0usize, None);
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '!') if chars.peek().is_some_and(|(_, next)| *next != '=') => bangs += 1,
            (None, c) if c.is_whitespace() => {}
            (None, c) => {
                bangs = 0;
                match c {
                    '(' => depth += 1,
                    ')' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
        }
        if depth + bangs > MAX_NESTING {
            return Err(at_column(
                text,
                at..at + 1,
                format!("the {what} is nested more than {MAX_NESTING} levels deep; simplify it"),
            ));
        }
    }
    Ok(())
}

/// "column 9" or, in a text of several lines, "line 2, column 3"; columns
/// count characters from 1.
pub(crate) fn position(text: &str, byte: usize) -> String {
    let byte = byte.min(text.len());
    let before = &text[..byte];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..byte].chars().count() + 1;
    if text.contains('\n') {
        format!("line {line}, column {column}")
    } else {
        format!("column {column}")
    }
}

/// An invalid-query error located in `text`.
pub(crate) fn at_column(text: &str, span: Range<usize>, message: impl AsRef<str>) -> Error {
    Error::invalid(format!(
        "{}: {}",
        position(text, span.start),
        message.as_ref()
    ))
}

/// Tokens the grammars try only to continue a number or a name, or to
/// refuse an operator with a reason: listing them as "expected" would
/// confuse more than help.
pub(crate) const NOT_WORTH_EXPECTING: &str = ".eE(\\`";

/// The first grammar error, in words. `quiet` lists further tokens not to
/// mention as expected.
fn grammar_error(text: &str, mut errors: Vec<Rich<'_, char>>, quiet: &str) -> Error {
    errors.sort_by_key(|e| e.span().start);
    let Some(e) = errors.into_iter().next() else {
        return Error::internal("the parser failed without saying why");
    };
    let message = match e.reason() {
        RichReason::Custom(m) => m.clone(),
        RichReason::ExpectedFound { expected, found } => {
            let mut wanted: Vec<String> = Vec::new();
            let mut open_string = false;
            for p in expected {
                let w = match p {
                    RichPattern::Token(t) if matches!(**t, '"' | '\'') => {
                        open_string = true;
                        continue;
                    }
                    RichPattern::Token(t)
                        if NOT_WORTH_EXPECTING.contains(**t) || quiet.contains(**t) =>
                    {
                        continue
                    }
                    RichPattern::Token(t) if **t == '%' => "%in%".to_string(),
                    RichPattern::Token(t) => format!("\"{}\"", **t),
                    RichPattern::Label(l)
                        if matches!(l.as_ref(), "whitespace" | "inline whitespace" | "digit") =>
                    {
                        continue
                    }
                    RichPattern::Label(l) => l.to_string(),
                    RichPattern::Identifier(i) => i.clone(),
                    RichPattern::EndOfInput => "the end of the text".into(),
                    _ => continue,
                };
                if !wanted.contains(&w) {
                    wanted.push(w);
                }
            }
            let found = match found.as_deref() {
                None => "the end of the text".to_string(),
                Some(' ') => "a space".to_string(),
                Some('"') => "'\"'".to_string(),
                Some(c) => format!("\"{c}\""),
            };
            if open_string && found == "the end of the text" {
                "the string is not closed; end it with the quote it starts with".to_string()
            } else {
                match wanted.len() {
                    0 => format!("unexpected {found}"),
                    1 => format!("expected {}, found {found}", wanted[0]),
                    n => format!(
                        "expected {} or {}, found {found}",
                        wanted[..n - 1].join(", "),
                        wanted[n - 1]
                    ),
                }
            }
        }
    };
    at_column(text, e.span().into_range(), message)
}

/// The line of `source` an error's "column N" points into, with a caret
/// under that column, for display under the error in a terminal. `None`
/// when the message names no column.
pub fn pointer(source: &str, message: &str) -> Option<String> {
    let number_after = |key: &str| -> Option<usize> {
        let at = message.find(key)? + key.len();
        let digits: String = message[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let column = number_after("column ")?;
    let line = number_after("line ").unwrap_or(1);
    let text = source.lines().nth(line.checked_sub(1)?)?;
    if column == 0 || column > text.chars().count() + 1 {
        return None;
    }
    Some(format!("  {text}\n  {}^", " ".repeat(column - 1)))
}
