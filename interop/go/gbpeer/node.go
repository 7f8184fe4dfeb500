package main

// A minimal Glueberry-v1 node on go-libp2p that follows Glueberry-Go's stream rules
// (shared/reference/glueberry-go-v1.md §1.3): one stream per (peer, name) used both ways,
// opened lazily by the first sender with host.NewStream; an inbound stream is accepted only
// for a prepared name with a key and no open stored stream (else reset); a read loop that
// ends only marks the stream closed; the handshake stream is unencrypted and closed by
// FinalizeHandshake.

import (
	"bufio"
	"context"
	"crypto/cipher"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/glueberry/interop/internal/common"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"golang.org/x/crypto/chacha20poly1305"
)

const handshakeName = "handshake"

func streamProto(name string) protocol.ID { return protocol.ID("/glueberry/stream/" + name + "/1.0.0") }

// Message is one decrypted (or handshake) payload.
type Message struct {
	Peer   peer.ID
	Stream string
	Data   []byte
}

type gbStream struct {
	s      network.Stream
	wmu    sync.Mutex
	closed bool
}

type peerState struct {
	key      []byte
	aead     cipher.AEAD
	allowed  map[string]bool
	streams  map[string]*gbStream
	remotePK []byte

	// handshake progress
	sentHello, sentPubKey, prepared, established bool
	started                                      time.Time
	establishedCh                                chan struct{}
}

// Node is the Glueberry layer of one host.
type Node struct {
	h     host.Host
	priv  ed25519.PrivateKey
	names []string // stream names this node prepares for every peer
	mu    sync.Mutex
	peers map[peer.ID]*peerState

	inbox       func(Message) // application delivery (encrypted streams)
	onEstablish func(peer.ID, *peerState)
	events      bool

	decryptFailures atomic.Int64
	resets          atomic.Int64
}

func NewNode(h host.Host, priv ed25519.PrivateKey, names []string, events bool) *Node {
	n := &Node{h: h, priv: priv, names: names, peers: map[peer.ID]*peerState{}, events: events}
	h.SetStreamHandler(streamProto(handshakeName), n.handleHandshakeStream)
	for _, name := range names {
		name := name
		h.SetStreamHandler(streamProto(name), func(s network.Stream) { n.handleStream(name, s) })
	}
	return n
}

func (n *Node) state(p peer.ID) *peerState {
	st, ok := n.peers[p]
	if !ok {
		st = &peerState{allowed: map[string]bool{}, streams: map[string]*gbStream{}, establishedCh: make(chan struct{})}
		n.peers[p] = st
	}
	return st
}

func (n *Node) event(ev map[string]any) {
	if n.events {
		common.PrintJSON(ev)
	}
}

// --- sending ---

// Send frames data on stream name to p, opening the stream if none is open (like Node.Send).
func (n *Node) Send(ctx context.Context, p peer.ID, name string, data []byte) error {
	if len(data) > MaxMessage {
		return fmt.Errorf("message of %d bytes over MaxMessageSize", len(data))
	}
	n.mu.Lock()
	st := n.state(p)
	payload := data
	if name != handshakeName {
		if !st.allowed[name] || st.aead == nil {
			n.mu.Unlock()
			return fmt.Errorf("stream %q not allowed for peer %s (call EstablishStreams first)", name, p)
		}
		blob, err := Seal(st.key, data, nil)
		if err != nil {
			n.mu.Unlock()
			return err
		}
		payload = blob
	}
	gs := st.streams[name]
	n.mu.Unlock()
	if gs == nil || gs.isClosed() {
		s, err := n.h.NewStream(ctx, p, streamProto(name))
		if err != nil {
			return fmt.Errorf("open %s: %w", name, err)
		}
		n.mu.Lock()
		if cur := st.streams[name]; cur != nil && !cur.isClosed() {
			_ = s.Close() // another sender won the race: use the stored stream
			gs = cur
		} else {
			gs = &gbStream{s: s}
			st.streams[name] = gs
			go n.readLoop(p, name, gs)
		}
		n.mu.Unlock()
	}
	frame := Frame(payload)
	gs.wmu.Lock()
	defer gs.wmu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		_ = gs.s.SetWriteDeadline(dl)
	} else {
		_ = gs.s.SetWriteDeadline(time.Time{})
	}
	_, err := gs.s.Write(frame)
	return err
}

func (g *gbStream) isClosed() bool {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	return g.closed
}

func (g *gbStream) markClosed() {
	g.wmu.Lock()
	g.closed = true
	g.wmu.Unlock()
}

// --- receiving ---

func (n *Node) handleHandshakeStream(s network.Stream) {
	p := s.Conn().RemotePeer()
	n.mu.Lock()
	st := n.state(p)
	if cur := st.streams[handshakeName]; cur != nil && !cur.isClosed() {
		n.mu.Unlock()
		n.resets.Add(1)
		_ = s.Reset()
		return
	}
	if st.established || st.sentHello {
		// a new handshake after an earlier one ended: a fresh session with this peer
		fresh := &peerState{allowed: map[string]bool{}, streams: st.streams, establishedCh: make(chan struct{})}
		n.peers[p] = fresh
		st = fresh
	}
	gs := &gbStream{s: s}
	st.streams[handshakeName] = gs
	st.started = time.Now()
	n.mu.Unlock()
	go n.readLoop(p, handshakeName, gs)
	// the listener side answers the dialer's first message with its own Hello (§1.6)
	n.sendHello(p)
}

