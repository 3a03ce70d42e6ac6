//! dasmesh-api: the control plane's gRPC API (package `dasmesh.v1`), generated from the .proto
//! files in `proto/` by tonic. Every message and field is documented there. Also the types
//! every side of the API shares: [`Layout`], and [`Controllers`], the list of controllers a
//! client calls as one, following the active one.

pub mod controllers;
mod layout;
pub mod tls;

pub use controllers::{ControllerOptions, Controllers, ControllersError};
pub use layout::{Layout, LayoutError, DEFAULT_STRIPE_UNIT};
pub use tls::{CertDir, Identity, Role};

/// The response metadata by which a standby controller refuses a call (with UNAVAILABLE).
pub mod headers {
    /// The controller's role; [`STANDBY`] on a standby's refusal.
    pub const ROLE_HEADER: &str = "dasmesh-role";
    /// The active controller's URL (`http://HOST:PORT`), when the standby knows it.
    pub const ACTIVE_HEADER: &str = "dasmesh-active";
    /// The value of [`ROLE_HEADER`] on a standby.
    pub const STANDBY: &str = "standby";
}

/// The `dasmesh.v1` package: messages, clients (`*_client`) and servers (`*_server`).
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("dasmesh.v1");
}

/// The encoded file descriptor set of `dasmesh.v1`, for the gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dasmesh_v1_descriptor");
