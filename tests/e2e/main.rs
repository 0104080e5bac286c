//! End-to-end tests through Remora's real listeners, against upstreams on 127.0.0.1:0.

mod support;

mod admin;
mod cache;
mod config_errors;
mod dashboard;
mod explain;
mod hardening;
mod import;
mod inject;
mod mtls;
mod netns;
mod protocols;
mod reload;
mod resilience;
mod retries;
mod routing;
mod schema;
mod tcp;
mod traces;
mod transparent;
mod upstreams;
