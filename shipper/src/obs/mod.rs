//! What an operator sees of the pipeline: Prometheus metrics, /metrics and /healthz, and the
//! progress log line.
//!
//! In: counters and gauges updated by every stage (`metrics`), delivery failures
//! (`health::set_failing`) and requests waiting for a peer (`health::Wait`). Out: the HTTP
//! server (`http`), the progress line (`progress`).

pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod progress;
