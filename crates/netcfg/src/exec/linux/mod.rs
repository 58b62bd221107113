//! Linux executors. Today: interfaces, addresses and routes over `NETLINK_ROUTE`
//! ([`NetlinkExecutor`]). The nftables table `weft` (`nft.rs`) and per-link DNS
//! (`resolved.rs`, `resolv_conf.rs`) join here, each behind its own `Action` variants.

mod hostfw;
mod netlink;
mod nft;
mod nftgen;

pub use hostfw::update_named_sets;

pub use netlink::NetlinkExecutor;
