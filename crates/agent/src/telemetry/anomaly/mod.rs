//! Anomaly detection on the agent (issue 16, part 5): a small, explainable
//! detector over the agent's own counters (`detector`, pure, on `ewma`
//! baselines), and the shell that feeds it once per window, keeps its events
//! in a bounded ring for `weft events`, counts them for metrics and uploads
//! them to the controller (`POST /v1/node/events`), keeping those raised
//! while the controller is away in a bounded outbox on disk (`log`, `shell`).

mod detector;
mod ewma;
mod log;
mod shell;
#[cfg(test)]
mod tests;

pub(crate) use detector::clip_to;
pub(crate) use shell::Anomaly;
