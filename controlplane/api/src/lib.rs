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

/// Every method of the API, as gRPC paths (a unit test holds it to the .proto files): for the
/// tables that must name each one (which calls are safe to repeat, which role may call what).
pub const METHODS: &[&str] = &[
    "/dasmesh.v1.NodeRegistry/Register",
    "/dasmesh.v1.NodeRegistry/ReportDevices",
    "/dasmesh.v1.NodeRegistry/Heartbeat",
    "/dasmesh.v1.NodeRegistry/Deregister",
    "/dasmesh.v1.Pool/ListNodes",
    "/dasmesh.v1.Pool/ListDevices",
    "/dasmesh.v1.Pool/GetNode",
    "/dasmesh.v1.Volumes/Create",
    "/dasmesh.v1.Volumes/Get",
    "/dasmesh.v1.Volumes/List",
    "/dasmesh.v1.Volumes/Resize",
    "/dasmesh.v1.Volumes/Delete",
    "/dasmesh.v1.Volumes/ReplaceCopy",
    "/dasmesh.v1.Leases/Mount",
    "/dasmesh.v1.Leases/Renew",
    "/dasmesh.v1.Leases/Unmount",
    "/dasmesh.v1.Leases/Revoke",
    "/dasmesh.v1.Leases/List",
    "/dasmesh.v1.Leases/ReportFailure",
    "/dasmesh.v1.Leases/ReportRebuilt",
    "/dasmesh.v1.Usage/Report",
    "/dasmesh.v1.ControlPlane/ListControllers",
    "/dasmesh.v1.ControlPlane/RotateSigningKey",
    "/dasmesh.v1.ControlPlane/ConsoleLogin",
];

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
