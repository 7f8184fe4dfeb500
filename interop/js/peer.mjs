// js-libp2p interop peer for glueberry (TCP + Noise + yamux, identify, ping, the glueberry
// test protocols and /bench/1.0.0). Same modes, flags and JSON as interop/go/peer; the
// protocols are specified in docs/interop.md.
//
//   node peer.mjs listen [--seed HEX] [--listen MA] [--events]
//   node peer.mjs dial MULTIADDR [TEST...] [flags]    (TEST: connect identify ping echo source
//                                  sink transfer reset close goaway disconnect all bench)
//   node peer.mjs dial MULTIADDR --connect-only [--hold S]
//
// The listener prints "READY <multiaddr>/p2p/<id>" and serves until SIGINT/SIGTERM or until
// its stdin pipe closes. The dialer prints one JSON line; exit 0 = all passed, 1 = a test
// failed, 2 = usage or setup error.
import './polyfill.mjs'
import { createHash } from 'node:crypto'
import { fstatSync, readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed, generateKeyPair } from '@libp2p/crypto/keys'
import { identify, identifyPush } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { Uint8ArrayList } from 'uint8arraylist'

const P = {
  echo: '/echo/1.0.0',
  source: '/glueberry-test/source/1.0.0',
  sink: '/glueberry-test/sink/1.0.0',
  reset: '/glueberry-test/reset/1.0.0',
  close: '/glueberry-test/close/1.0.0',
  bench: '/bench/1.0.0'
}
const ALL_TESTS = ['connect', 'identify', 'ping', 'echo', 'source', 'sink', 'reset', 'close', 'goaway', 'disconnect']
const MAX_SOURCE = 2 ** 34
const LIBP2P_VERSION = JSON.parse(readFileSync(new URL('./node_modules/libp2p/package.json', import.meta.url))).version
const AGENT = `glueberry-interop-js/1.0 js-libp2p/${LIBP2P_VERSION} node/${process.versions.node}`

const now = () => performance.now()
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
const log = (...a) => console.error(...a)
const printJSON = v => process.stdout.write(JSON.stringify(v) + '\n')

// ---------------------------------------------------------------- pattern: byte i = i mod 251
const PERIOD = 251
const PATTERN = new Uint8Array(PERIOD * 264).map((_, i) => i % PERIOD)
const patternChunk = (off, n) => { const s = Number(BigInt(off) % 251n); return PATTERN.subarray(s, s + Math.min(n, 65536)) }

// ---------------------------------------------------------------- stream helpers
// Event-driven reader. It does not use the stream's async iterator: in js-libp2p 3.3.x that
// iterator subscribes to 'remoteCloseWrite' only when first pulled, so a FIN that arrives
// before then (a short lazy-negotiated request, or a reply sent right after negotiation) is
// never seen and the reader hangs. Buffered data is still delivered when 'message' is
// subscribed, so this reader subscribes at once and also checks remoteWriteStatus.
class Reader {
  constructor (stream) {
    this.stream = stream
    this.buf = new Uint8ArrayList()
    this.eof = stream.remoteWriteStatus === 'closed' || stream.status !== 'open'
    this.error = null
    this.wake = null
    const notify = () => { const w = this.wake; this.wake = null; w?.() }
    stream.addEventListener('message', e => { this.buf.append(e.data); notify() })
    stream.addEventListener('remoteCloseWrite', () => { this.eof = true; notify() })
    stream.addEventListener('close', e => { this.eof = true; if (e.error) this.error = e.error; notify() })
  }

  // wait until more bytes arrive; false on EOF, throws on reset/abort
  async fill () {
    const have = this.buf.byteLength
    // buffered data is re-dispatched in a microtask after subscribing: let it land first
    await new Promise(resolve => queueMicrotask(resolve))
    while (this.buf.byteLength === have) {
      if (this.error) throw this.error
      if (this.eof) return false
      await new Promise(resolve => { this.wake = resolve })
    }
    return true
  }

