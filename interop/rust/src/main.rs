//! rust-libp2p interop peer for the glueberry test suites (docs/interop.md, "rust peer").
//!
//! `peer listen [--transport tcp|quic] [--listen MA] [--events] [--seed HEX64]` prints
//! `READY <multiaddr>/p2p/<id>` and serves identify, ping and the test protocols (echo,
//! source, sink, close) until SIGINT/SIGTERM or stdin EOF (when stdin is a pipe or socket).
//! `peer dial MULTIADDR [TEST...] [flags]` runs the tests and prints one JSON line; the exit
//! code is 0 when every test passed, 1 when one failed, 2 for a usage or setup error.
//! `peer version` prints the versions as JSON.
//!
//! The swarm (TCP + Noise + yamux, and QUIC v1) is driven by one task; it records what
//! happened (connections, identify results, the ping behaviour's round trips) in a shared
//! `State` that the dial tests wait on, and prints event lines when listening with
//! `--events`. Raw test streams come from `streams::Behaviour` (see streams.rs).

mod protocols;
mod streams;

use std::{
    collections::HashMap,
    io::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use libp2p::{
    core::{upgrade::Version, ConnectedPoint},
    identify, identity,
    multiaddr::Protocol,
    noise, ping,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder,
};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify};

const IMPL: &str = "rust-libp2p";
/// The libp2p crate version (pinned in Cargo.toml and Cargo.lock).
const LIBP2P_VERSION: &str = "0.56.0";
const AGENT: &str = "glueberry-interop-rust/1.0 rust-libp2p/0.56.0";
const PROTOCOL_VERSION: &str = "ipfs/0.1.0";
/// Ping period of the ping behaviour when dialing.
const PING_INTERVAL: Duration = Duration::from_millis(200);
const ALL_TESTS: &[&str] = &[
    "connect", "identify", "ping", "echo", "source", "sink", "close",
];

const USAGE: &str = "usage: peer listen [--transport tcp|quic] [--listen MA] [--events] [--seed HEX64] [--lazy]
       peer dial MULTIADDR [connect identify ping echo source sink transfer close all] [--timeout S]
                 [--pings N] [--echo-streams K] [--echo-bytes B] [--transfer-mib M] [--seed HEX64] [--lazy]
       peer version";

#[derive(NetworkBehaviour)]
struct Node {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    streams: streams::Behaviour,
}

struct Opts {
    mode: String,
    target: Option<String>,
    tests: Vec<String>,
    transport: String,
    listen: Option<String>,
    seed: Option<[u8; 32]>,
    events: bool,
    lazy: bool,
    timeout: u64,
    pings: usize,
    echo_streams: usize,
    echo_bytes: u64,
    transfer_mib: u64,
}

fn usage_error(msg: &str) -> ! {
    eprintln!("peer: {msg}\n{USAGE}");
    std::process::exit(2);
}

fn parse_seed(hex: &str) -> [u8; 32] {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        usage_error("--seed needs 64 hex digits");
    }
    let mut seed = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).unwrap_or("");
        seed[i] = u8::from_str_radix(s, 16).unwrap_or_else(|_| usage_error("--seed: bad hex"));
    }
    seed
}

fn parse_args() -> Opts {
    let mut o = Opts {
        mode: String::new(),
        target: None,
        tests: Vec::new(),
        transport: "tcp".into(),
        listen: None,
        seed: None,
        events: false,
        lazy: false,
        timeout: 60,
        pings: 5,
        echo_streams: 8,
        echo_bytes: 262_144,
        transfer_mib: 64,
    };
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage_error(&format!("{name} needs a value")))
        };
        fn num<T: std::str::FromStr>(name: &str, v: String) -> T {
            v.parse()
                .unwrap_or_else(|_| usage_error(&format!("{name}: not a number: {v}")))
        }
        match a.as_str() {
            "--transport" => o.transport = value("--transport"),
            "--listen" => o.listen = Some(value("--listen")),
            "--seed" => o.seed = Some(parse_seed(&value("--seed"))),
            "--events" => o.events = true,
            "--lazy" => o.lazy = true,
            "--timeout" => o.timeout = num("--timeout", value("--timeout")),
            "--pings" => o.pings = num("--pings", value("--pings")),
            "--echo-streams" => o.echo_streams = num("--echo-streams", value("--echo-streams")),
            "--echo-bytes" => o.echo_bytes = num("--echo-bytes", value("--echo-bytes")),
            "--transfer-mib" => o.transfer_mib = num("--transfer-mib", value("--transfer-mib")),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            f if f.starts_with("--") => usage_error(&format!("unknown flag {f}")),
            _ => positional.push(a),
        }
    }
    let mut pos = positional.into_iter();
    o.mode = pos.next().unwrap_or_else(|| usage_error("no command"));
    if o.mode == "dial" {
        o.target = Some(
            pos.next()
                .unwrap_or_else(|| usage_error("dial needs a MULTIADDR")),
        );
    }
    o.tests = pos.collect();
    if o.transport != "tcp" && o.transport != "quic" {
        usage_error("--transport must be tcp or quic");
    }
    o
}

