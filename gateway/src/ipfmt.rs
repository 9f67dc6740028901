//! IP addresses as text, on the request path (`X-Forwarded-For`,
//! `Forwarded`, a plugin's `client-ip`). IPv4, the common case, is written
//! by hand: `Display` for `Ipv4Addr` goes through the formatting machinery
//! (it pads) and cost some 1,350 instructions a call, ten times this.

use std::net::IpAddr;

/// Appends `ip` as `Display` writes it.
pub fn push(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        use std::fmt::Write as _;
        let _ = write!(out, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// `ip` as `Display` writes it.
pub fn text(ip: IpAddr) -> String {
    let mut out = String::with_capacity(15);
    push(&mut out, ip);
    out
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::{push, text};

    #[test]
    fn addresses_read_as_std_writes_them() {
        let mut addresses: Vec<IpAddr> = [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [10, 9, 99, 100],
            [255, 255, 255, 255],
            [192, 168, 1, 20],
        ]
        .into_iter()
        .map(|o| IpAddr::V4(Ipv4Addr::from(o)))
        .collect();
        addresses.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        addresses.push("2001:db8::8a2e:370:7334".parse().expect("v6"));
        addresses.push("::ffff:192.0.2.1".parse().expect("v4-mapped"));
        for octet in 0..=255u8 {
            addresses.push(IpAddr::V4(Ipv4Addr::new(octet, 0, octet, 7)));
        }
        for ip in addresses {
            assert_eq!(text(ip), ip.to_string());
            let mut appended = String::from("x, ");
            push(&mut appended, ip);
            assert_eq!(appended, format!("x, {ip}"));
        }
    }
}
