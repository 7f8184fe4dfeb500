// Command natpeer is the go-libp2p NAT-traversal peer for the interop tests in the NAT lab
// (tests/interop/test_nat_go.py). It speaks the same line protocol as the Python lab peer
// (tests/netlab/natpeer.py), so one test driver runs either:
//
//	natpeer '<json config>'
//
// config: {"name", "listen" (multiaddr), "seed" (64 hex digits, optional),
// "relay_service" (bool), "relay_limits" {"circuit_data", "circuit_duration"},
// "relays" [multiaddr with /p2p/...] (reserve with each at start),
// "hole_punching" (bool), "autonat_v2" (serve AutoNAT v2), "observed_threshold" (int; go's
// default is 4)}.
//
// It prints {"ready": true, "peer_id", "addrs"} and then answers one JSON command per stdin
// line with one JSON line: info, wait_observed, wait_event {type, n, timeout}, events,
// connect {addr, timeout}, conns {peer}, echo {peer, size}, wait_direct {peer, timeout},
// disconnect {peer}, quit. Events use the Python names: ReservationObtained,
// HolePunchSucceeded, HolePunchFailed (from go's hole-punch tracer, both roles). Logs go
// to stderr.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/glueberry/interop/internal/common"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/observedaddrs"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

const echoProtocol = protocol.ID("/echo/1.0.0")

type config struct {
	Name              string         `json:"name"`
	Listen            string         `json:"listen"`
	Seed              string         `json:"seed"`
	RelayService      bool           `json:"relay_service"`
	RelayLimits       map[string]int `json:"relay_limits"`
	Relays            []string       `json:"relays"`
	HolePunching      bool           `json:"hole_punching"`
	AutoNATv2         bool           `json:"autonat_v2"`
	ObservedThreshold int            `json:"observed_threshold"`
}

type node struct {
	h       host.Host
	start   time.Time
	mu      sync.Mutex
	events  []map[string]any
	changed chan struct{}
	out     sync.Mutex
}

func (n *node) emit(ev map[string]any) {
	n.mu.Lock()
	ev["t"] = time.Since(n.start).Seconds()
	n.events = append(n.events, ev)
	close(n.changed)
	n.changed = make(chan struct{})
	n.mu.Unlock()
	common.Logf("event %v", ev)
}

// Trace implements holepunch.EventTracer: go's hole-punch events as ours.
func (n *node) Trace(evt *holepunch.Event) {
	switch e := evt.Evt.(type) {
	case *holepunch.EndHolePunchEvt:
		if e.Success {
			n.emit(map[string]any{"type": "HolePunchSucceeded", "peer": evt.Remote.String(),
				"elapsed": e.EllapsedTime.Seconds()})
		} else {
			n.emit(map[string]any{"type": "HolePunchFailed", "peer": evt.Remote.String(),
				"error": e.Error})
		}
	case *holepunch.DirectDialEvt:
		if e.Success {
			n.emit(map[string]any{"type": "HolePunchSucceeded", "peer": evt.Remote.String(),
				"attempts": 0, "elapsed": e.EllapsedTime.Seconds()})
		}
	case *holepunch.StartHolePunchEvt:
		common.Logf("hole punch with %s: addrs %v rtt %v", evt.Remote, e.RemoteAddrs, e.RTT)
	case *holepunch.ProtocolErrorEvt:
		common.Logf("hole punch protocol error with %s: %s", evt.Remote, e.Error)
	}
}

func (n *node) print(v any) {
	n.out.Lock()
	defer n.out.Unlock()
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
}

func main() {
	var cfg config
	if len(os.Args) != 2 || json.Unmarshal([]byte(os.Args[1]), &cfg) != nil {
		fmt.Fprintln(os.Stderr, "usage: natpeer '<json config>'")
		os.Exit(2)
	}
	if cfg.ObservedThreshold > 0 {
		observedaddrs.ActivationThresh = cfg.ObservedThreshold
	}
	n := &node{start: time.Now(), changed: make(chan struct{})}
	h, err := newHost(cfg, n)
	if err != nil {
		common.Logf("host: %v", err)
		os.Exit(2)
	}
	defer h.Close()
	n.h = h
	h.SetStreamHandler(echoProtocol, func(s network.Stream) {
		defer s.Close()
		if _, err := io.Copy(s, s); err != nil {
			s.Reset()
			return
		}
		s.CloseWrite()
	})
	if cfg.RelayService {
		rc := relay.DefaultResources()
		if v, ok := cfg.RelayLimits["circuit_data"]; ok {
			rc.Limit.Data = int64(v)
		}
		// go has no "unlimited" duration (0 would end every circuit at once): keep 2 min.
		if v, ok := cfg.RelayLimits["circuit_duration"]; ok && v > 0 {
			rc.Limit.Duration = time.Duration(v) * time.Second
		}
		if _, err := relay.New(h, relay.WithResources(rc)); err != nil {
			common.Logf("relay: %v", err)
			os.Exit(2)
		}
	}
	for _, r := range cfg.Relays {
		go n.keepReservation(r)
	}
	n.print(map[string]any{"ready": true, "peer_id": h.ID().String(), "addrs": addrStrings(h.Addrs())})
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var req map[string]any
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			n.print(map[string]any{"ok": false, "error": "bad json"})
			continue
		}
		if req["cmd"] == "quit" {
			n.print(map[string]any{"ok": true})
			return
		}
		res, err := n.handle(req)
		if err != nil {
			n.print(map[string]any{"ok": false, "error": err.Error()})
			continue
		}
		res["ok"] = true
		n.print(res)
	}
}