/// What the swarm task saw, for the dial tests to wait on.
#[derive(Default)]
struct State {
    conns: HashMap<PeerId, Value>,
    dial_errors: HashMap<PeerId, String>,
    identified: HashMap<PeerId, identify::Info>,
    identify_errors: HashMap<PeerId, String>,
    pings: HashMap<PeerId, Vec<Result<Duration, String>>>,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.notify.notify_waiters();
    }

    /// Waits until `f` gives a value, or `deadline`.
    async fn wait_for<T>(
        &self,
        deadline: Instant,
        mut f: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = f(&self.state.lock().unwrap()) {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return f(&self.state.lock().unwrap());
            }
        }
    }
}

/// One line on stdout (READY, an event, or the dialer's JSON), flushed at once.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn transport_of(addr: &Multiaddr) -> &'static str {
    if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) {
        "quic-v1"
    } else {
        "tcp"
    }
}

fn connection_info(peer: PeerId, endpoint: &ConnectedPoint) -> Value {
    let remote = endpoint.get_remote_address();
    let transport = transport_of(remote);
    let (security, muxer) = if transport == "quic-v1" {
        ("/tls/1.0.0", "quic-v1")
    } else {
        ("/noise", "/yamux/1.0.0")
    };
    json!({
        "security": security,
        "muxer": muxer,
        "early_muxer": false,
        "transport": transport,
        "remote_addr": remote.to_string(),
        "remote_peer": peer.to_string(),
        "direction": if endpoint.is_dialer() { "outbound" } else { "inbound" },
    })
}

fn identify_info(peer: PeerId, info: &identify::Info) -> Value {
    json!({
        "remote_peer": peer.to_string(),
        "agent_version": info.agent_version,
        "protocol_version": info.protocol_version,
        "protocols": info.protocols.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "listen_addrs": info.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "observed_addr": info.observed_addr.to_string(),
        "signed_peer_record": info.signed_peer_record.is_some(),
        "public_key_matches": info.public_key.to_peer_id() == peer,
    })
}

fn with_event(name: &str, mut v: Value) -> String {
    let mut m = Map::new();
    m.insert("event".into(), json!(name));
    if let Value::Object(rest) = v.take() {
        m.extend(rest);
    }
    Value::Object(m).to_string()
}

enum Cmd {
    Dial(Multiaddr, PeerId),
}

