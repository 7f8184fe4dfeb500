//! The interop test protocols (docs/interop.md, "Test protocols"): servers and clients.
//!
//! Pattern streams: byte i (from 0, after any header) is `i mod 251`. Integers are unsigned
//! big-endian. "Close" is `AsyncWrite::close` on the stream: a yamux FIN or a QUIC FIN.

use std::time::Duration;

use futures::io::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{Stream, StreamProtocol};
use sha2::{Digest as _, Sha256};

pub const ECHO: StreamProtocol = StreamProtocol::new("/echo/1.0.0");
pub const SOURCE: StreamProtocol = StreamProtocol::new("/glueberry-test/source/1.0.0");
pub const SINK: StreamProtocol = StreamProtocol::new("/glueberry-test/sink/1.0.0");
pub const CLOSE: StreamProtocol = StreamProtocol::new("/glueberry-test/close/1.0.0");

/// What this peer serves besides identify and ping (served by their own behaviours).
/// `/glueberry-test/reset/1.0.0` is not served: rust-libp2p's `Stream` has no reset (dropping
/// a QUIC stream sends FIN + STOP_SENDING, not RESET_STREAM).
pub fn served() -> Vec<StreamProtocol> {
    vec![ECHO, SOURCE, SINK, CLOSE]
}

const PERIOD: usize = 251;
const CHUNK: usize = 65536;
/// Largest source request served (16 GiB), as the other peers.
const MAX_SOURCE: u64 = 1 << 34;
/// A served stream that makes no progress for this long is dropped.
const IDLE: Duration = Duration::from_secs(120);

fn pattern() -> &'static [u8] {
    use std::sync::OnceLock;
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| (0..PERIOD + CHUNK).map(|i| (i % PERIOD) as u8).collect())
}

/// Up to `min(len, 64 KiB)` pattern bytes starting at stream offset `offset`.
fn pattern_at(offset: u64, len: usize) -> &'static [u8] {
    let start = (offset % PERIOD as u64) as usize;
    &pattern()[start..start + len.min(CHUNK)]
}

fn matches(offset: u64, data: &[u8]) -> bool {
    let mut pos = 0;
    while pos < data.len() {
        let n = (data.len() - pos).min(CHUNK);
        if data[pos..pos + n] != *pattern_at(offset + pos as u64, n) {
            return false;
        }
        pos += n;
    }
    true
}

async fn idle<T>(fut: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(IDLE, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no progress for {} s", IDLE.as_secs())),
    }
}

async fn write_pattern<W: futures::AsyncWrite + Unpin>(
    w: &mut W,
    total: u64,
    chunk: usize,
) -> Result<(), String> {
    let mut off = 0u64;
    while off < total {
        let n = ((total - off) as usize).min(chunk);
        idle(w.write_all(pattern_at(off, n))).await?;
        off += n as u64;
    }
    Ok(())
}

// --- servers ------------------------------------------------------------------------------

/// Serves one negotiated stream; returns the byte count moved (for the event line).
pub async fn serve(protocol: &StreamProtocol, mut s: Stream) -> Result<u64, String> {
    let mut buf = vec![0u8; CHUNK];
    if *protocol == ECHO {
        let mut total = 0u64;
        loop {
            let n = idle(s.read(&mut buf)).await?;
            if n == 0 {
                break;
            }
            idle(s.write_all(&buf[..n])).await?;
            total += n as u64;
        }
        idle(s.close()).await?;
        Ok(total)
    } else if *protocol == SOURCE {
        let mut hdr = [0u8; 8];
        idle(s.read_exact(&mut hdr)).await?;
        let n = u64::from_be_bytes(hdr);
        if n > MAX_SOURCE {
            return Err(format!("source request of {n} bytes refused"));
        }
        write_pattern(&mut s, n, CHUNK).await?;
        idle(s.close()).await?;
        Ok(n)
    } else if *protocol == SINK {
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        loop {
            let n = idle(s.read(&mut buf)).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        let mut reply = total.to_be_bytes().to_vec();
        reply.extend_from_slice(&hasher.finalize());
        idle(s.write_all(&reply)).await?;
        idle(s.close()).await?;
        Ok(total)
    } else if *protocol == CLOSE {
        idle(s.write_all(b"bye")).await?;
        idle(s.close()).await?;
        Ok(3)
    } else {
        Err(format!("no server for {protocol}"))
    }
}

// --- clients ------------------------------------------------------------------------------

/// Writes `total` pattern bytes in 16 KiB writes while reading them back, then closes the
/// write side; passes when exactly `total` bytes came back, in order, then EOF.
pub async fn echo(s: Stream, total: u64) -> Result<(), String> {
    let (mut r, mut w) = s.split();
    let writer = async move {
        write_pattern(&mut w, total, 16384).await?;
        idle(w.close()).await
    };
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        loop {
            let n = idle(r.read(&mut buf)).await?;
            if n == 0 {
                break;
            }
            if got + n as u64 > total {
                return Err(format!("echo: more than the {total} bytes sent came back"));
            }
            if !matches(got, &buf[..n]) {
                return Err(format!("echo: wrong bytes at offset {got}"));
            }
            got += n as u64;
        }
        if got != total {
            return Err(format!("echo: {got} of {total} bytes came back before EOF"));
        }
        Ok(())
    };
    let (wr, rd) = futures::join!(writer, reader);
    rd?;
    wr
}

/// Asks for `n` bytes; passes when exactly `n` pattern bytes arrive, then EOF.
pub async fn source(mut s: Stream, n: u64) -> Result<(), String> {
    idle(s.write_all(&n.to_be_bytes())).await?;
    idle(s.close()).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let k = idle(s.read(&mut buf)).await?;
        if k == 0 {
            break;
        }
        if got + k as u64 > n {
            return Err(format!("source: more than {n} bytes"));
        }
        if !matches(got, &buf[..k]) {
            return Err(format!("source: wrong bytes at offset {got}"));
        }
        got += k as u64;
    }
    if got != n {
        return Err(format!("source: {got} of {n} bytes before EOF"));
    }
    Ok(())
}

/// Sends `n` pattern bytes and closes; passes when the reply is `n` and the SHA-256 of them.
pub async fn sink(mut s: Stream, n: u64) -> Result<(), String> {
    let mut hasher = Sha256::new();
    let mut off = 0u64;
    while off < n {
        let k = ((n - off) as usize).min(CHUNK);
        let chunk = pattern_at(off, k);
        hasher.update(chunk);
        idle(s.write_all(chunk)).await?;
        off += k as u64;
    }
    idle(s.close()).await?;
    let mut reply = Vec::new();
    idle(s.read_to_end(&mut reply)).await?;
    if reply.len() != 40 {
        return Err(format!("sink: reply of {} bytes (want 40)", reply.len()));
    }
    let count = u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"));
    if count != n {
        return Err(format!("sink: remote counted {count} of {n} bytes"));
    }
    if reply[8..] != hasher.finalize()[..] {
        return Err("sink: SHA-256 mismatch".into());
    }
    Ok(())
}

/// Reads from the close protocol without writing: `bye`, then EOF.
pub async fn close(mut s: Stream) -> Result<String, String> {
    let mut got = Vec::new();
    idle(s.read_to_end(&mut got)).await?;
    if got != b"bye" {
        return Err(format!("close: got {:?}", String::from_utf8_lossy(&got)));
    }
    let _ = s.close().await;
    Ok("bye".into())
}
