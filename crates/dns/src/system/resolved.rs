//! The systemd-resolved backend: per-link DNS through `resolvectl`.

use std::net::IpAddr;

use super::{CommandRunner, Drift};
use crate::error::DnsError;

/// Per-link DNS through `resolvectl`.
#[derive(Debug)]
pub struct ResolvedLink {
    runner: Box<dyn CommandRunner>,
    link: Option<(String, IpAddr)>,
    domains: Vec<String>,
}

impl ResolvedLink {
    /// Nothing applied yet: [`ResolvedLink::set_link`] and
    /// [`ResolvedLink::set_domains`] do it.
    pub fn new(runner: Box<dyn CommandRunner>) -> Self {
        Self {
            runner,
            link: None,
            domains: Vec::new(),
        }
    }

    /// The commands that point resolved's `ifname` at `server` for `domains`
    /// (routing domains only). The default route only when `domains` has the
    /// root `.` (`weftd --dns system`: `~.` sends every name to weft).
    pub fn apply_commands(ifname: &str, server: IpAddr, domains: &[String]) -> Vec<Vec<String>> {
        let mut domain = vec!["resolvectl".into(), "domain".into(), ifname.into()];
        domain.extend(domains.iter().map(|d| format!("~{d}")));
        let default_route = domains.iter().any(|d| d == ".");
        vec![
            vec![
                "resolvectl".into(),
                "dns".into(),
                ifname.into(),
                server.to_string(),
            ],
            domain,
            vec![
                "resolvectl".into(),
                "default-route".into(),
                ifname.into(),
                default_route.to_string(),
            ],
        ]
    }

    /// The command that removes weft's settings from `ifname`.
    pub fn revert_command(ifname: &str) -> Vec<String> {
        vec!["resolvectl".into(), "revert".into(), ifname.into()]
    }

    pub(super) fn set_link(&mut self, ifname: &str, server: IpAddr) -> Result<(), DnsError> {
        if let Some((old, _)) = &self.link
            && old != ifname
        {
            let old = old.clone();
            self.run(&Self::revert_command(&old))?;
        }
        self.link = Some((ifname.to_owned(), server));
        self.apply()
    }

    pub(super) fn set_domains(&mut self, domains: &[String]) -> Result<(), DnsError> {
        if self.domains != domains {
            self.domains = domains.to_vec();
            self.apply()?;
        }
        Ok(())
    }

    fn apply(&mut self) -> Result<(), DnsError> {
        let Some((ifname, server)) = &self.link else {
            return Ok(());
        };
        for (i, cmd) in Self::apply_commands(ifname, *server, &self.domains)
            .iter()
            .enumerate()
        {
            match self.run(cmd) {
                Ok(_) => {}
                // `default-route` needs systemd 240+; the routing domain alone
                // already keeps other names away on current versions.
                Err(e) if i == 2 => tracing::debug!("{e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Re-applies when resolved no longer lists weft's server or domains for the
    /// link (another tool reset it, or networkd reconfigured the link).
    pub(super) fn check_drift(&mut self) -> Result<Drift, DnsError> {
        let Some((ifname, server)) = self.link.clone() else {
            return Ok(Drift::Unchanged);
        };
        let dns = self.run(&["resolvectl".into(), "dns".into(), ifname.clone()])?;
        let domain = self.run(&["resolvectl".into(), "domain".into(), ifname])?;
        if resolved_shows(&dns, &domain, server, &self.domains) {
            return Ok(Drift::Unchanged);
        }
        self.apply()?;
        Ok(Drift::Repaired)
    }

    pub(super) fn revert(&mut self) -> Result<(), DnsError> {
        if let Some((ifname, _)) = self.link.take() {
            // The link may be gone already (weft removed it): nothing to revert.
            if let Err(e) = self.run(&Self::revert_command(&ifname)) {
                tracing::debug!("{e}");
            }
        }
        Ok(())
    }

    fn run(&self, cmd: &[String]) -> Result<String, DnsError> {
        self.runner.run(cmd).map_err(|message| DnsError::Command {
            command: cmd.join(" "),
            message,
        })
    }
}

/// Whether `resolvectl dns LINK` / `resolvectl domain LINK` output (`Link 7
/// (weft0): 100.64.0.1`) shows `server` and every `~domain`.
fn resolved_shows(dns: &str, domain: &str, server: IpAddr, domains: &[String]) -> bool {
    let values = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.split_once("):").map(|(_, v)| v))
            .flat_map(|v| v.split_whitespace().map(str::to_owned))
            .collect()
    };
    let servers = values(dns);
    let routes = values(domain);
    servers
        .iter()
        .any(|s| s.parse::<IpAddr>().is_ok_and(|ip| ip == server))
        && domains.iter().all(|d| {
            routes
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&format!("~{d}")))
        })
}

#[cfg(test)]
mod tests {
    use super::super::testing::Recorder;
    use super::*;

    #[test]
    fn resolved_commands() {
        let server: IpAddr = "100.64.0.1".parse().unwrap();
        let cmds = ResolvedLink::apply_commands(
            "weft0",
            server,
            &["weft.internal".into(), "corp.example".into()],
        );
        let cmds: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            cmds,
            [
                "resolvectl dns weft0 100.64.0.1",
                "resolvectl domain weft0 ~weft.internal ~corp.example",
                "resolvectl default-route weft0 false",
            ]
        );
        assert_eq!(
            ResolvedLink::revert_command("weft0").join(" "),
            "resolvectl revert weft0"
        );
        // `--dns system`: every name through weft's link, which is the default route.
        let whole =
            ResolvedLink::apply_commands("weft0", server, &["weft.internal".into(), ".".into()]);
        let whole: Vec<String> = whole.iter().map(|c| c.join(" ")).collect();
        assert_eq!(whole[1], "resolvectl domain weft0 ~weft.internal ~.");
        assert_eq!(whole[2], "resolvectl default-route weft0 true");

        let rec = Recorder {
            dns_out: "Link 7 (weft0): 100.64.0.1\n".into(),
            domain_out: "Link 7 (weft0): ~weft.internal\n".into(),
            ..Recorder::default()
        };
        let calls = rec.calls.clone();
        let mut link = ResolvedLink::new(Box::new(rec));
        link.set_domains(&["weft.internal".into()]).unwrap();
        assert!(
            calls.lock().unwrap().is_empty(),
            "nothing runs before the link is known"
        );
        link.set_link("weft0", server).unwrap();
        assert_eq!(calls.lock().unwrap().len(), 3);
        assert_eq!(link.check_drift().unwrap(), Drift::Unchanged);
        link.set_domains(&["weft.internal".into(), "corp.example".into()])
            .unwrap();
        assert_eq!(
            link.check_drift().unwrap(),
            Drift::Repaired,
            "corp.example is not shown"
        );
        link.revert().unwrap();
        assert_eq!(
            calls.lock().unwrap().last().unwrap(),
            "resolvectl revert weft0"
        );
        link.revert().unwrap();
        assert_eq!(
            calls.lock().unwrap().last().unwrap(),
            "resolvectl revert weft0"
        );
    }
}
