//! The underlay's lines of `weft status` (link monitoring).

use std::fmt::Write as _;

use weft_proto::local::UnderlayStatus;
use weft_proto::text::escape_for_display as safe;

/// Appends the `underlay` lines for `u` to `o`: which interface carries the
/// default route, the last change, then one line per interface.
pub(super) fn render(o: &mut String, u: &UnderlayStatus, now_ms: u64) {
    let via = |r: &Option<String>| {
        r.as_deref()
            .map_or_else(|| "none".to_owned(), |n| safe(n).into_owned())
    };
    let mut head = format!("default route via {}", via(&u.default_route_v4));
    if u.default_route_v6.is_some() {
        let _ = write!(head, " (IPv6 via {})", via(&u.default_route_v6));
    }
    if let Some(at) = u.last_change_ms {
        let _ = write!(
            head,
            "; {} change{}, last {}s ago: {}",
            u.changes,
            if u.changes == 1 { "" } else { "s" },
            now_ms.saturating_sub(at) / 1000,
            safe(&u.last_change.join(", "))
        );
    }
    let _ = writeln!(o, "underlay  {head}");
    if let Some(e) = &u.error {
        let _ = writeln!(o, "          link monitoring failed: {}", safe(e));
    }
    for i in &u.interfaces {
        let state = if i.up { "up" } else { "down" };
        let default = if u.default_route_v4.as_ref() == Some(&i.name)
            || u.default_route_v6.as_ref() == Some(&i.name)
        {
            "  (default route)"
        } else {
            ""
        };
        let addrs = if i.addresses.is_empty() {
            "-".to_owned()
        } else {
            i.addresses.join(", ")
        };
        let _ = writeln!(o, "  {:<14} {state:<4}  {addrs}{default}", safe(&i.name));
    }
}
