//! Newtypes for identifiers that must never be mixed up.

use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

id_newtype!(
    /// A storage node. `NodeId(0)` in a token means "any node".
    NodeId(u64)
);
id_newtype!(
    /// A device on a node, numbered 0, 1, ... in the order the node was given its backends.
    DeviceId(u32)
);
id_newtype!(
    /// A virtual volume of the control plane (0 when a token was minted by hand).
    VolumeId(u64)
);
id_newtype!(
    /// A fencing epoch: a node refuses any token older than the newest it has seen for a range.
    Epoch(u64)
);
id_newtype!(
    /// The client's 64-bit request tag, echoed in the reply.
    Tag(u64)
);
