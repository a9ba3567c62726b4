//! scopegate: an Envoy `ext_authz` (gRPC) server that verifies OAuth 2.0 JWT access tokens and
//! enforces scope rules from a rules file or an etcd prefix.
//!
//! Data flow: [`grpc`] turns a `CheckRequest` into an [`authz::Request`], [`token`] verifies the
//! bearer token (cached by [`cache`]), [`authz::decide`] answers from one immutable
//! [`store::Snapshot`], and [`grpc`] turns the [`authz::Decision`] back into a `CheckResponse`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod allocator;
pub mod app;
pub mod authz;
pub mod cache;
pub mod changes;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod grpc;
pub mod lookup;
pub mod readiness;
pub mod reason;
pub mod rules;
pub mod sha256;
pub mod store;
pub mod telemetry;
pub mod token;

#[cfg(test)]
mod test_support;