/// Drives the swarm: records events in `shared`, prints READY (listen) and event lines.
async fn run_swarm(
    mut swarm: Swarm<Node>,
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    print_ready: bool,
    events: bool,
) {
    let local = *swarm.local_peer_id();
    let mut ready = !print_ready;
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Dial(addr, peer)) => {
                    if let Err(e) = swarm.dial(addr) {
                        shared.update(|s| { s.dial_errors.insert(peer, e.to_string()); });
                    }
                }
                None => {}
            },
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    if !ready {
                        ready = true;
                        emit(&format!("READY {}", address.with(Protocol::P2p(local))));
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    let info = connection_info(peer_id, &endpoint);
                    if events {
                        emit(&with_event("connected", info.clone()));
                    }
                    shared.update(|s| { s.conns.insert(peer_id, info); });
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, num_established, .. } => {
                    if events {
                        emit(&with_event("disconnected", json!({
                            "remote_peer": peer_id.to_string(),
                            "cause": cause.map(|c| c.to_string()),
                            "remaining": num_established,
                        })));
                    }
                    if num_established == 0 {
                        shared.update(|s| { s.conns.remove(&peer_id); });
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                    shared.update(|s| { s.dial_errors.insert(peer, error.to_string()); });
                }
                SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                    eprintln!("peer: inbound connection from {send_back_addr} failed: {error}");
                }
                SwarmEvent::Behaviour(NodeEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    if events {
                        emit(&with_event("identified", identify_info(peer_id, &info)));
                    }
                    shared.update(|s| { s.identified.insert(peer_id, info); });
                }
                SwarmEvent::Behaviour(NodeEvent::Identify(identify::Event::Error { peer_id, error, .. })) => {
                    if events {
                        emit(&with_event("identify_failed", json!({"remote_peer": peer_id.to_string(), "error": error.to_string()})));
                    }
                    shared.update(|s| { s.identify_errors.insert(peer_id, error.to_string()); });
                }
                SwarmEvent::Behaviour(NodeEvent::Ping(ping::Event { peer, result, .. })) => {
                    let result = result.map_err(|e| e.to_string());
                    if events {
                        let v = match &result {
                            Ok(rtt) => json!({"remote_peer": peer.to_string(), "ok": true, "rtt_us": rtt.as_micros() as u64}),
                            Err(e) => json!({"remote_peer": peer.to_string(), "ok": false, "error": e}),
                        };
                        emit(&with_event("ping", v));
                    }
                    shared.update(|s| s.pings.entry(peer).or_default().push(result));
                }
                _ => {}
            },
        }
    }
}