  async exactly (n) {
    while (this.buf.byteLength < n) if (!(await this.fill())) throw new Error(`EOF after ${this.buf.byteLength}/${n} bytes`)
    const out = this.buf.subarray(0, n)
    this.buf.consume(n)
    return out
  }

  // next chunk (buffered bytes first); null on EOF
  async chunk () {
    if (this.buf.byteLength === 0 && !(await this.fill())) return null
    const out = this.buf.subarray()
    this.buf.consume(out.byteLength)
    return out
  }
}

async function write (stream, data) {
  if (!stream.send(data)) await stream.onDrain()
}

function withTimeout (promise, ms, what) {
  let t
  return Promise.race([promise, new Promise((_resolve, reject) => { t = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms) })])
    .finally(() => clearTimeout(t))
}

// big-endian integers from a Uint8Array
const dv = b => new DataView(b.buffer, b.byteOffset, b.byteLength)
const readU64 = b => Number(dv(b).getBigUint64(0))
const readU32 = b => dv(b).getUint32(0)
const u64be = n => { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(n)); return b }
const rssKiB = () => process.resourceUsage().maxRSS
const cpuS = () => { const c = process.cpuUsage(); return (c.user + c.system) / 1e6 }

// ---------------------------------------------------------------- listener-side handlers
const handlers = {
  // echo every byte until EOF, then close the write side
  async [P.echo] (stream) {
    const r = new Reader(stream); let n = 0
    for (let c; (c = await r.chunk()) !== null;) { n += c.byteLength; await write(stream, c) }
    await stream.close()
    return { bytes: n }
  },
  // 8-byte big-endian N in, N pattern bytes out, close
  async [P.source] (stream) {
    const r = new Reader(stream)
    const n = readU64(await r.exactly(8))
    if (n > MAX_SOURCE) throw new Error(`source length ${n} over limit`)
    for (let off = 0; off < n;) { const c = patternChunk(off, n - off); await write(stream, c); off += c.byteLength }
    await stream.close()
    return { bytes: n }
  },
  // read to EOF, reply 8-byte big-endian count + sha256, close
  async [P.sink] (stream) {
    const r = new Reader(stream); const h = createHash('sha256'); let n = 0
    for (let c; (c = await r.chunk()) !== null;) { n += c.byteLength; h.update(c) }
    const out = new Uint8Array(40); out.set(u64be(n)); out.set(h.digest(), 8)
    await write(stream, out)
    await stream.close()
    return { bytes: n }
  },
  // read one byte, then reset
  async [P.reset] (stream) {
    await new Reader(stream).exactly(1)
    stream.abort(new Error('reset by the reset test protocol'))
    return { reset: true }
  },
  // write "bye", close the write side, read nothing more
  async [P.close] (stream) {
    await write(stream, new TextEncoder().encode('bye'))
    await stream.close()
    return {}
  },
  // /bench/1.0.0: the shared benchmark workload
  async [P.bench] (stream) {
    const r = new Reader(stream)
    const mode = String.fromCharCode((await r.exactly(1))[0])
    if (mode === 'E') {
      await write(stream, Uint8Array.of(0x45))
      for (let c; (c = await r.chunk()) !== null;) await write(stream, c)
    } else if (mode === 'M') {
      const n = readU32(await r.exactly(4))
      for (let i = 0; i < n; i++) {
        let len = readU32(await r.exactly(4))
        while (len > 0) {
          if (r.buf.byteLength === 0 && !(await r.fill())) throw new Error('EOF')
          const k = Math.min(len, r.buf.byteLength); r.buf.consume(k); len -= k
        }
      }
      await write(stream, Uint8Array.of(0x4b))
    } else if (mode === 'B') {
      let left = readU64(await r.exactly(8))
      while (left > 0) {
        if (r.buf.byteLength === 0 && !(await r.fill())) throw new Error('EOF')
        const k = Math.min(left, r.buf.byteLength); r.buf.consume(k); left -= k
      }
      await write(stream, Uint8Array.of(0x4b))
    } else if (mode === 'R') {
      await write(stream, new TextEncoder().encode(`${rssKiB()} ${cpuS().toFixed(6)}\n`))
    } else {
      throw new Error(`unknown bench mode ${mode}`)
    }
    await stream.close()
    return { mode }
  }
}

