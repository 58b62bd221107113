//! The schema migrations, one SQL file each in `crates/controller/migrations/`.
//! Add a new one as the last entry; never change or reorder a shipped one.

/// Schema migrations, in order: (version, name, SQL).
pub(super) const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "init", include_str!("../../../migrations/0001_init.sql")),
    (
        2,
        "relays",
        include_str!("../../../migrations/0002_relays.sql"),
    ),
    (
        3,
        "policy",
        include_str!("../../../migrations/0003_policy.sql"),
    ),
    (
        4,
        "routes",
        include_str!("../../../migrations/0004_routes.sql"),
    ),
    (
        5,
        "facts",
        include_str!("../../../migrations/0005_facts.sql"),
    ),
    (
        6,
        "usage",
        include_str!("../../../migrations/0006_usage.sql"),
    ),
    (
        7,
        "events",
        include_str!("../../../migrations/0007_events.sql"),
    ),
    (
        8,
        "tasks",
        include_str!("../../../migrations/0008_tasks.sql"),
    ),
    (
        9,
        "integrity",
        include_str!("../../../migrations/0009_integrity.sql"),
    ),
    (
        10,
        "data",
        include_str!("../../../migrations/0010_data.sql"),
    ),
    (
        11,
        "hostfw",
        include_str!("../../../migrations/0011_hostfw.sql"),
    ),
    (
        12,
        "dns_blocklist",
        include_str!("../../../migrations/0012_dns_blocklist.sql"),
    ),
    (
        13,
        "services",
        include_str!("../../../migrations/0013_services.sql"),
    ),
    (14, "ssh", include_str!("../../../migrations/0014_ssh.sql")),
    (
        15,
        "replicas",
        include_str!("../../../migrations/0015_replicas.sql"),
    ),
    (
        16,
        "challenges",
        include_str!("../../../migrations/0016_challenges.sql"),
    ),
    (
        17,
        "seen_published",
        include_str!("../../../migrations/0017_seen_published.sql"),
    ),
];

#[cfg(test)]
mod tests {
    #[test]
    fn versions_are_unique_and_ascend_in_the_order_they_apply() {
        let versions: Vec<u32> = super::MIGRATIONS.iter().map(|m| m.0).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    }
}