/// Serves every inbound test stream in its own task.
async fn serve_incoming(
    mut incoming: futures::channel::mpsc::UnboundedReceiver<streams::Incoming>,
    events: bool,
) {
    while let Some(inc) = incoming.next().await {
        tokio::spawn(async move {
            let start = Instant::now();
            let result = protocols::serve(&inc.protocol, inc.stream).await;
            if let Err(e) = &result {
                eprintln!("peer: {} stream from {}: {e}", inc.protocol, inc.peer);
            }
            if events {
                let mut v = json!({
                    "protocol": inc.protocol.to_string(),
                    "peer": inc.peer.to_string(),
                    "ms": start.elapsed().as_secs_f64() * 1e3,
                    "ok": result.is_ok(),
                });
                match result {
                    Ok(n) => v["bytes"] = json!(n),
                    Err(e) => v["error"] = json!(e),
                }
                emit(&with_event("stream", v));
            }
        });
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn fail(e: impl ToString) -> Value {
    json!({"ok": false, "error": e.to_string()})
}

/// One dial test; `Value` is its JSON object (with "ok").
async fn run_test(
    name: &str,
    o: &Opts,
    peer: PeerId,
    shared: &Shared,
    control: &streams::Control,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(o.timeout);
    let limit = Duration::from_secs(o.timeout);
    match name {
        "identify" => {
            let got = shared
                .wait_for(deadline, |s| {
                    s.identified
                        .get(&peer)
                        .map(|i| Ok(identify_info(peer, i)))
                        .or_else(|| s.identify_errors.get(&peer).map(|e| Err(e.clone())))
                })
                .await;
            match got {
                Some(Ok(mut v)) => {
                    let ok = v["public_key_matches"] == json!(true);
                    v["ok"] = json!(ok);
                    if !ok {
                        v["error"] = json!("identify public key is not the peer's");
                    }
                    v
                }
                Some(Err(e)) => fail(format!("identify failed: {e}")),
                None => fail("no identify within the timeout"),
            }
        }
        "ping" => {
            // rust-libp2p's ping behaviour pings every connection at once, then every
            // PING_INTERVAL when dialing: the first --pings results (any failure fails).
            let got = shared
                .wait_for(deadline, |s| {
                    let v = s.pings.get(&peer)?;
                    if let Some(Err(e)) = v.iter().find(|r| r.is_err()) {
                        return Some(Err(e.clone()));
                    }
                    (v.len() >= o.pings).then(|| {
                        Ok(v[..o.pings]
                            .iter()
                            .map(|r| r.clone().unwrap_or_default())
                            .collect::<Vec<_>>())
                    })
                })
                .await;
            match got {
                Some(Ok(rtts)) => {
                    json!({"ok": true, "rtts_us": rtts.iter().map(|d| d.as_micros() as u64).collect::<Vec<_>>()})
                }
                Some(Err(e)) => fail(format!("ping failed: {e}")),
                None => fail(format!("fewer than {} pings within the timeout", o.pings)),
            }
        }
        "echo" => {
            let start = Instant::now();
            let one = |_| async {
                let s = control.open(peer, protocols::ECHO).await?;
                protocols::echo(s, o.echo_bytes).await
            };
            let all = futures::future::join_all((0..o.echo_streams).map(one));
            match tokio::time::timeout(limit, all).await {
                Err(_) => fail("echo timed out"),
                Ok(results) => match results.into_iter().find_map(Result::err) {
                    Some(e) => fail(e),
                    None => {
                        json!({"ok": true, "streams": o.echo_streams, "bytes_per_stream": o.echo_bytes, "ms": ms(start.elapsed())})
                    }
                },
            }
        }
        "source" | "sink" => {
            let n = o.transfer_mib << 20;
            let start = Instant::now();
            let r = tokio::time::timeout(limit, async {
                if name == "source" {
                    protocols::source(control.open(peer, protocols::SOURCE).await?, n).await
                } else {
                    protocols::sink(control.open(peer, protocols::SINK).await?, n).await
                }
            })
            .await;
            let t = start.elapsed();
            match r {
                Ok(Ok(())) => {
                    json!({"ok": true, "bytes": n, "ms": ms(t), "MBps": (n as f64 / 1e6 / t.as_secs_f64() * 10.0).round() / 10.0})
                }
                Ok(Err(e)) => fail(e),
                Err(_) => fail(format!("{name} timed out")),
            }
        }
        "close" => match tokio::time::timeout(limit, async {
            protocols::close(control.open(peer, protocols::CLOSE).await?).await
        })
        .await
        {
            Ok(Ok(got)) => json!({"ok": true, "received": got}),
            Ok(Err(e)) => fail(e),
            Err(_) => fail("close timed out"),
        },
        other => fail(format!("unknown test {other}")),
    }
}

async fn dial(
    o: Opts,
    shared: Arc<Shared>,
    control: streams::Control,
    cmds: mpsc::UnboundedSender<Cmd>,
    local: PeerId,
) -> i32 {
    let target = o.target.clone().expect("dial has a target");
    let addr: Multiaddr = target
        .parse()
        .unwrap_or_else(|e| usage_error(&format!("bad multiaddr {target}: {e}")));
    let peer = match addr.iter().last() {
        Some(Protocol::P2p(p)) => p,
        _ => usage_error("the multiaddr must end in /p2p/<peer id>"),
    };
    let mut names: Vec<String> = Vec::new();
    let requested = if o.tests.is_empty() {
        vec!["all".to_string()]
    } else {
        o.tests.clone()
    };
    for t in &requested {
        let expand: Vec<&str> = match t.as_str() {
            "all" => ALL_TESTS.to_vec(),
            "transfer" => vec!["source", "sink"],
            x if ALL_TESTS.contains(&x) => vec![x],
            x => usage_error(&format!(
                "unknown or unsupported test {x} (rust peer: {ALL_TESTS:?}, transfer, all)"
            )),
        };
        for n in expand {
            if n != "connect" && !names.iter().any(|m| m == n) {
                names.push(n.to_string());
            }
        }
    }

    let mut tests = Map::new();
    let start = Instant::now();
    let _ = cmds.send(Cmd::Dial(addr.clone(), peer));
    let deadline = start + Duration::from_secs(o.timeout);
    let got = shared
        .wait_for(deadline, |s| {
            s.conns
                .get(&peer)
                .map(|v| Ok(v.clone()))
                .or_else(|| s.dial_errors.get(&peer).map(|e| Err(e.clone())))
        })
        .await;
    let connected = matches!(got, Some(Ok(_)));
    tests.insert(
        "connect".into(),
        match got {
            Some(Ok(mut v)) => {
                v["ok"] = json!(true);
                v["ms"] = json!(ms(start.elapsed()));
                v
            }
            Some(Err(e)) => fail(format!("dial failed: {e}")),
            None => fail("dial timed out"),
        },
    );
    for name in &names {
        let v = if connected {
            run_test(name, &o, peer, &shared, &control).await
        } else {
            fail("not connected")
        };
        tests.insert(name.clone(), v);
    }
    let ok = tests.values().all(|v| v["ok"] == json!(true));
    let line = json!({
        "impl": IMPL,
        "version": LIBP2P_VERSION,
        "peer_id": local.to_string(),
        "remote": target,
        "transport": transport_of(&addr),
        "ok": ok,
        "tests": tests,
    });
    emit(&line.to_string());
    if ok {
        0
    } else {
        1
    }
}

/// Resolves when the process should stop listening: SIGINT, SIGTERM, or EOF on a stdin that
/// is a pipe or socket (so a parent that dies takes the listener with it).
async fn shutdown_signal() {
    use std::os::unix::fs::FileTypeExt as _;
    use tokio::io::AsyncReadExt as _;
    let watch_stdin = std::fs::metadata("/proc/self/fd/0")
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false);
    let stdin_eof = async {
        if !watch_stdin {
            return futures::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        _ = stdin_eof => {},
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let o = parse_args();
    if o.mode == "version" {
        emit(&json!({"impl": IMPL, "version": LIBP2P_VERSION, "agent_version": AGENT}).to_string());
        return;
    }
    if o.mode != "listen" && o.mode != "dial" {
        usage_error(&format!("unknown command {}", o.mode));
    }
    let key = match o.seed {
        Some(seed) => identity::Keypair::ed25519_from_bytes(seed).expect("32-byte seed"),
        None => identity::Keypair::generate_ed25519(),
    };
    let (behaviour, control, incoming) = streams::Behaviour::new(protocols::served());
    // Listening: rust-libp2p's default (a ping at once, then every 15 s); dialing: often
    // enough for the ping test to collect its round trips quickly.
    let ping_config = if o.mode == "dial" {
        ping::Config::new().with_interval(PING_INTERVAL)
    } else {
        ping::Config::new()
    };
    let version = if o.lazy { Version::V1Lazy } else { Version::V1 };
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap_or_else(|e| usage_error(&format!("tcp transport: {e}")))
        .with_quic()
        .with_behaviour(|key| Node {
            identify: identify::Behaviour::new(
                identify::Config::new_with_signed_peer_record(PROTOCOL_VERSION.into(), key)
                    .with_agent_version(AGENT.into()),
            ),
            ping: ping::Behaviour::new(ping_config),
            streams: behaviour,
        })
        .unwrap_or_else(|e| usage_error(&format!("behaviour: {e}")))
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(300))
                .with_max_negotiating_inbound_streams(2048)
                .with_substream_upgrade_protocol_override(version)
        })
        .build();
    let mut swarm = swarm;
    let local = *swarm.local_peer_id();
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        notify: Notify::new(),
    });
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();

    let listening = o.mode == "listen";
    if listening {
        let default = if o.transport == "quic" {
            "/ip4/127.0.0.1/udp/0/quic-v1"
        } else {
            "/ip4/127.0.0.1/tcp/0"
        };
        let ma = o.listen.clone().unwrap_or_else(|| default.into());
        let ma: Multiaddr = ma
            .parse()
            .unwrap_or_else(|e| usage_error(&format!("bad --listen {ma}: {e}")));
        if let Err(e) = swarm.listen_on(ma.clone()) {
            eprintln!("peer: cannot listen on {ma}: {e}");
            std::process::exit(2);
        }
    }
    tokio::spawn(serve_incoming(incoming, o.events && listening));
    tokio::spawn(run_swarm(
        swarm,
        shared.clone(),
        cmd_rx,
        listening,
        o.events && listening,
    ));

    let code = if listening {
        shutdown_signal().await;
        0
    } else {
        dial(o, shared, control, cmd_tx, local).await
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