async function register (node, events) {
  for (const [proto, fn] of Object.entries(handlers)) {
    await node.handle(proto, async (stream, connection) => {
      const t0 = now()
      let info = {}; let error
      try { info = await fn(stream) } catch (err) { error = err; stream.abort(err) }
      if (events) {
        printJSON({ event: 'stream', protocol: proto, peer: connection.remotePeer.toString(), ms: now() - t0, ok: error === undefined, ...info, ...(error ? { error: String(error.message ?? error) } : {}) })
      } else if (error && error.name !== 'StreamResetError') {
        log(`${proto}: ${error.message}`)
      }
    }, { maxInboundStreams: 4096, maxOutboundStreams: 4096, runOnLimitedConnection: false })
  }
}

// ---------------------------------------------------------------- node
async function makeNode (o, listen) {
  let privateKey
  if (o.seed) {
    if (!/^[0-9a-fA-F]{64}$/.test(o.seed)) throw new Error('--seed must be 64 hex digits')
    privateKey = await generateKeyPairFromSeed('Ed25519', Uint8Array.from(Buffer.from(o.seed, 'hex')))
  } else {
    privateKey = await generateKeyPair('Ed25519')
  }
  if (o.transport !== 'tcp') throw new Error(`--transport ${o.transport}: the js peer supports tcp only`)
  if (!['noise', 'both'].includes(o.security)) throw new Error(`--security ${o.security}: the js peer supports noise only`)
  return createLibp2p({
    privateKey,
    addresses: { listen: listen ? [o.listen ?? '/ip4/127.0.0.1/tcp/0'] : [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify(), identifyPush: identifyPush(), ping: ping() },
    nodeInfo: { userAgent: AGENT },
    // the default (5 inbound connections/s per host) refuses the bench's repeated dials
    connectionManager: { inboundConnectionThreshold: 1_000_000, maxConnections: 10_000 }
  })
}

function connInfo (c) {
  return {
    security: c.encryption ?? '',
    muxer: c.multiplexer ?? '',
    transport: 'tcp',
    remote_addr: c.remoteAddr.toString(),
    remote_peer: c.remotePeer.toString(),
    direction: c.direction
  }
}

// resolves when stdin (a pipe or socket) ends, or on SIGINT/SIGTERM
function waitForExit () {
  return new Promise(resolve => {
    process.once('SIGINT', () => resolve('SIGINT'))
    process.once('SIGTERM', () => resolve('SIGTERM'))
    let st
    try { st = fstatSync(0) } catch { return }
    if (st.isFIFO() || st.isSocket()) {
      process.stdin.on('end', () => resolve('stdin closed'))
      process.stdin.on('error', () => resolve('stdin closed'))
      process.stdin.resume()
    }
  })
}

const OPTIONS = {
  transport: { type: 'string', default: 'tcp' },
  security: { type: 'string', default: 'noise' },
  seed: { type: 'string' },
  listen: { type: 'string' },
  events: { type: 'boolean', default: false },
  timeout: { type: 'string', default: '60' },
  'connect-only': { type: 'boolean', default: false },
  hold: { type: 'string', default: '0' },
  eager: { type: 'boolean', default: false },
  lazy: { type: 'boolean', default: false },
  pings: { type: 'string', default: '5' },
  'echo-streams': { type: 'string', default: '8' },
  'echo-bytes': { type: 'string', default: String(256 << 10) },
  'transfer-mib': { type: 'string', default: '64' },
  'goaway-streams': { type: 'string', default: '4' },
  'setup-n': { type: 'string', default: '20' },
  msgs: { type: 'string', default: '20000' },
  'msg-size': { type: 'string', default: '1024' },
  'bulk-mib': { type: 'string', default: '256' },
  chunk: { type: 'string', default: '65536' },
  'rtt-n': { type: 'string', default: '2000' },
  warmup: { type: 'string', default: '100' }
}

function usage (msg) {
  if (msg) log(msg)
  log('usage: node peer.mjs listen [flags] | dial MULTIADDR [TEST...] [flags] | version')
  process.exit(2)
}

// ---------------------------------------------------------------- listen
async function listen (o) {
  const node = await makeNode(o, true)
  await register(node, o.events)
  if (o.events) {
    node.addEventListener('connection:open', e => printJSON({ event: 'connected', ...connInfo(e.detail) }))
    node.addEventListener('connection:close', e => printJSON({ event: 'disconnected', remote_peer: e.detail.remotePeer.toString() }))
    node.addEventListener('peer:identify', e => {
      const r = e.detail
      printJSON({
        event: 'identified',
        remote_peer: r.peerId.toString(),
        agent_version: r.agentVersion,
        protocol_version: r.protocolVersion,
        protocols: [...r.protocols].sort(),
        listen_addrs: r.listenAddrs.map(String),
        observed_addr: r.observedAddr ? String(r.observedAddr) : undefined,
        signed_peer_record: r.signedPeerRecord != null
      })
    })
  }
  const addr = node.getMultiaddrs()[0]
  process.stdout.write(`READY ${addr.toString()}\n`)
  log(`listener exiting: ${await waitForExit()}`)
  await withTimeout(node.stop(), 3000, 'stop').catch(() => {})
  process.exit(0)
}

// ---------------------------------------------------------------- dial tests
class Dialer {
  constructor (node, ma, o) {
    this.node = node; this.ma = ma; this.o = o
    this.peerId = ma.getComponents().find(c => c.name === 'p2p')?.value
    this.timeout = Number(o.timeout) * 1000
    this.identified = Promise.withResolvers()
    node.addEventListener('peer:identify', e => {
      if (e.detail.peerId.toString() === this.peerId) this.identified.resolve(e.detail)
    })
  }

  signal () { return AbortSignal.timeout(this.timeout) }

  conn () {
    const c = this.node.getConnections().find(c => c.remotePeer.toString() === this.peerId && c.status === 'open')
    if (!c) throw new Error('not connected')
    return c
  }

  async open (proto) {
    const c = this.conn()
    return c.newStream(proto, { signal: this.signal(), negotiateFully: !this.o.lazy })
  }

  async connect () {
    const t0 = now()
    const c = await this.node.dial(this.ma, { signal: this.signal() })
    const res = { ms: now() - t0, ...connInfo(c) }
    if (c.remotePeer.toString() !== this.peerId) throw new Error(`remote peer ${c.remotePeer}, want ${this.peerId}`)
    return res
  }

  async identify () {
    const r = await withTimeout(this.identified.promise, this.timeout, 'identify')
    return {
      agent_version: r.agentVersion,
      protocol_version: r.protocolVersion,
      protocols: [...r.protocols].sort(),
      listen_addrs: r.listenAddrs.map(String),
      observed_addr: r.observedAddr ? String(r.observedAddr) : undefined,
      signed_peer_record: r.signedPeerRecord != null,
      public_key_matches: r.peerId.toString() === this.peerId
    }
  }

  async ping () {
    const rtts = []
    for (let i = 0; i < Number(this.o.pings); i++) {
      rtts.push(1000 * await this.node.services.ping.ping(this.conn().remotePeer, { signal: this.signal() }))
    }
    return { rtts_us: rtts }
  }

  async echoOne (n) {
    const s = await this.open(P.echo)
    const r = new Reader(s)
    const writer = (async () => {
      for (let off = 0; off < n;) { const c = patternChunk(off, Math.min(16384, n - off)); await write(s, c); off += c.byteLength }
      await s.close()
    })()
    const got = await withTimeout(readPattern(r), this.timeout, 'echo read')
    await writer
    if (got !== n) throw new Error(`echoed ${got} bytes, sent ${n}`)
  }

  async echo () {
    const k = Number(this.o['echo-streams']); const n = Number(this.o['echo-bytes'])
    const t0 = now()
    await Promise.all(Array.from({ length: k }, () => this.echoOne(n)))
    return { streams: k, bytes_per_stream: n, ms: now() - t0 }
  }

  async source () {
    const n = Number(this.o['transfer-mib']) * 2 ** 20
    const t0 = now()
    const s = await this.open(P.source)
    await write(s, u64be(n)); await s.close()
    const got = await withTimeout(readPattern(new Reader(s)), this.timeout, 'source read')
    if (got !== n) throw new Error(`received ${got} bytes, want ${n}`)
    const ms = now() - t0
    return { bytes: n, ms, MBps: n / ms / 1e3 }
  }

  async sink () {
    const n = Number(this.o['transfer-mib']) * 2 ** 20
    const t0 = now()
    const s = await this.open(P.sink)
    const h = createHash('sha256')
    for (let off = 0; off < n;) { const c = patternChunk(off, n - off); h.update(c); await write(s, c); off += c.byteLength }
    await s.close()
    const r = new Reader(s)
    const reply = await withTimeout(readAll(r), this.timeout, 'sink reply')
    if (reply.byteLength !== 40) throw new Error(`reply is ${reply.byteLength} bytes, want 40`)
    const count = readU64(reply)
    if (count !== n) throw new Error(`sink counted ${count} bytes, sent ${n}`)
    if (Buffer.compare(Buffer.from(reply.subarray(8)), h.digest()) !== 0) throw new Error('sink sha256 differs from what was sent')
    const ms = now() - t0
    return { bytes: n, ms, MBps: n / ms / 1e3 }
  }

  async reset () {
    const s = await this.open(P.reset)
    await write(s, Uint8Array.of(0x78))
    let data
    try {
      data = await withTimeout(readAll(new Reader(s)), this.timeout, 'reset read')
    } catch (err) {
      if (err.name === 'StreamResetError') return { error_seen: `${err.name}: ${err.message}` }
      throw new Error(`expected a stream reset, got: ${err.name}: ${err.message}`)
    }
    throw new Error(`clean EOF after ${data.byteLength} bytes where a reset was expected`)
  }

  async close () {
    const s = await this.open(P.close)
    const data = await withTimeout(readAll(new Reader(s)), this.timeout, 'close read')
    const text = new TextDecoder().decode(data)
    await s.close()
    if (text !== 'bye') throw new Error(`received ${JSON.stringify(text)}, want "bye"`)
    return { received: text }
  }

  // goaway: connection.abort() (yamux GoAway InternalError=2); disconnect: connection.close()
  // (yamux GoAway NormalTermination=0). Streams must fail/end promptly; then reconnect.
  async goaway (abort) {
    const k = Number(this.o['goaway-streams'])
    const streams = []
    for (let i = 0; i < k; i++) {
      const s = await this.open(P.echo); const r = new Reader(s)
      const msg = new TextEncoder().encode(`stream ${i}`)
      await write(s, msg)
      await withTimeout(r.exactly(msg.byteLength), this.timeout, 'echo before close')
      streams.push(r)
    }
    const c = this.conn()
    const t0 = now()
    if (abort) c.abort(new Error('goaway test')); else await withTimeout(c.close(), 5000, 'connection close').catch(err => c.abort(err))
    for (const [i, r] of streams.entries()) {
      try {
        const more = await withTimeout(r.fill(), 5000, `stream ${i} after close`)
        if (more) throw new Error(`stream ${i} still readable after connection close`)
      } catch (err) {
        if (/timed out/.test(err.message) || /still readable/.test(err.message)) throw err
      }
    }
    const res = { streams: k, streams_failed_ms: now() - t0, ...(abort ? { code: 2 } : { code: 0 }) }
    const t1 = now()
    await this.node.dial(this.ma, { signal: this.signal() })
    await this.echoOne(1024)
    res.reconnect_ms = now() - t1
    return res
  }

  // the shared /bench/1.0.0 workload
  async remote () {
    const s = await this.conn().newStream(P.bench); const r = new Reader(s)
    await write(s, Uint8Array.of(0x52))
    let line = ''
    while (!line.endsWith('\n')) { const c = await r.chunk(); if (c === null) throw new Error('EOF'); line += new TextDecoder().decode(c) }
    await s.close()
    return line.trim().split(' ').map(Number)
  }

  async bench () {
    const o = this.o
    const [setupN, msgs, msgSize, bulkMiB, chunkSize, rttN, warmup] =
      ['setup-n', 'msgs', 'msg-size', 'bulk-mib', 'chunk', 'rtt-n', 'warmup'].map(k => Number(o[k]))
    const res = { impl: `js-libp2p ${LIBP2P_VERSION}` }
    const median = xs => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2 }
    const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.round(p / 100 * (s.length - 1)))] }
    await this.node.hangUp(this.ma); await sleep(50)
    const setup = []; const phases = []
    for (let i = 0; i < setupN; i++) {
      const t0 = now()
      const conn = await this.node.dial(this.ma)
      const t1 = now()
      const s = await conn.newStream(P.bench)
      const t2 = now()
      const r = new Reader(s)
      await write(s, Uint8Array.of(0x45)); await r.exactly(1)
      const t3 = now()
      setup.push(t3 - t0); phases.push([t1 - t0, t2 - t1, t3 - t2])
      await s.close(); await this.node.hangUp(this.ma); await sleep(50)
    }
    res.setup_ms = setup
    if (setupN > 0) res.setup_phases_ms = [0, 1, 2].map(j => median(phases.map(p => p[j])))
    const conn = await this.node.dial(this.ma)
    if (msgs > 0) {
      const s = await conn.newStream(P.bench); const r = new Reader(s)
      const frame = new Uint8Array(4 + msgSize).fill(0x6d); new DataView(frame.buffer).setUint32(0, msgSize)
      const hdr = new Uint8Array(5); hdr[0] = 0x4d; new DataView(hdr.buffer).setUint32(1, msgs)
      const rc0 = (await this.remote())[1]; const c0 = cpuS()
      const t0 = now()
      await write(s, hdr)
      for (let i = 0; i < msgs; i++) await write(s, frame)
      await r.exactly(1)
      res.msgs_per_s = msgs / ((now() - t0) / 1e3)
      const c1 = cpuS(); const rc1 = (await this.remote())[1]
      res.msgs_cpu_us_dialer = (c1 - c0) / msgs * 1e6
      res.msgs_cpu_us_listener = (rc1 - rc0) / msgs * 1e6
      await s.close()
    }
    if (bulkMiB > 0) {
      const s = await conn.newStream(P.bench); const r = new Reader(s)
      const total = bulkMiB * 2 ** 20
      const chunk = new Uint8Array(chunkSize).fill(0x62)
      const hdr = new Uint8Array(9); hdr[0] = 0x42; new DataView(hdr.buffer).setBigUint64(1, BigInt(total))
      const rc0 = (await this.remote())[1]; const c0 = cpuS()
      const t0 = now()
      await write(s, hdr)
      for (let sent = 0; sent < total; sent += chunkSize) await write(s, chunk)
      await r.exactly(1)
      res.bulk_MBps = total / ((now() - t0) / 1e3) / 1e6
      const c1 = cpuS(); const rc1 = (await this.remote())[1]
      res.bulk_cpu_s_per_GB = (c1 - c0 + rc1 - rc0) / total * 1e9
      await s.close()
    }
    if (rttN > 0) {
      const s = await conn.newStream(P.bench); const r = new Reader(s)
      await write(s, Uint8Array.of(0x45)); await r.exactly(1)
      const msg = new Uint8Array(msgSize).fill(0x70)
      const rtts = []
      for (let i = 0; i < rttN + warmup; i++) {
        const t0 = now()
        await write(s, msg); await r.exactly(msgSize)
        if (i >= warmup) rtts.push((now() - t0) * 1e3)
      }
      res.rtt_us_median = median(rtts); res.rtt_us_p99 = pct(rtts, 99)
      await s.close()
    }
    res.rss_listener_MB = (await this.remote())[0] / 1024
    res.rss_dialer_MB = rssKiB() / 1024
    return res
  }
}

