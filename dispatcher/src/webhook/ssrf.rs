//! SSRF guard: a webhook may only reach public addresses. Loopback, private, link-local
//! (cloud metadata at 169.254.169.254), CGNAT, unspecified, multicast, reserved and
//! documentation ranges are refused, in IPv4 and IPv6 (IPv4-mapped and NAT64 addresses
//! are judged by the IPv4 address inside; 6to4, Teredo, local-use NAT64 and SIIT
//! addresses, which tunnel to an IPv4 address, are refused), unless the address is in an explicit
//! allowlist. The check runs on the resolved addresses, so a public name that resolves
//! to 127.0.0.1 is refused too; redirects are never followed (see `webhook/client.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Addresses that webhooks may reach although they are not public, and whether plain
/// `http://` URLs to host names are accepted (development networks only), or none at
/// all (`--https-only`).
#[derive(Debug, Clone, Default)]
pub struct Allowlist(Vec<IpNet>, bool, bool);

impl Allowlist {
    /// Parses addresses or CIDR ranges (`127.0.0.1`, `10.1.0.0/16`).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| {
                let e = e.trim();
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{e}` is neither an IP address nor a CIDR range"))
            })
            .collect::<Result<_, _>>()
            .map(|nets| Self(nets, false, false))
    }

    /// Accepts `http://` URLs to host names too (off by default: webhooks carry order
    /// data and signatures, so production wants TLS).
    pub fn with_plain_http(mut self, allowed: bool) -> Self {
        self.1 = allowed;
        self
    }

    pub fn plain_http(&self) -> bool {
        self.1 && !self.2
    }

    /// Refuses every `http://` URL, allowlisted addresses too (`--https-only`): webhooks
    /// then always run over TLS, so they present the client certificate.
    pub fn with_https_only(mut self, only: bool) -> Self {
        self.2 = only;
        self
    }

    pub fn https_only(&self) -> bool {
        self.2
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// `Ok` when `ip` may be called; otherwise why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match non_public_reason(ip) {
            Some(reason) if !self.contains(ip) => {
                Err(format!("{ip} is {reason} and not allowlisted"))
            }
            _ => Ok(()),
        }
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_private() => "a private address",
        _ if ip.is_link_local() => "a link-local address (cloud metadata lives here)",
        (100, 64..=127, _) => "a carrier-grade NAT address",
        (0, _, _) => "an unspecified address",
        _ if ip.is_broadcast() => "the broadcast address",
        _ if ip.is_multicast() => "a multicast address",
        (240..=255, _, _) => "a reserved address",
        (192, 0, 0) => "an IETF protocol address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64 well-known prefix 64:ff9b::/96 carries an IPv4 address.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return v4_reason(v4);
    }
    Some(match s[0] {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unspecified() => "an unspecified address",
        0 if s[1..6] == [0, 0, 0, 0, 0] => "an IPv4-compatible address",
        0 if s[1..6] == [0, 0, 0, 0xffff, 0] => "an IPv4-translated (SIIT) address",
        0x64 if s[1] == 0xff9b && s[2] == 1 => "a local-use NAT64 address",
        0x2002 => "a 6to4 address (it carries an IPv4 address)",
        0x2001 if s[1] == 0 => "a Teredo address (it carries an IPv4 address)",
        x if x & 0xfe00 == 0xfc00 => "a unique local (private) address",
        x if x & 0xffc0 == 0xfe80 => "a link-local address",
        x if x & 0xffc0 == 0xfec0 => "a site-local address",
        x if x & 0xff00 == 0xff00 => "a multicast address",
        0x2001 if s[1] == 0x0db8 => "a documentation address",
        _ => return None,
    })
}

/// Why `ip` is not a public address, or `None` when it is.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

/// A DNS resolver for reqwest that drops every address the allowlist refuses and fails
/// when none is left, naming the host and the refused address.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allowlist: Arc<Allowlist>,
}

impl GuardedResolver {
    pub fn new(allowlist: Arc<Allowlist>) -> Self {
        Self { allowlist }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowlist = Arc::clone(&self.allowlist);
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match allowlist.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| "no address".to_string());
                return Err(format!("refused by the SSRF guard: {host} resolves to {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        non_public_reason(ip.parse().expect("ip")).is_some()
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.10",
            "198.51.100.1",
            "203.0.113.9",
            "198.18.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::127.0.0.1",
            "2002:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::a00:1",
            "::ffff:0:a00:1",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(!refused(ip), "{ip} is public");
        }
    }

    #[test]
    fn the_allowlist_admits_exactly_what_it_names() {
        let list = Allowlist::parse(&["127.0.0.1".into(), "10.1.0.0/16".into()]).expect("parse");
        assert!(list.check("127.0.0.1".parse().expect("ip")).is_ok());
        assert!(list.check("10.1.2.3".parse().expect("ip")).is_ok());
        let err = list
            .check("127.0.0.2".parse().expect("ip"))
            .expect_err("not listed");
        assert_eq!(err, "127.0.0.2 is a loopback address and not allowlisted");
        assert!(list.check("10.2.0.1".parse().expect("ip")).is_err());
        assert!(Allowlist::parse(&["localhost".into()])
            .expect_err("bad")
            .contains("`localhost`"));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_unless_allowlisted() {
        let guard = GuardedResolver::new(Arc::new(Allowlist::default()));
        let err = guard
            .resolve("localhost".parse().expect("name"))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("localhost resolves to"), "{err}");
        let open = GuardedResolver::new(Arc::new(
            Allowlist::parse(&["127.0.0.1".into(), "::1".into()]).expect("list"),
        ));
        let addrs: Vec<_> = open
            .resolve("localhost".parse().expect("name"))
            .await
            .expect("allowed")
            .collect();
        assert!(!addrs.is_empty());
    }
}