func (n *Node) handleStream(name string, s network.Stream) {
	p := s.Conn().RemotePeer()
	n.mu.Lock()
	st := n.state(p)
	cur := st.streams[name]
	if !st.allowed[name] || st.aead == nil || (cur != nil && !cur.isClosed()) {
		n.mu.Unlock()
		n.resets.Add(1)
		n.event(map[string]any{"event": "stream_refused", "peer": p.String(), "stream": name})
		_ = s.Reset()
		return
	}
	gs := &gbStream{s: s}
	st.streams[name] = gs
	n.mu.Unlock()
	n.readLoop(p, name, gs)
}

func (n *Node) readLoop(p peer.ID, name string, gs *gbStream) {
	defer gs.markClosed()
	r := bufio.NewReaderSize(gs.s, 64<<10)
	for {
		payload, err := ReadFrame(r)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, network.ErrReset) && !strings.Contains(err.Error(), "closed") {
				common.Logf("read %s from %s: %v", name, p, err)
			}
			return
		}
		if name == handshakeName {
			n.onHandshake(p, payload)
			continue
		}
		n.mu.Lock()
		aead := n.state(p).aead
		n.mu.Unlock()
		if aead == nil {
			continue
		}
		plain, err := Open(aead, payload)
		if err != nil {
			n.decryptFailures.Add(1) // dropped silently, the stream stays open (Go behaviour)
			n.event(map[string]any{"event": "decrypt_failed", "peer": p.String(), "stream": name})
			continue
		}
		if n.inbox != nil {
			n.inbox(Message{Peer: p, Stream: name, Data: plain})
		}
	}
}

// --- the integration test's handshake (§1.6) ---

func (n *Node) hsCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

func (n *Node) sendHello(p peer.ID) {
	n.mu.Lock()
	st := n.state(p)
	already := st.sentHello
	st.sentHello = true
	if st.started.IsZero() {
		st.started = time.Now()
	}
	n.mu.Unlock()
	if already {
		return
	}
	ctx, cancel := n.hsCtx()
	defer cancel()
	if err := n.Send(ctx, p, handshakeName, HelloMsg); err != nil {
		n.event(map[string]any{"event": "handshake_failed", "peer": p.String(), "error": err.Error()})
	}
}

func (n *Node) onHandshake(p peer.ID, msg []byte) {
	ctx, cancel := n.hsCtx()
	defer cancel()
	fail := func(err error) {
		common.Logf("handshake with %s: %v", p, err)
		n.event(map[string]any{"event": "handshake_failed", "peer": p.String(), "error": err.Error()})
	}
	switch {
	case string(msg) == string(HelloMsg):
		n.mu.Lock()
		st := n.state(p)
		dup := st.sentPubKey
		st.sentPubKey = true
		n.mu.Unlock()
		if !dup {
			if err := n.Send(ctx, p, handshakeName, PubKeyMsg(n.priv.Public().(ed25519.PublicKey))); err != nil {
				fail(err)
			}
		}
	case ParsePubKeyMsg(msg) != nil:
		pk := append([]byte(nil), ParsePubKeyMsg(msg)...)
		key, err := DeriveKey(n.priv, pk)
		if err != nil {
			fail(fmt.Errorf("PubKey: %w", err))
			return
		}
		aead, err := chacha20poly1305.New(key)
		if err != nil {
			fail(err)
			return
		}
		n.mu.Lock()
		st := n.state(p)
		st.key, st.aead, st.remotePK, st.prepared = key, aead, pk, true // PrepareStreams
		for _, name := range n.names {
			st.allowed[name] = true
		}
		n.mu.Unlock()
		if err := n.Send(ctx, p, handshakeName, CompleteMsg); err != nil {
			fail(err)
		}
	case string(msg) == string(CompleteMsg):
		n.mu.Lock()
		st := n.state(p)
		if !st.prepared || st.established {
			n.mu.Unlock()
			return
		}
		st.established = true // FinalizeHandshake: close our handshake stream
		hs := st.streams[handshakeName]
		delete(st.streams, handshakeName)
		ms := float64(time.Since(st.started).Microseconds()) / 1e3
		close(st.establishedCh)
		n.mu.Unlock()
		if hs != nil {
			_ = hs.s.Close()
		}
		n.event(map[string]any{"event": "established", "peer": p.String(), "ms": ms,
			"pubkey_matches_peer_id": pubKeyMatches(p, st.remotePK)})
		if n.onEstablish != nil {
			go n.onEstablish(p, st)
		}
	default:
		fail(fmt.Errorf("unknown handshake message %x", msg))
	}
}

func pubKeyMatches(p peer.ID, pk []byte) bool {
	id, err := peerIDFromEd25519(pk)
	return err == nil && id == p
}
