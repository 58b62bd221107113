//! `resolv.conf` text: a bounded parser, the upstream resolvers it names, and the
//! file weft writes in its place. Pure; the file operations are in
//! [`crate::system`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

/// First line of every file weft writes, and how it recognizes its own file (for
/// example after a crash: it is never taken for the original).
pub const MANAGED_HEADER: &str = "# managed by weft";
/// Comment prefix recording, in weft's file, the upstreams of the original: the
/// last resort if the backup were lost.
const UPSTREAM_COMMENT: &str = "# weft-upstream ";
/// Largest resolv.conf read, bytes (a real one is under 1 KiB).
pub const MAX_LEN: usize = 64 * 1024;
/// Lines looked at.
const MAX_LINES: usize = 1024;
/// Nameservers kept (glibc uses 3).
const MAX_NAMESERVERS: usize = 8;
/// systemd-resolved's stub listeners: behind them, the real upstreams are in
/// `/run/systemd/resolve/resolv.conf`.
pub const RESOLVED_STUBS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(127, 0, 0, 53), Ipv4Addr::new(127, 0, 0, 54)];

/// What weft needs from a resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` addresses, in order (at most 8; scoped IPv6 ones are skipped).
    pub nameservers: Vec<IpAddr>,
    /// `search`, `domain`, `options` and `sortlist` lines, verbatim and in order:
    /// kept in weft's file so name completion and resolver options do not change.
    pub kept_lines: Vec<String>,
    /// Whether this is weft's own file ([`MANAGED_HEADER`]).
    pub managed: bool,
    /// In weft's own file: the upstreams of the original it replaced.
    pub recorded_upstreams: Vec<IpAddr>,
    /// `nameserver` values that were not usable addresses.
    pub skipped: Vec<String>,
}

