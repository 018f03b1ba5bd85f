//! Operating the controller: configuration, CLI, API clients, lease, health,
//! metrics, logging.

pub mod api_errors;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod kube_client;
pub mod lease;
pub mod logging;
pub mod metrics;
