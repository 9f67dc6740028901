//! Makes the demo's TLS files: a CA of its own and a certificate for
//! `localhost` and `127.0.0.1` signed by it, so that
//! `curl --cacert examples/certs/ca.pem https://localhost:8443/` verifies
//! without any other tool. Keeps files younger than 300 days (the
//! certificate is valid for 365).
//!
//! Usage: `demo-cert DIR` (writes `ca.pem`, `localhost.pem`, `localhost.key`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use portcullis_tests::tls::TestCa;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: demo-cert DIR"))?,
    );
    let files = ["ca.pem", "localhost.pem", "localhost.key"].map(|f| dir.join(f));
    let fresh = files.iter().all(|f| {
        std::fs::metadata(f)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < Duration::from_secs(300 * 86_400))
    });
    if fresh {
        println!("demo certificate in {} is current", dir.display());
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    let ca = TestCa::new();
    let issued = ca.issue(&["localhost", "127.0.0.1"], -1, 365);
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    issued.write(&dir, "localhost")?;
    println!(
        "made a demo CA and a certificate for localhost in {}",
        dir.display()
    );
    Ok(())
}
