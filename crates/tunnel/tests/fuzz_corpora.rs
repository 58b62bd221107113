//! Replays every committed fuzz corpus file (`fuzz/corpora/<target>/`) through
//! the same entry points the cargo-fuzz targets call, so CI exercises the
//! tunnel's parsers on stable Rust. A missing or empty corpus fails the test.

use weft_tunnel::fuzzing;

#[path = "../../../fuzz/replay.rs"]
mod replay;
use replay::replay;

#[test]
fn ip_packet_corpus() {
    replay("ip_packet", fuzzing::ip_packet, 4);
}

#[test]
fn disco_message_corpus() {
    replay("disco_message", fuzzing::disco_message, 4);
}

#[test]
fn tunnel_datagram_corpus() {
    replay("tunnel_datagram", fuzzing::tunnel_datagram, 4);
}