func newHost(cfg config, n *node) (host.Host, error) {
	var priv crypto.PrivKey
	if cfg.Seed != "" {
		seed, err := hex.DecodeString(cfg.Seed)
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, errors.New("seed must be 64 hex digits")
		}
		k, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed))
		if err != nil {
			return nil, err
		}
		priv = k
	} else {
		k, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			return nil, err
		}
		priv = k
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.InfiniteLimits))
	if err != nil {
		return nil, err
	}
	opts := []libp2p.Option{
		libp2p.Identity(priv),
		libp2p.ListenAddrStrings(cfg.Listen),
		libp2p.ResourceManager(rm),
		libp2p.EnableRelay(),
		libp2p.UserAgent("glueberry-interop-natpeer/1.0 go-libp2p/" + common.Libp2pVersion()),
	}
	if cfg.HolePunching {
		opts = append(opts, libp2p.EnableHolePunching(holepunch.WithTracer(n)))
	}
	if cfg.AutoNATv2 {
		opts = append(opts, libp2p.EnableAutoNATv2())
	}
	if cfg.RelayService || cfg.AutoNATv2 {
		// go serves relays and AutoNAT v2 only while it believes it is public.
		opts = append(opts, libp2p.ForceReachabilityPublic())
	}
	return libp2p.New(opts...)
}

// keepReservation reserves with the relay and refreshes at half the remaining lifetime.
func (n *node) keepReservation(addr string) {
	ai, err := peer.AddrInfoFromString(addr)
	if err != nil {
		common.Logf("relay %s: %v", addr, err)
		return
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := n.h.Connect(ctx, *ai)
		var rsvp *client.Reservation
		if err == nil {
			rsvp, err = client.Reserve(ctx, n.h, *ai)
		}
		cancel()
		if err != nil {
			n.emit(map[string]any{"type": "ReservationFailed", "relay": ai.ID.String(), "reason": err.Error()})
			time.Sleep(5 * time.Second)
			continue
		}
		addrs := []string{}
		for _, a := range ai.Addrs {
			addrs = append(addrs, a.String()+"/p2p/"+ai.ID.String()+"/p2p-circuit")
		}
		n.emit(map[string]any{"type": "ReservationObtained", "relay": ai.ID.String(),
			"expire": rsvp.Expiration.Unix(), "addrs": addrs,
			"limit": map[string]any{"duration": int(rsvp.LimitDuration.Seconds()), "data": rsvp.LimitData}})
		wait := time.Until(rsvp.Expiration) / 2
		if wait < time.Second {
			wait = time.Second
		}
		time.Sleep(wait)
	}
}

