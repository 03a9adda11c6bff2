//! The host's side of networking: interfaces and their addresses, binding listeners, and the
//! open-files limit that bounds how many sockets one process can hold.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpListener;

/// One address of one network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub name: String,
    pub ip: IpAddr,
}

/// Every interface address of this host, IPv4 first, in the order the kernel lists them.
pub fn interfaces() -> io::Result<Vec<InterfaceAddr>> {
    let mut list: Vec<InterfaceAddr> = if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| InterfaceAddr {
            ip: i.ip(),
            name: i.name,
        })
        .collect();
    list.sort_by_key(|i| i.ip.is_ipv6());
    Ok(list)
}

/// The IPv4 address of interface `name` (or `name` itself, when it is one of this host's
/// addresses), or an error that names it and lists the interfaces that do exist.
pub fn interface_ipv4(name: &str) -> anyhow::Result<IpAddr> {
    let all = interfaces()?;
    if let Some(found) = all.iter().find(|i| i.name == name && i.ip.is_ipv4()) {
        return Ok(found.ip);
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        if all.iter().any(|i| i.ip == ip) {
            return Ok(ip);
        }
        anyhow::bail!("{ip} is not an address of this machine; see `chatd interfaces`")
    }
    // "lo (127.0.0.1, ::1), eth0 (192.0.2.2)": each interface once, in the kernel's order.
    let mut names: Vec<&str> = Vec::new();
    for i in &all {
        if !names.contains(&i.name.as_str()) {
            names.push(&i.name);
        }
    }
    let known = names
        .iter()
        .map(|name| {
            let ips: Vec<String> = all
                .iter()
                .filter(|i| i.name == *name)
                .map(|i| i.ip.to_string())
                .collect();
            format!("{name} ({})", ips.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ");
    if all.iter().any(|i| i.name == name) {
        anyhow::bail!("interface {name:?} has no IPv4 address; interfaces: {known}")
    }
    anyhow::bail!("no network interface named {name:?}; interfaces here: {known} (see `chatd interfaces`)")
}

/// The addresses a client can use to reach a listener bound to `bind`: every interface's
/// address for a wildcard bind, otherwise just `bind`. IPv6 link-local addresses are left out
/// (they need a scope to be typed).
pub fn reachable_addrs(bind: IpAddr) -> Vec<IpAddr> {
    if !bind.is_unspecified() {
        return vec![bind];
    }
    let mut ips: Vec<IpAddr> = interfaces()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip)
        .filter(|ip| bind.is_ipv6() || ip.is_ipv4())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    // Other machines first: a classmate cannot use 127.0.0.1.
    ips.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6()));
    ips.dedup();
    ips
}

/// Binds a TCP listener with SO_REUSEADDR (a restarted server gets its port back at once) and
/// the given listen(2) backlog.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}

/// This machine's host name.
#[cfg(unix)]
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "chatd".to_string(),
    }
}

/// This machine's host name.
#[cfg(not(unix))]
pub fn hostname() -> String {
    std::env::var("COMPUTERNAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "chatd".to_string())
}

/// Most connections assumed where there is no open-files limit to read (Windows), and the
/// ceiling where the limit is "unlimited".
const NO_LIMIT: u64 = 1 << 20;
#[cfg(not(unix))]
const WINDOWS_SOCKETS: u64 = 16_384;

/// Raises the soft open-files limit as far as the system allows (the hard limit; on macOS also
/// `kern.maxfilesperproc`, as setting more fails there) and returns the limit now in force.
#[cfg(unix)]
pub fn raise_open_files_limit() -> io::Result<u64> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        // Could not raise it: the current soft limit is what there is.
        Err(_) => rlimit::Resource::NOFILE.get()?.0,
    };
    Ok(limit.min(NO_LIMIT))
}

/// Windows has no open-files limit for sockets.
#[cfg(not(unix))]
pub fn raise_open_files_limit() -> io::Result<u64> {
    Ok(WINDOWS_SOCKETS.min(NO_LIMIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        let all = interfaces().unwrap();
        assert!(
            all.iter().any(|i| i.ip == IpAddr::from([127, 0, 0, 1])),
            "{all:?}"
        );
    }

    #[test]
    fn unknown_interface_names_the_ones_that_exist() {
        let err = interface_ipv4("nosuchif0").unwrap_err().to_string();
        assert!(err.contains("\"nosuchif0\""), "{err}");
        assert!(err.contains("127.0.0.1"), "{err}");
    }

    #[test]
    fn an_interface_can_be_named_by_its_address() {
        assert_eq!(interface_ipv4("127.0.0.1").unwrap(), IpAddr::from([127, 0, 0, 1]));
        let err = interface_ipv4("192.0.2.77").unwrap_err().to_string();
        assert!(err.contains("not an address of this machine"), "{err}");
    }

    #[test]
    fn a_specific_bind_is_reachable_only_there() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(reachable_addrs(ip), vec![ip]);
        let all = reachable_addrs(IpAddr::from([0, 0, 0, 0]));
        assert!(all.contains(&ip));
        assert!(all.iter().all(|ip| ip.is_ipv4()));
        assert!(all.last().unwrap().is_loopback(), "loopback comes last: {all:?}");
    }
}
