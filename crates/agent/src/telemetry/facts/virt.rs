//! The virtualization hint, decided from what the files say (pure).
//!
//! A container is found first (a container in a VM is a container, as
//! `systemd-detect-virt` says): `/run/systemd/container` (written by
//! systemd-nspawn, Podman, LXC...), `/run/.containerenv` (Podman),
//! `/.dockerenv` (Docker), then PID 1's cgroup path (`/docker/`, `/lxc/`,
//! `kubepods`, `libpod`). Then a VM: the DMI vendor and product names, Xen's
//! `/sys/hypervisor/type`, and the x86 `hypervisor` CPU flag. Bare metal
//! only when the CPU flags were readable and nothing pointed at a
//! hypervisor; else unknown.

use weft_proto::facts::Virtualization;

/// What the virtualization hint is decided from.
#[derive(Debug, Default)]
pub(super) struct VirtInputs {
    /// `/run/systemd/container`.
    pub(super) systemd_container: Option<String>,
    /// `/run/.containerenv` exists.
    pub(super) containerenv: bool,
    /// `/.dockerenv` exists.
    pub(super) dockerenv: bool,
    /// `/proc/1/cgroup`.
    pub(super) init_cgroup: Option<String>,
    /// `/sys/class/dmi/id/{sys_vendor,product_name,bios_vendor,board_vendor}`.
    pub(super) dmi: Vec<String>,
    /// `/sys/hypervisor/type`.
    pub(super) hypervisor_type: Option<String>,
    /// `/proc/cpuinfo` has the `hypervisor` flag.
    pub(super) hypervisor_flag: bool,
    /// `/proc/cpuinfo` has CPU flags at all.
    pub(super) has_flags: bool,
}

/// DMI strings that name a hypervisor, and its short name (checked in
/// order, case-insensitively, as substrings).
const DMI_HYPERVISORS: &[(&str, &str)] = &[
    ("kvm", "kvm"),
    ("qemu", "qemu"),
    ("vmware", "vmware"),
    ("virtualbox", "oracle"),
    ("innotek", "oracle"),
    ("xen", "xen"),
    ("bochs", "bochs"),
    ("parallels", "parallels"),
    ("bhyve", "bhyve"),
    ("amazon ec2", "amazon"),
    ("google compute engine", "google"),
    ("openstack", "openstack"),
    ("virtual machine", "microsoft"),
    ("apple virtualization", "apple"),
];

/// The hint and, when known, which container or hypervisor.
pub(super) fn detect(i: &VirtInputs) -> (Virtualization, Option<String>) {
    if let Some(tech) = container(i) {
        return (Virtualization::Container, tech);
    }
    if let Some(tech) = i.dmi.iter().find_map(|s| {
        let s = s.to_ascii_lowercase();
        DMI_HYPERVISORS
            .iter()
            .find(|(needle, _)| s.contains(needle))
            .map(|(_, tech)| (*tech).to_owned())
    }) {
        return (Virtualization::Vm, Some(tech));
    }
    if let Some(t) = &i.hypervisor_type {
        return (Virtualization::Vm, Some(t.to_ascii_lowercase()));
    }
    if i.hypervisor_flag {
        return (Virtualization::Vm, None);
    }
    if i.has_flags {
        return (Virtualization::BareMetal, None);
    }
    (Virtualization::Unknown, None)
}

/// `Some(tech)` when the files show a container.
fn container(i: &VirtInputs) -> Option<Option<String>> {
    if let Some(name) = &i.systemd_container {
        return Some(Some(name.clone()));
    }
    if i.containerenv {
        return Some(Some("podman".into()));
    }
    if i.dockerenv {
        return Some(Some("docker".into()));
    }
    let cgroup = i.init_cgroup.as_deref()?;
    [
        ("libpod", "podman"),
        ("/docker", "docker"),
        ("docker-", "docker"),
        ("kubepods", "kubernetes"),
        ("/lxc", "lxc"),
    ]
    .iter()
    .find(|(needle, _)| cgroup.contains(needle))
    .map(|(_, tech)| Some((*tech).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_come_first_then_hypervisors_then_bare_metal() {
        let vm_flags = VirtInputs {
            hypervisor_flag: true,
            has_flags: true,
            ..VirtInputs::default()
        };
        // Docker inside a VM is a container.
        let docker = VirtInputs {
            dockerenv: true,
            ..VirtInputs::default()
        };
        let hint = |i: &VirtInputs| {
            let (v, t) = detect(i);
            (v, t.unwrap_or_default())
        };
        assert_eq!(hint(&docker), (Virtualization::Container, "docker".into()));
        let nspawn = VirtInputs {
            systemd_container: Some("systemd-nspawn".into()),
            ..vm_flags_clone(&vm_flags)
        };
        assert_eq!(
            hint(&nspawn),
            (Virtualization::Container, "systemd-nspawn".into())
        );
        let k8s = VirtInputs {
            init_cgroup: Some("0::/kubepods/besteffort/pod1/abc\n".into()),
            ..VirtInputs::default()
        };
        assert_eq!(hint(&k8s), (Virtualization::Container, "kubernetes".into()));
        // A host's own cgroup says nothing.
        let host = VirtInputs {
            init_cgroup: Some("0::/init.scope\n".into()),
            has_flags: true,
            ..VirtInputs::default()
        };
        assert_eq!(hint(&host), (Virtualization::BareMetal, String::new()));
        let qemu = VirtInputs {
            dmi: vec!["QEMU".into(), "Standard PC (Q35 + ICH9, 2009)".into()],
            ..VirtInputs::default()
        };
        assert_eq!(hint(&qemu), (Virtualization::Vm, "qemu".into()));
        let ec2 = VirtInputs {
            dmi: vec!["Amazon EC2".into(), "t3.micro".into()],
            ..vm_flags_clone(&vm_flags)
        };
        assert_eq!(hint(&ec2), (Virtualization::Vm, "amazon".into()));
        let xen = VirtInputs {
            hypervisor_type: Some("xen".into()),
            ..VirtInputs::default()
        };
        assert_eq!(hint(&xen), (Virtualization::Vm, "xen".into()));
        assert_eq!(hint(&vm_flags), (Virtualization::Vm, String::new()));
        // Nothing readable: unknown, not bare metal.
        assert_eq!(
            hint(&VirtInputs::default()),
            (Virtualization::Unknown, String::new())
        );
    }

    fn vm_flags_clone(i: &VirtInputs) -> VirtInputs {
        VirtInputs {
            hypervisor_flag: i.hypervisor_flag,
            has_flags: i.has_flags,
            ..VirtInputs::default()
        }
    }
}
