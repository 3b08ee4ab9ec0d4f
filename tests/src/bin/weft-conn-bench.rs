//! New-connection rate (`tests/bench/run --mtls`): `CLIENTS` loops, each opening a connection
//! to `ADDR`, sending one HTTP/1.1 request with `Connection: close` and reading to the end,
//! for `SECONDS`. Through a proxy's opaque TCP listener every such connection is a new
//! upstream connection, so with mutual TLS on the hop behind it, connections per second are
//! handshakes per second.
//!
//!   weft-conn-bench ADDR CLIENTS SECONDS
//!
//! Prints `connections/s p50_ms p99_ms ok failed`. Not a test: the figures depend on the
//! machine.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn one(addr: SocketAddr) -> Result<Duration, std::io::Error> {
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(512);
    s.read_to_end(&mut buf).await?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "unexpected answer: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(80)])
        )));
    }
    Ok(start.elapsed())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, clients, seconds] = &args[..] else {
        eprintln!("usage: weft-conn-bench ADDR CLIENTS SECONDS");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is ip:port");
    let clients: usize = clients.parse().expect("CLIENTS is a number");
    let until = Instant::now() + Duration::from_secs(seconds.parse().expect("SECONDS"));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let (mut lat, mut failed) = (Vec::new(), 0u64);
                // Bounded in time, and in count as a backstop.
                while Instant::now() < until && lat.len() < 1_000_000 {
                    match one(addr).await {
                        Ok(d) => lat.push(d),
                        Err(_) => failed += 1,
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let (mut lat, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.expect("client task");
        lat.extend(l);
        failed += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let p = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{:.0} {:.3} {:.3} {} {}",
        lat.len() as f64 / elapsed,
        p(0.5),
        p(0.99),
        lat.len(),
        failed
    );
}
