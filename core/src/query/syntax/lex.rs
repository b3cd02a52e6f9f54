//! The lexical pieces cohort expressions and formulas share: names,
//! numbers and strings, as R writes them.

use chumsky::prelude::*;

use super::Spanned;

pub(super) type Extra<'a> = extra::Err<Rich<'a, char>>;

/// A name: R's syntactic names (letters, digits, `.` and `_`, not starting
/// with a digit) or any name between backticks (`` `blood-pressure` ``).
pub(super) fn name<'a>() -> impl Parser<'a, &'a str, String, Extra<'a>> + Clone {
    let plain = any()
        .filter(|c: &char| c.is_ascii_alphabetic() || *c == '.' || *c == '_')
        .then(
            any()
                .filter(|c: &char| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .repeated(),
        )
        .to_slice()
        .map(str::to_string);
    let quoted = none_of("`\n")
        .repeated()
        .at_least(1)
        .to_slice()
        .map(str::to_string)
        .delimited_by(just('`'), just('`'));
    choice((plain, quoted)).labelled("a variable name")
}

/// A name with its span.
pub(super) fn spanned_name<'a>() -> impl Parser<'a, &'a str, Spanned<String>, Extra<'a>> + Clone {
    name().map_with(|node, e| Spanned {
        node,
        span: e.span().into_range(),
    })
}

/// A decimal number as written, sign included: `65`, `-2.5`, `1e-3`.
pub(super) fn number<'a>() -> impl Parser<'a, &'a str, String, Extra<'a>> + Clone {
    let digits = text::digits(10);
    let unsigned = digits
        .then(just('.').then(digits.or_not()).or_not())
        .then(
            one_of("eE")
                .then(one_of("+-").or_not())
                .then(digits)
                .or_not(),
        )
        .to_slice();
    just('-')
        .then_ignore(text::inline_whitespace())
        .or_not()
        .then(unsigned)
        .map(|(minus, digits): (Option<char>, &str)| match minus {
            Some(_) => format!("-{digits}"),
            None => digits.to_string(),
        })
        .labelled("a number")
}

/// A string in double or single quotes; `\\`, `\"` and `\'` are the only
/// escapes.
pub(super) fn string<'a>() -> impl Parser<'a, &'a str, String, Extra<'a>> + Clone {
    let escape = just('\\')
        .ignore_then(any())
        .validate(|c: char, e, emitter| {
            if !matches!(c, '\\' | '"' | '\'') {
                emitter.emit(Rich::custom(
                    e.span(),
                    "unsupported escape in a string; only \\\\, \\\" and \\' may follow a backslash",
                ));
            }
            c
        });
    let body = |q: char| {
        none_of([q, '\\'])
            .or(escape)
            .repeated()
            .collect::<String>()
            .delimited_by(just(q), just(q))
    };
    choice((body('"'), body('\''))).labelled("a string")
}

/// A string written back so that [`string`] reads it again.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A name written back so that [`name`] reads it again: plain when it is
/// a syntactic R name, between backticks otherwise.
pub(super) fn name_text(s: &str) -> String {
    let mut chars = s.chars();
    let plain = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '.' || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        && !matches!(s, "TRUE" | "FALSE");
    if plain {
        s.to_string()
    } else {
        format!("`{s}`")
    }
}
