//! Human output of `weft admin`: aligned tables, dates, durations.
//!
//! Every table cell is shown through [`safe`]: a stored value with control,
//! bidirectional or zero-width characters (a node's reported host name, a
//! token description, an audit detail, a value stored before the controller
//! refused them) shows those characters escaped instead of letting them
//! reorder or hide what the admin reads.

use std::borrow::Cow;
use std::io::Write as _;

/// Writes to stdout, ignoring a closed pipe (`weft admin … | head`).
pub(crate) fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// `s` with control, bidirectional and zero-width characters (and `\`)
/// escaped, as `\u{202e}`: how any stored or reported text is displayed.
pub(super) fn safe(s: &str) -> Cow<'_, str> {
    weft_proto::text::escape_for_display(s)
}

/// Renders rows under headers, columns padded to the widest cell; cells are
/// shown through [`safe`].
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| safe(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c.chars().count());
            s.extend(std::iter::repeat_n(' ', pad));
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&mut headers.iter().copied());
    for row in &rows {
        out.push_str(&line(&mut row.iter().map(AsRef::as_ref)));
    }
    out
}

/// RFC 3339 UTC, `YYYY-MM-DDTHH:MM:SSZ`, from Unix milliseconds (what every
/// JSON time carries): how every time is shown to people (ARCHITECTURE.md,
/// "Conventions for output").
pub(super) fn datetime(unix_ms: u64) -> String {
    let unix = unix_ms / 1000;
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let rem = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses `90`, `90s`, `15m`, `24h`, `7d`, `2w` into seconds.
pub(super) fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 24h or 7d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{s:?}: unit must be s, m, h, d or w")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations() {
        assert_eq!(datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(datetime(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(datetime(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(datetime(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("90"), Ok(90));
        assert!(parse_duration("3y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1\n");
    }

    #[test]
    fn stored_spoofing_characters_are_escaped_in_tables() {
        // A host name stored before such names were refused: the bidi override
        // would show "evil-exe.png"; a zero-width space would hide in "a​b".
        let t = table(
            &["NAME", "HOSTNAME", "NOTE"],
            &[vec![
                "web-1".into(),
                "evil-\u{202e}gnp.exe".into(),
                "a\u{200b}b\u{1b}[2J\u{2066}".into(),
            ]],
        );
        assert_eq!(
            t,
            "NAME   HOSTNAME              NOTE\nweb-1  evil-\\u{202e}gnp.exe  a\\u{200b}b\\u{1b}[2J\\u{2066}\n"
        );
        assert!(
            !t.chars()
                .any(|c| c != '\n' && weft_proto::text::is_spoofing_char(c))
        );
        assert_eq!(safe("büro-pc"), "büro-pc");
        assert_eq!(safe("x\u{feff}"), "x\\u{feff}");
    }
}
