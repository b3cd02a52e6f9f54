//! The integration tests: one test binary, one module per capability, so
//! the tests link the workspace (DataFusion, sqlx, tonic) once instead of
//! once per file. Run one module with
//! `cargo test -p plexus-tests --test it -- audit::` and one test by its
//! name. Two suites stay binaries of their own because each installs a
//! process-wide log subscriber it reads back: `certificates` (text) and
//! `operations` (the daemons' JSON format).

mod audit;
mod bad_input;
mod consent;
mod coordinator_crash;
mod coordinator_full_disk;
mod coordinator_pg;
mod deploy_artefacts;
mod deploy_configs;
mod failover;
mod faults;
mod fuzz_seeds;
mod http_api;
mod link;
mod load;
mod model_refusals;
mod models;
mod node_policy;
mod omop;
mod pooled;
mod postgres;
mod privacy;
mod privacy_accuracy;
mod privacy_glm;
mod privacy_oracles;
mod process_faults;
mod process_witness;
mod query_syntax;
mod reflection;
mod secure_aggregation;
mod security;
mod signed_jobs;
mod slow_node;
mod study_timeline;
mod trees;
mod validation;
mod warehouse;
mod witness;
