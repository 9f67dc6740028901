//! The bundled upstream for the example: answers every request with a JSON
//! description of what it received.
//!
//! Usage: `echo-upstream [ADDRESS]` (default `127.0.0.1:9000`).

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_owned())
        .parse()?;
    let echo = portcullis_tests::echo::Echo::start(addr).await?;
    println!("echo upstream listening on http://{}", echo.addr);
    std::future::pending::<()>().await;
    Ok(())
}
