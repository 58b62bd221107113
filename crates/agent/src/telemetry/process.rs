//! This process's CPU time and resident memory, from `/proc/self/stat` and
//! `/proc/self/statm` (read at scrape time; `None` when unreadable).

/// CPU time used (user + system), seconds.
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_seconds(&stat, clock_ticks()?)
}

/// Resident set size, bytes.
pub(crate) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    parse_resident_bytes(&statm, page_size()?)
}

fn clock_ticks() -> Option<f64> {
    use nix::unistd::{SysconfVar, sysconf};
    let t = sysconf(SysconfVar::CLK_TCK).ok()??;
    (t > 0).then_some(t as f64)
}

fn page_size() -> Option<u64> {
    use nix::unistd::{SysconfVar, sysconf};
    u64::try_from(sysconf(SysconfVar::PAGE_SIZE).ok()??).ok()
}

/// `utime + stime` (fields 14 and 15 of `/proc/PID/stat`) in seconds. The
/// command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so fields are counted after its last `)`.
fn parse_cpu_seconds(stat: &str, ticks_per_second: f64) -> Option<f64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // After ")": field 3 (state) is the first; utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second)
}

/// The second field of `/proc/PID/statm` (resident pages) in bytes.
fn parse_resident_bytes(statm: &str, page: u64) -> Option<u64> {
    let pages: u64 = statm.split_ascii_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_read_after_the_command_name() {
        // A command name with spaces and a parenthesis, as a process may set it.
        let stat = "4242 (weft d) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 20000000 1500 18446744073709551615";
        assert_eq!(parse_cpu_seconds(stat, 100.0), Some(3.0));
        assert_eq!(parse_cpu_seconds("4242 (weftd) S 1 2", 100.0), None);
        assert_eq!(parse_cpu_seconds("garbage", 100.0), None);
        assert_eq!(parse_cpu_seconds("", 100.0), None);
    }

    #[test]
    fn resident_bytes_are_pages_times_page_size() {
        assert_eq!(
            parse_resident_bytes("5000 1024 300 10 0 600 0\n", 4096),
            Some(4 << 20)
        );
        assert_eq!(parse_resident_bytes("5000", 4096), None);
        assert_eq!(parse_resident_bytes("a b c", 4096), None);
    }

    #[test]
    fn this_process_is_readable() {
        assert!(cpu_seconds().is_some_and(|s| s >= 0.0));
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
