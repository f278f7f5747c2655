//! The generated protobuf types of `proto/` — the only `include_proto!` in the crate.
//!
//! Messages and the client come from `tonic-prost-build`; the server trait of
//! `NotificationService` comes from `tonic_build::manual` (see `build.rs`) so that `Subscribe`
//! can stream pre-encoded bytes.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("cloudphone.notify.v1");
include!(concat!(
    env!("OUT_DIR"),
    "/cloudphone.notify.v1.NotificationService.rs"
));

/// The encoded `FileDescriptorSet` of `proto/`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("notify_descriptor");
