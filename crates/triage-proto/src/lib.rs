//! The wire contract: Rust types and tonic service stubs generated from `proto/triage/v1/`.
//!
//! Code is generated into `OUT_DIR` at build time and never committed, so the `.proto` file is the
//! single source of truth. [`FILE_DESCRIPTOR_SET`] is what the server's reflection service
//! publishes, so generic clients need no copy of the proto file.

#![allow(missing_docs, clippy::unwrap_used)] // generated code

/// Messages and services of package `triage.v1`.
pub mod v1 {
    tonic::include_proto!("triage.v1");
}

/// Encoded `FileDescriptorSet` of `triage.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("triage_v1_descriptor");
