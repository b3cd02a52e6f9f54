//! Plexus wire protocol: the gRPC services and messages shared by the
//! coordinator, the nodes and the CLI, and the conversions between wire
//! messages and `plexus-core` domain types. Received messages become domain
//! types through `TryFrom`, which is where malformed input is refused.
#![forbid(unsafe_code)]

pub mod convert;
pub mod job;
pub mod onnx;
pub mod reply;

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("plexus.v1");
}

/// Encoded `FileDescriptorSet` of every Plexus service, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("plexus_descriptor");