/// Parses resolv.conf text (resolv.conf(5): `#` or `;` start a comment line; a
/// keyword, blanks, values). Bounded: at most [`MAX_LEN`] bytes and 1024 lines
/// are read; unknown lines are ignored.
pub fn parse(text: &str) -> ResolvConf {
    let text = match text.char_indices().nth(MAX_LEN) {
        Some((cut, _)) => &text[..cut],
        None => text,
    };
    let mut conf = ResolvConf {
        managed: text.starts_with(MANAGED_HEADER),
        ..ResolvConf::default()
    };
    for line in text.lines().take(MAX_LINES) {
        if let Some(ip) = line.strip_prefix(UPSTREAM_COMMENT) {
            if let Ok(ip) = ip.trim().parse() {
                conf.recorded_upstreams.push(ip);
            }
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword {
            "nameserver" => {
                let Some(value) = words.next() else {
                    continue;
                };
                match value.parse::<IpAddr>() {
                    Ok(ip) if conf.nameservers.len() < MAX_NAMESERVERS => {
                        conf.nameservers.push(ip);
                    }
                    Ok(_) => {}
                    Err(_) => conf.skipped.push(value.to_owned()),
                }
            }
            "search" | "domain" | "options" | "sortlist" => {
                conf.kept_lines.push(line.trim_end().to_owned());
            }
            _ => {}
        }
    }
    conf
}

/// Whether `bytes` are a file weft wrote.
pub fn is_managed(bytes: &[u8]) -> bool {
    bytes.starts_with(MANAGED_HEADER.as_bytes())
}

/// The resolvers weft forwards to, on port 53: the original's nameservers minus
/// `ours`; resolved's stub (127.0.0.53/54) is replaced by resolved's own upstreams
/// (`resolved`, the parsed `/run/systemd/resolve/resolv.conf`) when known. In
/// weft's own file, the recorded upstreams of the original are used.
pub fn upstreams(
    original: &ResolvConf,
    ours: IpAddr,
    resolved: Option<&ResolvConf>,
) -> Vec<SocketAddr> {
    let listed = if original.managed {
        &original.recorded_upstreams
    } else {
        &original.nameservers
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in listed {
        let is_stub = matches!(ip, IpAddr::V4(v4) if RESOLVED_STUBS.contains(v4));
        let expanded: Vec<IpAddr> = match (is_stub, resolved) {
            (true, Some(r)) if !r.nameservers.is_empty() => r.nameservers.clone(),
            _ => vec![*ip],
        };
        for ip in expanded {
            if ip != ours && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out.into_iter().map(|ip| SocketAddr::new(ip, 53)).collect()
}

/// The file weft writes: the header (where the original is), the original's
/// upstreams as comments, one `nameserver` (ours, so every name goes through weft
/// and overlay names never reach another resolver), then the original's
/// `search`/`domain`/`options`/`sortlist` lines.
pub fn render_managed(
    original: &ResolvConf,
    upstreams: &[SocketAddr],
    ours: IpAddr,
    backup: &Path,
) -> String {
    let mut out = format!(
        "{MANAGED_HEADER}; the original is in {}; weft restores it on exit\n",
        backup.display()
    );
    for up in upstreams {
        out.push_str(&format!("{UPSTREAM_COMMENT}{}\n", up.ip()));
    }
    out.push_str(&format!("nameserver {ours}\n"));
    for line in &original.kept_lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A plain resolv.conf naming `upstreams`: what weft puts back when its backup of
/// the original was lost (only after a crash and a deleted state directory).
pub fn render_fallback(conf: &ResolvConf, upstreams: &[SocketAddr]) -> String {
    let mut out = String::from(
        "# written by weft: the original resolv.conf was lost; these are its resolvers\n",
    );
    for up in upstreams {
        out.push_str(&format!("nameserver {}\n", up.ip()));
    }
    for line in &conf.kept_lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 53));

    #[test]
    fn parses_nameservers_and_keeps_search_and_options() {
        let conf = parse(
            "# comment\n; other comment\nnameserver 10.0.0.2\nnameserver  2001:db8::1 # trailing\n\
             nameserver fe80::1%eth0\nnameserver bogus\nsearch corp.example lab\noptions edns0 trust-ad\n\
             unknown line\n",
        );
        assert_eq!(
            conf.nameservers,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(conf.skipped, ["fe80::1%eth0", "bogus"]);
        assert_eq!(
            conf.kept_lines,
            ["search corp.example lab", "options edns0 trust-ad"]
        );
        assert!(!conf.managed);
    }

    #[test]
    fn parser_is_bounded() {
        let many = "nameserver 10.0.0.1\n".repeat(100);
        assert_eq!(parse(&many).nameservers.len(), MAX_NAMESERVERS);
        let huge = "x".repeat(MAX_LEN * 4);
        assert_eq!(parse(&huge), ResolvConf::default());
    }

    #[test]
    fn upstreams_skip_ours_and_duplicates() {
        let conf = parse("nameserver 127.0.2.53\nnameserver 10.0.0.2\nnameserver 10.0.0.2\n");
        assert_eq!(
            upstreams(&conf, OURS, None),
            vec!["10.0.0.2:53".parse().unwrap()]
        );
    }

    #[test]
    fn resolved_stub_is_replaced_by_resolved_upstreams() {
        let stub = parse("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n");
        let real = parse("nameserver 192.0.2.1\nnameserver 192.0.2.2\n");
        assert_eq!(
            upstreams(&stub, OURS, Some(&real)),
            vec![
                "192.0.2.1:53".parse().unwrap(),
                "192.0.2.2:53".parse().unwrap()
            ]
        );
        // Without resolved's file the stub itself is the upstream.
        assert_eq!(
            upstreams(&stub, OURS, None),
            vec!["127.0.0.53:53".parse().unwrap()]
        );
    }

    #[test]
    fn managed_file_round_trips_its_recorded_upstreams() {
        let original = parse("nameserver 10.0.0.2\nsearch corp.example\n");
        let ups = upstreams(&original, OURS, None);
        let text = render_managed(
            &original,
            &ups,
            OURS,
            Path::new("/var/lib/weft/resolv.conf.weft-backup"),
        );
        assert!(text.starts_with(
            "# managed by weft; the original is in /var/lib/weft/resolv.conf.weft-backup; weft restores it on exit\n"
        ));
        assert!(is_managed(text.as_bytes()));
        let ours = parse(&text);
        assert!(ours.managed);
        assert_eq!(ours.nameservers, vec![OURS]);
        assert_eq!(ours.kept_lines, ["search corp.example"]);
        // Parsing weft's own file never yields weft as an upstream.
        assert_eq!(upstreams(&ours, OURS, None), ups);
        let fallback = parse(&render_fallback(&ours, &ups));
        assert_eq!(
            fallback.nameservers,
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(!fallback.managed);
    }
}
