//! Tracked connections of a container, read and cut with the `conntrack` program (Debian's `conntrack`).
//!
//! The kernel lets the packets of a tracked connection through as long as its entry lives. When the rules
//! were missing for a while (supervisor down, chain flushed by hand) or the policy changed, a connection
//! opened meanwhile would outlive the repair. So after a repair the firewall lists the connections each
//! container opened (`conntrack -L -s <container address>`: the original source is the container, so
//! connections made TO the container, such as the router's, are never listed) and deletes those the rules
//! now refuse ([`crate::firewall::Policy::refuses`]). The per-packet rules cut such a connection anyway at
//! its next packet from the container; deleting the entry also frees the far end, which then gets a reset
//! instead of waiting for a timeout.

use std::net::Ipv4Addr;

/// One tracked connection, as the container opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Protocol name as conntrack prints it (`tcp`, `udp`, `icmp`...).
    pub proto: String,
    /// Original source (the container).
    pub src: Ipv4Addr,
    /// Original destination: the address the container dialled, before any DNAT.
    pub dst: Ipv4Addr,
    /// Original ports, for protocols that have them.
    pub ports: Option<(u16, u16)>,
    /// True when the destination was rewritten (a published port, any DNAT): the reply comes from
    /// another address or port than the one dialled.
    pub dnat: bool,
}

impl Flow {
    /// The destination port, when the protocol has ports.
    pub fn dport(&self) -> Option<u16> {
        self.ports.map(|(_, d)| d)
    }

    /// The arguments of `conntrack -D` that delete exactly this connection.
    pub fn delete_args(&self) -> Vec<String> {
        let mut a = vec![
            "-D".to_owned(),
            "-f".to_owned(),
            "ipv4".to_owned(),
            "-p".to_owned(),
            self.proto.clone(),
            "-s".to_owned(),
            self.src.to_string(),
            "-d".to_owned(),
            self.dst.to_string(),
        ];
        if let Some((s, d)) = self.ports {
            a.extend([
                "--sport".to_owned(),
                s.to_string(),
                "--dport".to_owned(),
                d.to_string(),
            ]);
        }
        a
    }
}

/// Parses the output of `conntrack -L -f ipv4` (one entry per line; lines that are not entries are
/// skipped). A line reads `tcp 6 431999 ESTABLISHED src=A dst=B sport=P dport=Q src=B' dst=A' sport=Q'
/// dport=P' [ASSURED] mark=0 use=1`: the first tuple is the original direction, the second the reply.
pub fn parse(text: &str) -> Vec<Flow> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Flow> {
    let mut words = line.split_whitespace();
    let proto = words.next()?.to_owned();
    if !proto.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let mut src = Vec::new();
    let mut dst = Vec::new();
    let mut sport = Vec::new();
    let mut dport = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            continue;
        };
        match k {
            "src" => src.push(v.parse::<Ipv4Addr>().ok()?),
            "dst" => dst.push(v.parse::<Ipv4Addr>().ok()?),
            "sport" => sport.push(v.parse::<u16>().ok()?),
            "dport" => dport.push(v.parse::<u16>().ok()?),
            _ => {}
        }
    }
    let (&osrc, &odst) = (src.first()?, dst.first()?);
    let ports = match (sport.first(), dport.first()) {
        (Some(&s), Some(&d)) => Some((s, d)),
        _ => None,
    };
    // The reply comes from where the packets really went; DNAT changed the destination if it differs.
    let reply_src = src.get(1).copied().unwrap_or(odst);
    let reply_sport = sport.get(1).copied();
    let dnat = reply_src != odst || (ports.is_some() && reply_sport != ports.map(|(_, d)| d));
    Some(Flow {
        proto,
        src: osrc,
        dst: odst,
        ports,
        dnat,
    })
}

/// Parses `ip -4 -o addr show`: every IPv4 address of the host (all interfaces).
pub fn parse_local_addresses(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet")?;
            let a = w.next()?;
            a.split('/').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_sees_dnat() {
        let text = "\
tcp      6 431999 ESTABLISHED src=172.30.0.2 dst=192.168.77.7 sport=40000 dport=9000 src=192.168.77.7 dst=192.168.77.1 sport=9000 dport=40000 [ASSURED] mark=0 use=1
tcp      6 119 SYN_SENT src=172.30.0.2 dst=10.9.0.2 sport=40001 dport=41004 [UNREPLIED] src=172.30.0.3 dst=172.30.0.2 sport=8080 dport=40001 mark=0 use=1
icmp     1 29 src=172.30.0.2 dst=198.51.100.7 type=8 code=0 id=5 src=198.51.100.7 dst=172.30.0.2 type=0 code=0 id=5 mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.
";
        let flows = parse(text);
        assert_eq!(flows.len(), 3, "{flows:?}");
        assert_eq!(flows[0].dst, Ipv4Addr::new(192, 168, 77, 7));
        assert_eq!(flows[0].ports, Some((40000, 9000)));
        assert!(
            !flows[0].dnat,
            "masquerade changes the source, not the destination"
        );
        assert!(flows[1].dnat, "a published port is DNAT");
        assert_eq!(flows[1].dport(), Some(41004));
        assert_eq!(flows[2].proto, "icmp");
        assert_eq!(flows[2].ports, None);
        assert!(!flows[2].dnat);
        assert_eq!(
            flows[0].delete_args().join(" "),
            "-D -f ipv4 -p tcp -s 172.30.0.2 -d 192.168.77.7 --sport 40000 --dport 9000"
        );
        assert_eq!(
            flows[2].delete_args().join(" "),
            "-D -f ipv4 -p icmp -s 172.30.0.2 -d 198.51.100.7"
        );
    }

    #[test]
    fn parses_local_addresses() {
        let text = "\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
3: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever
";
        assert_eq!(
            parse_local_addresses(text),
            vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(172, 17, 0, 1)]
        );
    }
}
