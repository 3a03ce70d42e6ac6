//! The same-host transport: where a node also listens for clients on its own machine.
//!
//! Besides its TCP address, a node listens on a Linux abstract Unix socket named after that
//! address, so a client given the address can find the socket without asking anyone. Abstract
//! names belong to a network namespace, the same scope in which the address itself is resolved,
//! and vanish with the listener (no file to clean up). The protocol over it is byte for byte the
//! same as over TCP; what it saves is the loopback TCP stack on both sides.

/// Prefix of every node's local socket name.
pub const LOCAL_SOCKET_PREFIX: &str = "dasmesh-node/";

/// Longest abstract name Linux takes (`sun_path` less its leading NUL).
const MAX_ABSTRACT_NAME: usize = 107;

/// The abstract socket name (without its leading NUL) of the node reachable at `addr`, exactly
/// as hosts are given it (`host:port`); `None` if the name would not fit in a socket address.
pub fn local_socket_name(addr: &str) -> Option<String> {
    let name = format!("{LOCAL_SOCKET_PREFIX}{addr}");
    (!addr.is_empty() && name.len() <= MAX_ABSTRACT_NAME).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_address_and_fit_a_socket_address() {
        assert_eq!(
            local_socket_name("127.0.0.1:7700").as_deref(),
            Some("dasmesh-node/127.0.0.1:7700")
        );
        assert_ne!(
            local_socket_name("127.0.0.1:7700"),
            local_socket_name("127.0.0.1:7701")
        );
        assert_eq!(local_socket_name(""), None);
        let longest = "h".repeat(MAX_ABSTRACT_NAME - LOCAL_SOCKET_PREFIX.len());
        assert!(local_socket_name(&longest).is_some());
        assert_eq!(local_socket_name(&format!("{longest}x")), None);
    }
}