func addrStrings(addrs []ma.Multiaddr) []string {
	out := []string{}
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

func isRelayed(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

func (n *node) observed() []string {
	out := []string{}
	for _, a := range n.h.Addrs() {
		if !isRelayed(a) && manet.IsPublicAddr(a) {
			out = append(out, a.String())
		}
	}
	return out
}

func (n *node) info() map[string]any {
	return map[string]any{"peer_id": n.h.ID().String(), "addrs": addrStrings(n.h.Addrs()),
		"observed": n.observed(), "mapped": []string{}, "relayed": []string{}}
}

func (n *node) conns(p peer.ID) []map[string]any {
	out := []map[string]any{}
	for _, c := range n.h.Network().ConnsToPeer(p) {
		transport := "tcp"
		remote := []any{c.RemoteMultiaddr().String(), 0}
		if isRelayed(c.RemoteMultiaddr()) {
			transport = "circuit"
		} else if na, err := manet.ToNetAddr(c.RemoteMultiaddr()); err == nil {
			host, port, _ := strings.Cut(na.String(), ":")
			var p int
			fmt.Sscan(port, &p)
			remote = []any{host, p}
		}
		st := c.ConnState()
		out = append(out, map[string]any{"transport": transport, "remote": remote,
			"direction": strings.ToLower(c.Stat().Direction.String()),
			"security":  string(st.Security), "muxer": string(st.StreamMultiplexer)})
	}
	return out
}

func seconds(req map[string]any, key string, def float64) time.Duration {
	if v, ok := req[key].(float64); ok {
		return time.Duration(v * float64(time.Second))
	}
	return time.Duration(def * float64(time.Second))
}

func (n *node) handle(req map[string]any) (map[string]any, error) {
	cmd, _ := req["cmd"].(string)
	var p peer.ID
	if s, ok := req["peer"].(string); ok {
		var err error
		if p, err = peer.Decode(s); err != nil {
			return nil, err
		}
	}
	switch cmd {
	case "info":
		return n.info(), nil
	case "events":
		n.mu.Lock()
		defer n.mu.Unlock()
		return map[string]any{"events": append([]map[string]any{}, n.events...)}, nil
	case "wait_event":
		want, _ := req["type"].(string)
		nth := 1
		if v, ok := req["n"].(float64); ok {
			nth = int(v)
		}
		deadline := time.After(seconds(req, "timeout", 30))
		for {
			n.mu.Lock()
			found := []map[string]any{}
			for _, e := range n.events {
				if e["type"] == want {
					found = append(found, e)
				}
			}
			ch := n.changed
			n.mu.Unlock()
			if len(found) >= nth {
				return map[string]any{"event": found[nth-1]}, nil
			}
			select {
			case <-ch:
			case <-deadline:
				return nil, fmt.Errorf("TimeoutError: no %s event", want)
			}
		}
	case "wait_observed":
		deadline := time.Now().Add(seconds(req, "timeout", 30))
		for len(n.observed()) == 0 {
			if time.Now().After(deadline) {
				return nil, errors.New("TimeoutError: no observed address")
			}
			time.Sleep(50 * time.Millisecond)
		}
		return n.info(), nil
	case "connect":
		s, _ := req["addr"].(string)
		ai, err := peer.AddrInfoFromString(s)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), seconds(req, "timeout", 30))
		defer cancel()
		t := time.Now()
		if err := n.h.Connect(ctx, *ai); err != nil {
			return nil, err
		}
		cs := n.conns(ai.ID)
		transport := "tcp"
		if len(cs) > 0 {
			transport = cs[0]["transport"].(string)
		}
		return map[string]any{"peer": ai.ID.String(), "transport": transport,
			"seconds": time.Since(t).Seconds()}, nil
	case "conns":
		return map[string]any{"conns": n.conns(p)}, nil
	case "disconnect":
		return map[string]any{}, n.h.Network().ClosePeer(p)
	case "wait_direct":
		t := time.Now()
		deadline := t.Add(seconds(req, "timeout", 30))
		for {
			cs := n.conns(p)
			relayed := false
			for _, c := range cs {
				relayed = relayed || c["transport"] == "circuit"
			}
			if len(cs) > 0 && !relayed {
				return map[string]any{"conns": cs, "seconds": time.Since(t).Seconds()}, nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("TimeoutError: still %v", cs)
			}
			time.Sleep(20 * time.Millisecond)
		}
	case "echo":
		size := 1000
		if v, ok := req["size"].(float64); ok {
			size = int(v)
		}
		return n.echo(p, size)
	}
	return nil, fmt.Errorf("unknown command %q", cmd)
}

// echo sends size pattern bytes on /echo/1.0.0 and checks that the same bytes come back.
func (n *node) echo(p peer.ID, size int) (map[string]any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t := time.Now()
	s, err := n.h.NewStream(network.WithAllowLimitedConn(ctx, "echo"), p, echoProtocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	transport := "tcp"
	if isRelayed(s.Conn().RemoteMultiaddr()) {
		transport = "circuit"
	}
	werr := make(chan error, 1)
	go func() {
		var off uint64
		for off < uint64(size) {
			chunk := common.PatternChunk(off, size-int(off))
			if _, err := s.Write(chunk); err != nil {
				werr <- err
				return
			}
			off += uint64(len(chunk))
		}
		werr <- s.CloseWrite()
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		s.Reset()
		return nil, err
	}
	if err := <-werr; err != nil {
		return nil, err
	}
	if len(got) != size || !bytes.Equal(got, patternOf(size)) {
		return nil, fmt.Errorf("echo mismatch: %d bytes back of %d", len(got), size)
	}
	return map[string]any{"seconds": time.Since(t).Seconds(), "transport": transport}, nil
}

func patternOf(size int) []byte {
	out := make([]byte, size)
	for i := range out {
		out[i] = byte(i % common.PatternPeriod)
	}
	return out
}
