//! Per-address admission state of the WebSocket listener, and which
//! address a connection is charged to.
//!
//! - [`client_ip`]: the peer's address, or, when the peer is a configured
//!   trusted proxy, the client address it reports in `X-Forwarded-For`
//!   (the rightmost entry that is not itself a trusted proxy). A header
//!   from anyone else is ignored: otherwise every client could pick the
//!   address it is limited by.
//! - [`IpConnections`]: concurrent connections per client address, capped
//!   (`max_connections_per_ip`); a slot is held by an [`IpSlot`] for the
//!   connection's life.
//! - [`AuthFailureGate`]: failed authentications per client address. Past
//!   `auth_failures_per_ip_per_minute`, the address is refused for
//!   `auth_failure_penalty_ms` before its tokens are even verified, so a
//!   token-guessing or tokenless flood costs the edge next to nothing and
//!   never spends anyone else's budget.
//!
//! Addresses never become metric labels; the refusals are counted by
//! reason only (`connections_rejected`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

/// Most addresses held in the penalty box (beyond, expired entries are
/// dropped first, then all: a bound, not a feature).
const MAX_PENALIZED_ADDRESSES: usize = 100_000;

/// A trusted proxy as configured: a network (`10.0.0.0/8`, `fd00::/8`) or
/// a single address (`192.0.2.7`, taken as `/32` or `/128`).
pub fn parse_network(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    if let Ok(network) = raw.parse::<IpNet>() {
        return Ok(network.trunc());
    }
    raw.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{raw}` is neither an IP address nor a network (a.b.c.d/n)"))
}

fn is_trusted(address: IpAddr, trusted: &[IpNet]) -> bool {
    let address = canonical(address);
    trusted.iter().any(|network| network.contains(&address))
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4
/// peers) as the IPv4 address they are.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or in
/// brackets; `None` for anything else (`unknown`, obfuscated ids).
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse().ok())
}

/// The address a connection is charged to. `forwarded_for` holds the
/// `X-Forwarded-For` values in order (several headers count as one list).
/// Only when `peer` is a trusted proxy is the list read, right to left,
/// skipping trusted proxies: the first other address is the client. A
/// malformed entry ends the walk at the last trusted hop (what sent it
/// cannot be vouched for); a list of trusted proxies only yields its
/// leftmost entry.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let entries: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter(|entry| !entry.trim().is_empty())
        .collect();
    let mut candidate = peer;
    for entry in entries.iter().rev() {
        let Some(address) = parse_forwarded_entry(entry).map(canonical) else {
            return candidate;
        };
        if !is_trusted(address, trusted) {
            return address;
        }
        candidate = address;
    }
    candidate
}

/// Concurrent connections per client address.
#[derive(Debug)]
pub struct IpConnections {
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One held connection slot; released when dropped.
#[derive(Debug)]
pub struct IpSlot {
    owner: Arc<IpConnections>,
    address: IpAddr,
}

impl IpConnections {
    /// At most `limit` concurrent connections per address (0: no cap).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `address`, unless it holds
    /// `limit` already.
    pub fn try_hold(self: &Arc<Self>, address: IpAddr) -> Option<IpSlot> {
        let mut held = self.held.lock().expect("ip connections lock");
        let count = held.entry(address).or_insert(0);
        if self.limit > 0 && *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            owner: self.clone(),
            address,
        })
    }

    /// Connections `address` holds now.
    pub fn held_by(&self, address: IpAddr) -> usize {
        self.held
            .lock()
            .expect("ip connections lock")
            .get(&address)
            .copied()
            .unwrap_or(0)
    }

    /// Addresses holding at least one connection.
    pub fn addresses(&self) -> usize {
        self.held.lock().expect("ip connections lock").len()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().expect("ip connections lock");
        if let Some(count) = held.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                // Idle addresses cost nothing: the map holds live ones only.
                held.remove(&self.address);
            }
        }
    }
}

/// Failed authentications per client address, and the addresses refused
/// for having failed too often.
#[derive(Debug)]
pub struct AuthFailureGate {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    penalty: Duration,
    penalized: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthFailureGate {
    /// `per_minute` failures per address (also the burst) before the
    /// address is refused for `penalty`.
    pub fn new(per_minute: u32, penalty: Duration) -> Self {
        let per_minute = std::num::NonZeroU32::new(per_minute.max(1)).expect("at least one");
        Self {
            failures: RateLimiter::keyed(Quota::per_minute(per_minute)),
            penalty,
            penalized: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `address` is refused now (checked before any token work).
    pub fn is_refused(&self, address: IpAddr) -> bool {
        let mut penalized = self.penalized.lock().expect("auth penalties lock");
        match penalized.get(&address) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                penalized.remove(&address);
                false
            }
            None => false,
        }
    }

    /// Counts one failed authentication of `address`; true when that put
    /// it over its budget (it is refused from now on, for the penalty).
    pub fn record_failure(&self, address: IpAddr) -> bool {
        if self.failures.check_key(&address).is_ok() {
            return false;
        }
        let now = Instant::now();
        let mut penalized = self.penalized.lock().expect("auth penalties lock");
        if penalized.len() >= MAX_PENALIZED_ADDRESSES {
            penalized.retain(|_, until| *until > now);
            if penalized.len() >= MAX_PENALIZED_ADDRESSES {
                penalized.clear();
            }
        }
        penalized.insert(address, now + self.penalty);
        true
    }

    /// Forgets the limiter state of addresses idle long enough (called
    /// periodically, so that the state follows live addresses only).
    pub fn forget_idle(&self) {
        self.failures.retain_recent();
        let now = Instant::now();
        self.penalized
            .lock()
            .expect("auth penalties lock")
            .retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    fn proxies(raw: &[&str]) -> Vec<IpNet> {
        raw.iter()
            .map(|entry| parse_network(entry).unwrap())
            .collect()
    }

    #[test]
    fn trusted_proxies_parse_as_networks_or_addresses() {
        assert_eq!(
            parse_network("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_network(" 192.0.2.7 ").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(parse_network("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert!(parse_network("proxy.internal").is_err());
        assert!(parse_network("10.0.0.0/33").is_err());
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_peer() {
        let trusted = proxies(&["10.0.0.0/8"]);
        // An untrusted peer's header is ignored: it could name anyone.
        assert_eq!(
            client_ip(ip("203.0.113.9"), ["198.51.100.1"], &trusted),
            ip("203.0.113.9")
        );
        // No proxies configured: the peer, whatever the header says.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["198.51.100.1"], &[]),
            ip("10.0.0.2")
        );
        // From a trusted proxy: the rightmost entry that is not a proxy.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["198.51.100.1"], &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                ["6.6.6.6, 198.51.100.1", "10.0.0.9"],
                &trusted
            ),
            ip("198.51.100.1"),
            "a client-supplied left part does not win"
        );
        // Ports and brackets are tolerated.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["198.51.100.1:4711"], &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["[2001:db8::1]"], &trusted),
            ip("2001:db8::1")
        );
        // Garbage stops at the last hop that can be vouched for.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                ["198.51.100.1, unknown, 10.0.0.7"],
                &trusted
            ),
            ip("10.0.0.7")
        );
        // No header, or only proxies: the nearest address known.
        assert_eq!(client_ip(ip("10.0.0.2"), [], &trusted), ip("10.0.0.2"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["10.0.0.5, 10.0.0.6"], &trusted),
            ip("10.0.0.5")
        );
        // A dual-stack listener's mapped IPv4 peer matches IPv4 networks.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), ["198.51.100.1"], &trusted),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn connections_per_address_are_capped_and_released() {
        let connections = IpConnections::new(2);
        let (one, other) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let first = connections.try_hold(one).unwrap();
        let second = connections.try_hold(one).unwrap();
        assert!(
            connections.try_hold(one).is_none(),
            "third from one address"
        );
        let elsewhere = connections.try_hold(other).unwrap();
        assert_eq!(connections.held_by(one), 2);
        drop(first);
        assert_eq!(connections.held_by(one), 1);
        let again = connections.try_hold(one).unwrap();
        drop((second, again, elsewhere));
        assert_eq!(connections.addresses(), 0, "idle addresses are forgotten");
        let uncapped = IpConnections::new(0);
        let slots: Vec<IpSlot> = (0..100).map(|_| uncapped.try_hold(one).unwrap()).collect();
        assert_eq!(uncapped.held_by(one), slots.len());
    }

    #[test]
    fn an_address_failing_too_often_is_refused_for_the_penalty() {
        let gate = AuthFailureGate::new(3, Duration::from_millis(200));
        let (noisy, quiet) = (ip("192.0.2.66"), ip("192.0.2.1"));
        assert!(!gate.is_refused(noisy));
        let tripped: Vec<bool> = (0..4).map(|_| gate.record_failure(noisy)).collect();
        assert_eq!(tripped, vec![false, false, false, true]);
        assert!(gate.is_refused(noisy));
        assert!(!gate.is_refused(quiet), "others are not affected");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!gate.is_refused(noisy), "the penalty ends");
        gate.forget_idle();
    }
}
