//! `relay load --allocations-file PATH`: the allocations that were set up, one line each,
//! written once setup ends and while they are held, so a raw-frame sender (the bench's
//! trafgen) can send through them what `relay load` itself would: the client's 5-tuple,
//! the bound channel, the relayed address and the peer.
//!
//! ```text
//! # transport client server channel relayed peer
//! udp 203.0.113.10:40112 203.0.113.50:3478 0x4000 203.0.113.50:20001 192.0.2.10:7000
//! ```
//!
//! Only UDP allocations are listed: a stream's 5-tuple is no use to a frame sender.

use std::{fmt::Write as _, net::SocketAddr, path::Path};

/// One allocation ready for traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub channel: u16,
    pub relayed: SocketAddr,
    pub peer: SocketAddr,
}

pub const HEADER: &str = "# transport client server channel relayed peer";

/// The file's text, sorted by client address so runs compare line by line.
pub fn render(list: &mut [Listed]) -> String {
    list.sort_by_key(|l| l.client);
    let mut s = String::from(HEADER);
    s.push('\n');
    for l in list.iter() {
        let _ = writeln!(
            s,
            "udp {} {} {:#06x} {} {}",
            l.client, l.server, l.channel, l.relayed, l.peer
        );
    }
    s
}

/// Writes through a temporary file and a rename, so a reader polling for the file never
/// sees half of it.
pub fn write(path: &Path, list: &mut [Listed]) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, render(list))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_allocation_sorted_by_client() {
        let a = |port: u16, relayed: u16| Listed {
            client: SocketAddr::from(([203, 0, 113, 10], port)),
            server: "203.0.113.50:3478".parse().unwrap(),
            channel: 0x4000,
            relayed: SocketAddr::from(([203, 0, 113, 50], relayed)),
            peer: "192.0.2.10:7000".parse().unwrap(),
        };
        let text = render(&mut [a(40002, 20002), a(40001, 20001)]);
        assert_eq!(
            text,
            "# transport client server channel relayed peer\n\
             udp 203.0.113.10:40001 203.0.113.50:3478 0x4000 203.0.113.50:20001 192.0.2.10:7000\n\
             udp 203.0.113.10:40002 203.0.113.50:3478 0x4000 203.0.113.50:20002 192.0.2.10:7000\n"
        );
    }

    #[test]
    fn the_file_appears_whole() {
        let dir = std::env::temp_dir().join(format!("relay-listing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("allocs.txt");
        write(&path, &mut []).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{HEADER}\n")
        );
        assert!(!dir.join("allocs.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
