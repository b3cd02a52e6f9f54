//! Text people read: the rule for strings a researcher, an admin or a node
//! controls (study ids and titles, variable names, category labels,
//! descriptions, purposes, names, query values), and the escaped form every
//! human output shows.
//!
//! A control character (Unicode general category Cc: the C0 set, DEL and
//! the C1 set) or a bidirectional formatting character (the Unicode
//! property Bidi_Control: U+061C, U+200E, U+200F, the embeddings and
//! overrides U+202A..U+202E, the isolates U+2066..U+2069) in such a string
//! can recolour, move or clear an auditor's terminal, forge a line of a
//! log, or reorder what a line shows. They are refused where the string is
//! received ([`check`]), naming the field and the code point, never the
//! character itself; and escaped wherever text is printed for people
//! ([`escape`]), because old logs and node-supplied text exist.

use std::borrow::Cow;
use std::fmt::Write;

use crate::error::{Error, Result};

/// Whether `c` is refused in text and escaped in output: Cc or Bidi_Control.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// Refuses `value` when it holds a control or bidirectional formatting
/// character, with an `invalid` error naming `field` and the character's
/// code point. `field` must itself be safe to print (a fixed name or a
/// path of fixed names and indexes).
pub fn check(field: &str, value: &str) -> Result<()> {
    match value.chars().enumerate().find(|(_, c)| is_unsafe(*c)) {
        None => Ok(()),
        Some((i, c)) => Err(Error::invalid(format!(
            "{field} holds the control character U+{:04X} (character {} of the text); remove it: control characters and bidirectional formatting characters are not accepted in text that people read",
            c as u32,
            i + 1
        ))),
    }
}

/// [`check`] for each item of a list, naming `field[i]`.
pub fn check_all<S: AsRef<str>>(field: &str, values: &[S]) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        if v.as_ref().chars().any(is_unsafe) {
            return check(&format!("{field}[{i}]"), v.as_ref());
        }
    }
    Ok(())
}

/// `s` with every unsafe character written as a Rust-style escape
/// (`\u{1b}`), for tables and plain text. Borrowed when nothing changes.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_with(s, |_| false, |out, c| write!(out, "\\u{{{:x}}}", c as u32))
}

/// [`escape`] for a whole rendered text whose own line breaks are part of
/// the output (a table, a TOML document): `\n` stays, everything else
/// unsafe (including `\r`, which would overwrite the line) is escaped.
pub fn escape_keeping_lines(s: &str) -> Cow<'_, str> {
    escape_with(
        s,
        |c| c == '\n',
        |out, c| write!(out, "\\u{{{:x}}}", c as u32),
    )
}

/// JSON text (as serde_json writes it) with the unsafe characters serde
/// leaves raw (DEL, the C1 set, Bidi_Control) written as `\uXXXX` escapes:
/// still the same JSON value, and safe on a terminal. Line breaks are the
/// pretty printer's (serde escapes those inside strings), so they stay.
pub fn escape_json(s: &str) -> Cow<'_, str> {
    escape_with(
        s,
        |c| c == '\n',
        |out, c| write!(out, "\\u{:04x}", c as u32),
    )
}

fn escape_with<'a>(
    s: &'a str,
    keep: impl Fn(char) -> bool,
    write_escape: impl Fn(&mut String, char) -> std::fmt::Result,
) -> Cow<'a, str> {
    if !s.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_unsafe(c) && !keep(c) {
            write_escape(&mut out, c).expect("writing to a string");
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_unsafe_and_others_are_not() {
        for c in [
            '\0', '\n', '\r', '\t', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}',
        ] {
            assert!(is_unsafe(c), "{:x}", c as u32);
        }
        for c in [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}',
        ] {
            assert!(is_unsafe(c), "{:x}", c as u32);
        }
        for c in [
            'a', ' ', 'é', 'ß', '中', '\u{2029}', '\u{202F}', '\u{2065}', '"',
        ] {
            assert!(!is_unsafe(c), "{:x}", c as u32);
        }
    }

    #[test]
    fn check_names_the_field_and_code_point_without_echoing_the_character() {
        check("study title", "Abdominal aortic aneurysm: outcomes (ß, 中)").unwrap();
        let e = check("study title", "red \u{1b}[31m alert").unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Invalid);
        assert!(
            e.message.starts_with(
                "study title holds the control character U+001B (character 5 of the text)"
            ),
            "{e}"
        );
        assert!(!e.message.chars().any(is_unsafe), "{e:?}");
        let e = check("purpose.disease", "abc\u{202E}fdp.exe").unwrap_err();
        assert!(e.message.contains("U+202E"), "{e}");
        let e = check_all("variables", &["age", "sex\nforged"]).unwrap_err();
        assert!(e.message.starts_with("variables[1] holds"), "{e}");
        assert!(e.message.contains("U+000A"), "{e}");
    }

    #[test]
    fn escapes_are_visible_and_leave_clean_text_borrowed() {
        assert!(matches!(escape("hospital-a"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\u{1b}[2Jb\nc\u{202E}d"),
            "a\\u{1b}[2Jb\\u{a}c\\u{202e}d"
        );
        assert_eq!(escape_keeping_lines("row 1\r\nrow 2"), "row 1\\u{d}\nrow 2");
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "detail": "a\u{1b}b\u{7f}c\u{9b}d\u{202E}e\nf"
        }))
        .unwrap();
        let safe = escape_json(&json);
        assert!(!safe.chars().any(|c| is_unsafe(c) && c != '\n'), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["detail"], "a\u{1b}b\u{7f}c\u{9b}d\u{202E}e\nf");
    }
}
