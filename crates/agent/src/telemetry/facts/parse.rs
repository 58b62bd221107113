//! Pure parsers over the text of `/proc`, `/sys` and os-release files. Each
//! takes what a file held and returns what it could read: a missing line, a
//! garbled number or a file of garbage gives `None`, never an error.

/// `(name, version)` from an os-release file: `NAME` (else `ID`), and
/// `VERSION_ID` (else `VERSION`, else `BUILD_ID`). Values may be quoted
/// with `"` or `'`; `\` escapes the next character inside double quotes.
pub(super) fn os_release(text: &str) -> (Option<String>, Option<String>) {
    let mut vars: std::collections::BTreeMap<&str, String> = std::collections::BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            continue;
        }
        if let Some(v) = unquote(value.trim()) {
            vars.insert(key, v);
        }
    }
    let pick = |keys: &[&'static str]| {
        keys.iter()
            .find_map(|k| vars.get(k).filter(|v| !v.is_empty()).cloned())
    };
    (
        pick(&["NAME", "ID"]),
        pick(&["VERSION_ID", "VERSION", "BUILD_ID"]),
    )
}

/// A shell-style os-release value without its quotes (`None` when a quote
/// is not closed).
fn unquote(v: &str) -> Option<String> {
    let mut chars = v.chars();
    match chars.next() {
        Some('"') => {
            let mut out = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?),
                    '"' => return Some(out),
                    c => out.push(c),
                }
            }
            None
        }
        Some('\'') => {
            let inner = &v[1..];
            inner.find('\'').map(|end| inner[..end].to_owned())
        }
        _ => Some(v.to_owned()),
    }
}

/// What `/proc/cpuinfo` says.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct CpuInfo {
    /// Logical CPUs (`processor` entries).
    pub(super) cores: Option<u32>,
    /// `model name` (x86), `cpu model` (MIPS), `Hardware` (32-bit ARM),
    /// `cpu` (POWER) or `uarch` (RISC-V), the first one present.
    pub(super) model: Option<String>,
    /// The CPU flags include `hypervisor` (x86 guests).
    pub(super) hypervisor_flag: bool,
    /// The file had a `flags` or `Features` line: an absent hypervisor flag
    /// means something.
    pub(super) has_flags: bool,
    /// The device model some ARM kernels give (`Model : Raspberry Pi 4 ...`).
    pub(super) board_model: Option<String>,
}

pub(super) fn cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut processors = 0u32;
    let mut models: [Option<String>; 5] = Default::default();
    const MODEL_KEYS: [&str; 5] = ["model name", "cpu model", "Hardware", "cpu", "uarch"];
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" if value.parse::<u32>().is_ok() => processors += 1,
            "flags" | "Features" => {
                info.has_flags = true;
                if value.split_whitespace().any(|f| f == "hypervisor") {
                    info.hypervisor_flag = true;
                }
            }
            "Model" if !value.is_empty() && info.board_model.is_none() => {
                info.board_model = Some(value.to_owned());
            }
            _ => {
                if let Some(i) = MODEL_KEYS.iter().position(|k| *k == key)
                    && models[i].is_none()
                    && !value.is_empty()
                {
                    models[i] = Some(value.to_owned());
                }
            }
        }
    }
    info.cores = (processors > 0).then_some(processors);
    info.model = models.into_iter().flatten().next();
    info
}

/// The number of CPUs in a kernel CPU list (`/sys/devices/system/cpu/online`:
/// `0-3,6,8-9`).
pub(super) fn cpu_list_len(text: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in text.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = part.parse::<u32>().ok()?;
                (a, a)
            }
        };
        n = n.checked_add(hi.checked_sub(lo)?.checked_add(1)?)?;
    }
    (n > 0).then_some(n)
}

/// `(MemTotal, SwapTotal)` in bytes from `/proc/meminfo` (which counts kB).
pub(super) fn meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let mut parts = rest.split_whitespace();
            let kb: u64 = parts.next()?.parse().ok()?;
            match parts.next() {
                Some("kB") | None => kb.checked_mul(1024),
                Some(_) => None,
            }
        })
    };
    (field("MemTotal"), field("SwapTotal"))
}

/// The boot time in Unix milliseconds from `/proc/stat`'s `btime` line.
pub(super) fn boot_time_ms(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .and_then(|s| s.checked_mul(1000))
}