// read to EOF, checking each byte against the pattern; returns the byte count
async function readPattern (r) {
  let off = 0
  for (let c; (c = await r.chunk()) !== null;) {
    for (let i = 0; i < c.byteLength; i += 65536) {
      const part = c.subarray(i, i + 65536)
      if (Buffer.compare(part, patternChunk(off + i, part.byteLength)) !== 0) {
        throw new Error(`pattern mismatch in bytes ${off + i}..${off + i + part.byteLength}`)
      }
    }
    off += c.byteLength
  }
  return off
}

async function readAll (r) {
  const out = new Uint8ArrayList()
  for (let c; (c = await r.chunk()) !== null;) out.append(c)
  return out.subarray()
}

async function dial (o, positionals) {
  const target = positionals.find(p => p.startsWith('/'))
  if (!target) usage('dial needs a multiaddr')
  let tests = []
  for (const p of positionals) {
    if (p.startsWith('/')) continue
    if (p === 'all') tests.push(...ALL_TESTS)
    else if (p === 'transfer') tests.push('source', 'sink')
    else if ([...ALL_TESTS, 'bench'].includes(p)) tests.push(p)
    else usage(`unknown test ${p}`)
  }
  if (tests.length === 0 && !o['connect-only']) tests = [...ALL_TESTS]
  if (tests[0] !== 'connect') tests.unshift('connect')
  tests = [...new Set(tests)]
  const ma = multiaddr(target)
  const node = await makeNode(o, false)
  await register(node, false)
  const d = new Dialer(node, ma, o)
  const out = { impl: 'js-libp2p', version: LIBP2P_VERSION, peer_id: node.peerId.toString(), remote: target, transport: 'tcp', security: 'noise' }
  const results = {}
  let allOK = true
  for (const t of tests) {
    if (t !== 'connect' && results.connect?.ok !== true) { results[t] = { ok: false, error: 'not connected' }; allOK = false; continue }
    try {
      let r
      switch (t) {
        case 'connect': r = await d.connect(); break
        case 'identify': r = await d.identify(); break
        case 'ping': r = await d.ping(); break
        case 'echo': r = await d.echo(); break
        case 'source': r = await d.source(); break
        case 'sink': r = await d.sink(); break
        case 'reset': r = await d.reset(); break
        case 'close': r = await d.close(); break
        case 'goaway': r = await d.goaway(true); break
        case 'disconnect': r = await d.goaway(false); break
        case 'bench': Object.assign(out, await d.bench()); r = {}; break
      }
      results[t] = { ok: true, ...r }
    } catch (err) {
      results[t] = { ok: false, error: `${err.name}: ${err.message}` }
      allOK = false
    }
    if (t === 'connect' && o['connect-only']) break
  }
  out.ok = allOK
  out.tests = results
  printJSON(out)
  if (o['connect-only'] && allOK) {
    if (Number(o.hold) > 0) await sleep(Number(o.hold) * 1000); else await waitForExit()
  }
  await withTimeout(node.stop(), 3000, 'stop').catch(() => {})
  process.exit(allOK ? 0 : 1)
}

// ---------------------------------------------------------------- main
const mode = process.argv[2]
let parsed
try {
  parsed = parseArgs({ args: process.argv.slice(3), options: OPTIONS, allowPositionals: true, strict: true })
} catch (err) {
  usage(err.message)
}
const { values: o, positionals } = parsed
try {
  if (mode === 'listen') await listen(o)
  else if (mode === 'dial') await dial(o, positionals)
  else if (mode === 'version') printJSON({ impl: 'js-libp2p', version: LIBP2P_VERSION, agent: AGENT })
  else usage()
} catch (err) {
  log(err)
  process.exit(2)
}
