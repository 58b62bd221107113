//! Test fixtures shared by the system backends' tests.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{CommandRunner, SystemPaths};

pub(super) const OURS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 53));
pub(super) const ORIGINAL: &[u8] =
    b"# from dhcp\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nsearch corp.example\noptions edns0\n";

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) paths: SystemPaths,
}

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    fs::create_dir(&etc).unwrap();
    let paths = SystemPaths {
        resolv_conf: etc.join("resolv.conf"),
        backup_dir: dir.path().join("state"),
        resolved_stub: dir.path().join("run/stub-resolv.conf"),
        resolved_upstreams: dir.path().join("run/resolv.conf"),
    };
    Fixture { _dir: dir, paths }
}

pub(super) fn write_original(path: &Path, bytes: &[u8], mode: u32) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub(super) fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[derive(Debug, Default, Clone)]
pub(super) struct Recorder {
    pub(super) calls: Arc<Mutex<Vec<String>>>,
    pub(super) dns_out: String,
    pub(super) domain_out: String,
}

impl CommandRunner for Recorder {
    fn run(&self, args: &[String]) -> Result<String, String> {
        self.calls.lock().unwrap().push(args.join(" "));
        Ok(match args.get(1).map(String::as_str) {
            Some("dns") if args.len() == 3 => self.dns_out.clone(),
            Some("domain") if args.len() == 3 => self.domain_out.clone(),
            _ => String::new(),
        })
    }
}
