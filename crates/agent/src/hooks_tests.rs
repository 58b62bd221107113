//! The hooks directory's trust rules, the listing's hashes, and a run that
//! gets exactly the bytes that were hashed. The owner rules are tested with
//! the test's own uid as the required owner (and another uid as the wrong
//! one), so they run without root too.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};

use super::*;

/// A hooks directory (mode 0700) in a temporary directory, and its owner.
fn hooks_dir() -> (tempfile::TempDir, PathBuf, u32) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hooks");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o700);
    let owner = std::fs::metadata(&dir).unwrap().uid();
    (tmp, dir, owner)
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write_hook(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    chmod(&p, 0o700);
    sha256_hex(body.as_bytes())
}

#[test]
fn a_missing_directory_is_no_hook_and_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    assert_eq!(list(&missing), Listing::default());
    let err = hook_for_run(&missing, "x", &["a".repeat(64)]).unwrap_err();
    assert!(matches!(err, HookRefusal::NotFound { .. }), "{err}");
}

#[test]
fn every_hook_is_listed_with_its_sha256_and_dotfiles_are_ignored() {
    let (_tmp, dir, owner) = hooks_dir();
    let a = write_hook(&dir, "backup", "#!/bin/sh\necho a\n");
    let b = write_hook(&dir, "rotate-logs.sh", "#!/bin/sh\necho b\n");
    write_hook(&dir, ".backup.swp", "junk");
    let l = list_owned_by(&dir, owner);
    assert_eq!(l.error, None);
    assert_eq!(
        l.hooks,
        vec![
            HookHash {
                name: "backup".into(),
                sha256: a.clone(),
            },
            HookHash {
                name: "rotate-logs.sh".into(),
                sha256: b,
            },
        ]
    );
    // What sha256sum prints for the same bytes.
    assert_eq!(
        a,
        "96d68d5048de839b8d6443131b2c6260086c5d3bbbb9095db85fe0d8847773b1"
    );
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn a_directory_with_group_or_other_bits_is_refused_and_no_hook_runs() {
    let (_tmp, dir, owner) = hooks_dir();
    let h = write_hook(&dir, "backup", "#!/bin/sh\n");
    for mode in [0o750, 0o705, 0o755, 0o777] {
        chmod(&dir, mode);
        let l = list_owned_by(&dir, owner);
        assert!(l.hooks.is_empty(), "mode {mode:o}");
        let e = l.error.unwrap();
        assert!(e.contains(&format!("has mode {mode:04o}")), "{e}");
        assert!(e.contains("no hook runs"), "{e}");
        let r = hook_for_run_owned_by(&dir, "backup", std::slice::from_ref(&h), owner).unwrap_err();
        assert!(matches!(r, HookRefusal::Dir(_)), "{r}");
    }
    // 0700 and stricter are accepted.
    chmod(&dir, 0o500);
    assert_eq!(list_owned_by(&dir, owner).error, None);
    chmod(&dir, 0o700);
}

#[test]
fn a_directory_of_another_owner_is_refused() {
    let (_tmp, dir, owner) = hooks_dir();
    let h = write_hook(&dir, "backup", "#!/bin/sh\n");
    let other = owner.wrapping_add(1);
    let e = list_owned_by(&dir, other).error.unwrap();
    assert!(
        e.contains(&format!("owned by uid {owner} (must be {other}")),
        "{e}"
    );
    assert!(matches!(
        hook_for_run_owned_by(&dir, "backup", &[h], other),
        Err(HookRefusal::Dir(_))
    ));
    // The real rule is root: a directory the test (not root) owns is refused,
    // and when the test runs as root, one owned by nobody is.
    if owner == 0 {
        nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    }
    assert!(list(&dir).error.unwrap().contains("must be 0: root"));
}

#[test]
fn a_symlinked_directory_or_hook_is_refused() {
    let (tmp, dir, owner) = hooks_dir();
    let h = write_hook(&dir, "real", "#!/bin/sh\n");
    // The directory itself a symlink to a good directory.
    let link = tmp.path().join("link");
    symlink(&dir, &link).unwrap();
    let e = list_owned_by(&link, owner).error.unwrap();
    assert!(e.contains("is a symlink"), "{e}");
    assert!(matches!(
        hook_for_run_owned_by(&link, "real", std::slice::from_ref(&h), owner),
        Err(HookRefusal::Dir(_))
    ));
    // A hook that is a symlink to a good file.
    symlink(dir.join("real"), dir.join("alias")).unwrap();
    let l = list_owned_by(&dir, owner);
    assert_eq!(l.hooks.len(), 1, "only the real file");
    assert!(l.error.unwrap().contains("hook alias: a symlink"));
    let r = hook_for_run_owned_by(&dir, "alias", &[h], owner).unwrap_err();
    assert!(
        matches!(&r, HookRefusal::File { why, .. } if why == "a symlink"),
        "{r}"
    );
}

#[test]
fn a_group_writable_or_foreign_or_odd_hook_file_is_refused() {
    let (_tmp, dir, owner) = hooks_dir();
    let h = write_hook(&dir, "gw", "#!/bin/sh\n");
    chmod(&dir.join("gw"), 0o770);
    let r = hook_for_run_owned_by(&dir, "gw", std::slice::from_ref(&h), owner).unwrap_err();
    assert!(
        matches!(&r, HookRefusal::File { why, .. } if why.contains("mode 0770 is group- or other-writable")),
        "{r}"
    );
    chmod(&dir.join("gw"), 0o702);
    assert!(hook_for_run_owned_by(&dir, "gw", std::slice::from_ref(&h), owner).is_err());
    // Readable by others is fine (not writable).
    chmod(&dir.join("gw"), 0o755);
    assert!(hook_for_run_owned_by(&dir, "gw", std::slice::from_ref(&h), owner).is_ok());
    // Another owner.
    let r = hook_for_run_owned_by(&dir, "gw", &[h], owner.wrapping_add(1)).unwrap_err();
    assert!(
        matches!(r, HookRefusal::Dir(_)),
        "the directory is checked first"
    );
    // A FIFO is refused without blocking, a directory too.
    nix::unistd::mkfifo(
        &dir.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let e = list_owned_by(&dir, owner).error.unwrap();
    assert!(e.contains("hook fifo: not a regular file"), "{e}");
    assert!(e.contains("hook sub: not a regular file"), "{e}");
    // Too large.
    std::fs::write(dir.join("big"), vec![b'#'; MAX_HOOK_BYTES as usize + 1]).unwrap();
    chmod(&dir.join("big"), 0o700);
    let e = list_owned_by(&dir, owner).error.unwrap();
    assert!(
        e.contains("hook big: 1048577 bytes (at most 1048576)"),
        "{e}"
    );
    // A name that is no hook name.
    std::fs::write(dir.join("bad name"), "x").unwrap();
    let l = list_owned_by(&dir, owner);
    assert!(l.error.unwrap().contains("bad name: not a valid hook name"));
    assert_eq!(l.hooks.len(), 1, "gw still listed");
    assert!(matches!(
        hook_for_run_owned_by(&dir, "../hooks/gw", &[], owner),
        Err(HookRefusal::BadName(_))
    ));
}

#[test]
fn a_hook_runs_only_with_an_approved_hash_and_an_edit_after_approval_is_refused() {
    let (_tmp, dir, owner) = hooks_dir();
    let approved = write_hook(&dir, "backup", "#!/bin/sh\necho approved\n");
    // Nothing approved: refused, and the refusal names the hash to approve.
    let r = hook_for_run_owned_by(&dir, "backup", &[], owner).unwrap_err();
    assert!(
        r.to_string()
            .contains(&format!("weft admin hook approve backup {approved}")),
        "{r}"
    );
    let ok = hook_for_run_owned_by(&dir, "backup", std::slice::from_ref(&approved), owner).unwrap();
    assert_eq!(ok.sha256, approved);
    assert_eq!(ok.body, b"#!/bin/sh\necho approved\n");

    // Edited after approval: the new hash is not approved.
    let edited = write_hook(&dir, "backup", "#!/bin/sh\necho evil\n");
    let r =
        hook_for_run_owned_by(&dir, "backup", std::slice::from_ref(&approved), owner).unwrap_err();
    assert_eq!(
        r,
        HookRefusal::Changed {
            name: "backup".into(),
            sha256: edited.clone(),
        }
    );
    assert!(r.to_string().contains("changed since it was approved"));
    // Several approved hashes: any of them runs.
    assert!(hook_for_run_owned_by(&dir, "backup", &[approved, edited], owner).is_ok());
}

#[test]
fn what_runs_is_the_bytes_that_were_hashed_even_if_the_file_changes_after_the_check() {
    let (_tmp, dir, owner) = hooks_dir();
    let approved = write_hook(&dir, "backup", "#!/bin/sh\necho approved\n");
    let verified =
        hook_for_run_owned_by(&dir, "backup", std::slice::from_ref(&approved), owner).unwrap();
    // The file is replaced between the check and the run.
    write_hook(&dir, "backup", "#!/bin/sh\necho evil\n");
    assert_eq!(sha256_hex(&verified.body), approved);
    assert_eq!(verified.body, b"#!/bin/sh\necho approved\n");
}

#[test]
fn the_error_text_is_bounded_and_safe_to_report() {
    let (_tmp, dir, owner) = hooks_dir();
    for i in 0..200 {
        let p = dir.join(format!("h{i:03}"));
        std::fs::write(&p, "x").unwrap();
        chmod(&p, 0o777);
    }
    let l = list_owned_by(&dir, owner);
    let e = l.error.unwrap();
    assert!(e.len() <= MAX_HOOKS_ERROR_LEN, "{}", e.len());
    assert!(e.ends_with(" ..."));
    // A name with a bidirectional override is escaped, so the controller
    // accepts the report.
    let (_tmp2, dir2, owner2) = hooks_dir();
    std::fs::write(dir2.join("a\u{202e}b"), "x").unwrap();
    let e = list_owned_by(&dir2, owner2).error.unwrap();
    assert!(e.contains("a\\u{202e}b"), "{e}");
    assert!(weft_proto::text::find_spoofing_char(&e).is_none());
}
