//! The managed file when `/etc/resolv.conf` is a mount point, as inside `ip netns
//! exec` (which bind-mounts `/etc/netns/NS/resolv.conf` there) and in containers:
//! rename fails with EBUSY, so weft rewrites it in place, and restores it byte
//! for byte. Runs in a private mount namespace of its own (no mount is visible
//! outside this test process). Needs root; fails (never skips) without it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use nix::sched::{CloneFlags, unshare};
use nix::unistd::Uid;
use weft_dns::system::ManagedFile;
use weft_dns::{SystemPaths, resolv_conf};

const ORIGINAL: &[u8] = b"nameserver 10.1.2.3\nsearch lab\n";

fn run_ok(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}: {st}");
}

#[test]
fn managed_file_on_a_bind_mount_is_written_in_place_and_restored() {
    assert!(
        Uid::effective().is_root(),
        "this test bind-mounts a file in a private mount namespace and must run as root"
    );
    // This thread (and the commands it starts) get a private copy of the mounts.
    unshare(CloneFlags::CLONE_NEWNS).unwrap();
    run_ok(&["mount", "--make-rprivate", "/"]);

    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("netns-resolv.conf");
    let etc = dir.path().join("etc");
    fs::create_dir(&etc).unwrap();
    let target = etc.join("resolv.conf");
    fs::write(&source, ORIGINAL).unwrap();
    fs::set_permissions(&source, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&target, b"placeholder\n").unwrap();
    run_ok(&[
        "mount",
        "--bind",
        source.to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read(&target).unwrap(),
        ORIGINAL,
        "the bind mount is in place"
    );

    let paths = SystemPaths {
        resolv_conf: target.clone(),
        backup_dir: dir.path().join("state"),
        resolved_stub: dir.path().join("absent"),
        resolved_upstreams: dir.path().join("absent"),
    };
    let (mut file, ups) = ManagedFile::start(&paths, "127.0.2.53".parse().unwrap()).unwrap();
    assert_eq!(ups, ["10.1.2.3:53".parse().unwrap()]);
    assert!(
        resolv_conf::is_managed(&fs::read(&source).unwrap()),
        "written through the mount"
    );
    assert!(!etc.join(".resolv.conf.weft-tmp").exists());

    file.restore().unwrap();
    assert_eq!(fs::read(&source).unwrap(), ORIGINAL);
    let _ = Command::new("umount").arg(&target).status();
}