/// A one-line value (`/proc/sys/kernel/osrelease`, a DMI field, a
/// device-tree string): trimmed of whitespace and NUL terminators; `None`
/// when empty or not one line.
pub(super) fn one_line(text: &str) -> Option<String> {
    let t = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!t.is_empty() && !t.contains('\n')).then(|| t.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quotes_fallbacks_and_garbage() {
        let (name, version) = os_release(
            "# comment\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n",
        );
        assert_eq!(name.as_deref(), Some("Debian GNU/Linux"));
        assert_eq!(version.as_deref(), Some("12"));
        // Arch: no VERSION_ID, a BUILD_ID; single quotes and escapes.
        let (name, version) = os_release("ID=arch\nBUILD_ID=rolling\n");
        assert_eq!(
            (name.as_deref(), version.as_deref()),
            (Some("arch"), Some("rolling"))
        );
        let (name, _) = os_release("NAME='Some OS'\n");
        assert_eq!(name.as_deref(), Some("Some OS"));
        let (name, _) = os_release("NAME=\"Say \\\"hi\\\"\"\n");
        assert_eq!(name.as_deref(), Some("Say \"hi\""));
        // Unclosed quotes, lowercase keys, empty values and binary junk.
        assert_eq!(
            os_release("NAME=\"open\nversion_id=3\nVERSION_ID=\n\u{0}\u{1}=\n"),
            (None, None)
        );
    }

    #[test]
    fn cpuinfo_counts_processors_and_finds_a_model_on_each_architecture() {
        let x86 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse hypervisor\n\n\
                   processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse hypervisor\n";
        let c = cpuinfo(x86);
        assert_eq!(c.cores, Some(2));
        assert_eq!(c.model.as_deref(), Some("AMD EPYC 7B13"));
        assert!(c.hypervisor_flag && c.has_flags);
        // A Raspberry Pi (arm64): no model name, a board model.
        let pi = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n\
                  CPU implementer\t: 0x41\n\nprocessor\t: 1\n\nHardware\t: BCM2835\n\
                  Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        let c = cpuinfo(pi);
        assert_eq!(c.cores, Some(2));
        assert_eq!(c.model.as_deref(), Some("BCM2835"));
        assert_eq!(
            c.board_model.as_deref(),
            Some("Raspberry Pi 4 Model B Rev 1.4")
        );
        assert!(c.has_flags && !c.hypervisor_flag);
        // POWER: `cpu`; garbage: nothing.
        assert_eq!(
            cpuinfo("processor : 0\ncpu : POWER9 (raw), altivec supported\n")
                .model
                .as_deref(),
            Some("POWER9 (raw), altivec supported")
        );
        assert_eq!(
            cpuinfo("processor: x\n\u{fffd}\u{fffd}:::\nflags"),
            CpuInfo::default()
        );
    }

    #[test]
    fn numbers_from_meminfo_stat_and_cpu_lists() {
        let mem = "MemTotal:        8029424 kB\nMemFree:  1 kB\nSwapTotal:       2097148 kB\n";
        assert_eq!(
            meminfo(mem),
            (Some(8_029_424 * 1024), Some(2_097_148 * 1024))
        );
        assert_eq!(meminfo("MemTotal: lots\nSwapTotal: 1 MB\n"), (None, None));
        assert_eq!(meminfo(""), (None, None));
        assert_eq!(
            boot_time_ms("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000_000)
        );
        assert_eq!(boot_time_ms("btime -1\n"), None);
        assert_eq!(boot_time_ms("btime 99999999999999999999\n"), None);
        assert_eq!(cpu_list_len("0-3,6,8-9\n"), Some(7));
        assert_eq!(cpu_list_len("0\n"), Some(1));
        for bad in ["", "3-1", "a-b", "0-", "0-4294967295,0-4294967295"] {
            assert_eq!(cpu_list_len(bad), None, "{bad:?}");
        }
        assert_eq!(
            one_line("6.1.0-18-amd64\n").as_deref(),
            Some("6.1.0-18-amd64")
        );
        assert_eq!(
            one_line("Raspberry Pi 4\0").as_deref(),
            Some("Raspberry Pi 4")
        );
        assert_eq!(one_line(" \n"), None);
        assert_eq!(one_line("two\nlines"), None);
    }
}
