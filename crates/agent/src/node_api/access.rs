//! Who may read what: a pure decision over the peer's credentials as the
//! kernel reported them (`SO_PEERCRED`, plus the supplementary groups of the
//! connecting process).

/// The process at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Effective uid at `connect(2)` time (`SO_PEERCRED`).
    pub(crate) uid: u32,
    /// Effective gid at `connect(2)` time (`SO_PEERCRED`).
    pub(crate) gid: u32,
    /// Its supplementary groups (from `/proc/PID/status`; empty when they
    /// could not be read).
    pub(crate) groups: Vec<u32>,
}

/// What a request reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// `GET /v1/metadata`, `GET /v1/data[/{key}]`.
    Data,
    /// `GET /v1/secrets/{key}`.
    Secret,
}

/// `weftd --node-api-group`, `--node-api-secret-uids`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Members of this group (name, gid) read metadata and data.
    pub group: Option<(String, u32)>,
    /// These uids (besides root) read secrets, and metadata and data too.
    pub secret_uids: Vec<u32>,
}

impl Access {
    /// `Ok` when `peer` may read `what`, else why not (for the 403 body).
    pub(crate) fn check(&self, peer: &Peer, what: Resource) -> Result<(), String> {
        if peer.uid == 0 || self.secret_uids.contains(&peer.uid) {
            return Ok(());
        }
        match what {
            Resource::Secret => Err(format!(
                "uid {} may not read secrets: only root{} (weftd --node-api-secret-uids)",
                peer.uid,
                if self.secret_uids.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> =
                        self.secret_uids.iter().map(ToString::to_string).collect();
                    format!(" and uids {}", list.join(","))
                }
            )),
            Resource::Data => match &self.group {
                Some((_, gid)) if peer.gid == *gid || peer.groups.contains(gid) => Ok(()),
                Some((name, gid)) => Err(format!(
                    "uid {} is not in group {name} (gid {gid}), which weftd --node-api-group \
                     lets read metadata and data",
                    peer.uid
                )),
                None => Err(format!(
                    "uid {} may not read metadata or data: only root, as weftd has no \
                     --node-api-group",
                    peer.uid
                )),
            },
        }
    }
}

/// The supplementary groups of process `pid` whose effective uid is `uid`,
/// from `/proc/PID/status`. Empty when the file cannot be read or its
/// effective uid is not `uid` (the process exited and its pid was reused): a
/// peer then counts by its `SO_PEERCRED` gid alone.
pub(crate) fn supplementary_groups(pid: i32, uid: u32) -> Vec<u32> {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(text) => groups_of_status(&text, uid),
        Err(_) => Vec::new(),
    }
}

fn groups_of_status(text: &str, uid: u32) -> Vec<u32> {
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).map(|rest| {
            rest.split_whitespace()
                .filter_map(|v| v.parse::<u32>().ok())
                .collect::<Vec<u32>>()
        })
    };
    // Uid: real, effective, saved, filesystem.
    let effective = field("Uid:").and_then(|ids| ids.get(1).copied());
    if effective != Some(uid) {
        return Vec::new();
    }
    field("Groups:").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_reads_everything_whatever_the_configuration() {
        for access in [
            Access::default(),
            Access {
                group: Some(("weft-node".into(), 900)),
                secret_uids: vec![1000],
            },
        ] {
            for what in [Resource::Data, Resource::Secret] {
                assert_eq!(access.check(&peer(0, 0, &[]), what), Ok(()), "{access:?}");
            }
        }
    }

    #[test]
    fn group_members_read_data_but_not_secrets() {
        let access = Access {
            group: Some(("weft-node".into(), 900)),
            secret_uids: vec![],
        };
        // By primary gid, and by a supplementary group.
        for p in [peer(1000, 900, &[]), peer(1000, 1000, &[27, 900])] {
            assert_eq!(access.check(&p, Resource::Data), Ok(()), "{p:?}");
            let why = access.check(&p, Resource::Secret).unwrap_err();
            assert!(why.contains("uid 1000 may not read secrets"), "{why}");
        }
        let why = access
            .check(&peer(1001, 1001, &[27]), Resource::Data)
            .unwrap_err();
        assert!(why.contains("not in group weft-node (gid 900)"), "{why}");
    }

    #[test]
    fn without_a_group_only_root_and_secret_uids_read_data() {
        let access = Access {
            group: None,
            secret_uids: vec![1000],
        };
        let why = access
            .check(&peer(1001, 0, &[0]), Resource::Data)
            .unwrap_err();
        assert!(why.contains("no --node-api-group"), "{why}");
        assert_eq!(access.check(&peer(1000, 1000, &[]), Resource::Data), Ok(()));
    }

    #[test]
    fn listed_uids_read_secrets_and_others_are_told_who_may() {
        let access = Access {
            group: Some(("weft-node".into(), 900)),
            secret_uids: vec![1000, 1002],
        };
        assert_eq!(
            access.check(&peer(1002, 1002, &[]), Resource::Secret),
            Ok(())
        );
        // Group membership does not give secrets; the gid is not a uid.
        let why = access
            .check(&peer(900, 900, &[900]), Resource::Secret)
            .unwrap_err();
        assert!(why.contains("only root and uids 1000,1002"), "{why}");
    }

    #[test]
    fn supplementary_groups_come_from_proc_status_of_the_same_uid() {
        let status = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n\
                      Groups:\t27 900 \n";
        assert_eq!(groups_of_status(status, 1000), vec![27, 900]);
        // Another uid holds the pid now: its groups do not count.
        assert_eq!(groups_of_status(status, 1001), Vec::<u32>::new());
        assert_eq!(
            groups_of_status("Uid:\t5\t5\t5\t5\nGroups:\n", 5),
            Vec::<u32>::new()
        );
        assert_eq!(groups_of_status("garbage", 0), Vec::<u32>::new());
        // This process.
        let me = nix::unistd::geteuid().as_raw();
        let _ = supplementary_groups(std::process::id() as i32, me);
    }
}
