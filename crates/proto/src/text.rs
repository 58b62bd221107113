//! Text that a person reads: characters that can spoof what a terminal shows.
//!
//! Control characters, bidirectional controls (which reorder what follows:
//! `node-\u{202e}gnp.exe` shows as `node-exe.png`) and zero-width characters
//! (which make two different names look the same) are refused in names and
//! hostnames by the controller, and escaped wherever stored or received text
//! is displayed, so a value from before that rule, or from a peer, shows what
//! it really holds.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` can change how the text around it is shown: a control
/// character (C0, DEL, C1), a bidirectional control (U+061C, U+200E, U+200F,
/// U+202A to U+202E, U+2066 to U+2069), a zero-width character (U+200B to
/// U+200D, U+2060, U+FEFF) or a line or paragraph separator (U+2028, U+2029).
pub fn is_spoofing_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// What kind of character [`is_spoofing_char`] refuses, in words.
pub fn spoofing_kind(c: char) -> &'static str {
    match c {
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' => "a zero-width character",
        '\u{2028}' | '\u{2029}' => "a line separator",
        c if c.is_control() => "a control character",
        _ => "a bidirectional control",
    }
}

/// The first character of `s` that [`is_spoofing_char`] refuses, with its
/// position (1-based, in characters).
pub fn find_spoofing_char(s: &str) -> Option<(usize, char)> {
    s.chars()
        .enumerate()
        .find(|(_, c)| is_spoofing_char(*c))
        .map(|(i, c)| (i + 1, c))
}

/// `s` with every character [`is_spoofing_char`] refuses, and the backslash,
/// written as a Rust-style escape (`\u{202e}`, `\n`, `\\`); unchanged (and not
/// copied) when there is none.
pub fn escape_for_display(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || is_spoofing_char(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_spoofing_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofing_characters_are_found_and_escaped() {
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{200B}', '\u{200C}',
            '\u{200D}', '\u{FEFF}', '\u{2060}', '\u{0000}', '\u{001B}', '\u{007F}', '\u{0085}',
            '\u{2028}',
        ] {
            assert!(is_spoofing_char(c), "{:x}", u32::from(c));
            let s = format!("ab{c}cd");
            assert_eq!(find_spoofing_char(&s), Some((3, c)));
            let shown = escape_for_display(&s);
            assert_eq!(shown, format!("ab\\u{{{:x}}}cd", u32::from(c)));
            assert!(!shown.chars().any(is_spoofing_char));
        }
        for c in ['a', 'é', 'ß', '日', '-', ' ', '\u{00AD}'] {
            assert!(!is_spoofing_char(c), "{c}");
        }
        assert_eq!(spoofing_kind('\u{202E}'), "a bidirectional control");
        assert_eq!(spoofing_kind('\u{200B}'), "a zero-width character");
        assert_eq!(spoofing_kind('\u{1B}'), "a control character");
        assert!(matches!(escape_for_display("host-1.lan"), Cow::Borrowed(_)));
        assert_eq!(escape_for_display("a\\u{202e}"), "a\\\\u{202e}");
        assert_eq!(escape_for_display("x\ny\t"), "x\\ny\\t");
        assert_eq!(find_spoofing_char("plain"), None);
        // Positions count characters, not bytes.
        assert_eq!(find_spoofing_char("日本\u{202E}"), Some((3, '\u{202E}')));
    }
}
