// Package common holds what the interop peers share: host construction from command-line
// options, intermixed flag parsing, the deterministic test pattern, process statistics,
// the JSON event writer and the stdin/signal lifetime rules.
package common

import (
	"bufio"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// HostFlags are the options every peer binary accepts.
type HostFlags struct {
	Transport string
	Security  string
	Seed      string
	Listen    string
	Events    bool
}

// Register adds the host options to fs.
func (o *HostFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&o.Transport, "transport", "tcp", "tcp | quic (quic-v1)")
	fs.StringVar(&o.Security, "security", "both",
		"noise | tls | both (= tls,noise, go-libp2p's default order) | noise,tls | tls,noise (TCP only)")
	fs.StringVar(&o.Seed, "seed", "", "64 hex digits: Ed25519 seed for a deterministic identity (default: random)")
	fs.StringVar(&o.Listen, "listen", "", "listen multiaddr (default /ip4/127.0.0.1/tcp/0 or /ip4/127.0.0.1/udp/0/quic-v1)")
	fs.BoolVar(&o.Events, "events", false, "print JSON event lines (connections, identify, streams) on stdout")
}

// ParseIntermixed parses flags that may appear before, between or after positional arguments.
func ParseIntermixed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// PrivateKey returns the identity: from the hex seed, or a fresh random key.
func (o *HostFlags) PrivateKey() (crypto.PrivKey, ed25519.PrivateKey, error) {
	var std ed25519.PrivateKey
	if o.Seed == "" {
		_, k, err := ed25519.GenerateKey(nil)
		if err != nil {
			return nil, nil, err
		}
		std = k
	} else {
		seed, err := hex.DecodeString(o.Seed)
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, nil, fmt.Errorf("--seed must be %d hex digits", 2*ed25519.SeedSize)
		}
		std = ed25519.NewKeyFromSeed(seed)
	}
	k, err := crypto.UnmarshalEd25519PrivateKey(std)
	return k, std, err
}

// NewHost builds a go-libp2p host from the flags: one transport, the chosen security
// protocols, yamux, identify (+push) and ping from the default host, no relay, no NAT
// services, and unlimited resource-manager limits (tests open many streams and windows).
func (o *HostFlags) NewHost(listen bool, agent string) (host.Host, ed25519.PrivateKey, error) {
	priv, std, err := o.PrivateKey()
	if err != nil {
		return nil, nil, err
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.InfiniteLimits))
	if err != nil {
		return nil, nil, err
	}
	opts := []libp2p.Option{
		libp2p.Identity(priv),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ResourceManager(rm),
		libp2p.DisableRelay(),
		libp2p.UserAgent(agent),
	}
	listenAddr := o.Listen
	switch o.Transport {
	case "tcp":
		opts = append(opts, libp2p.Transport(tcp.NewTCPTransport))
		if listenAddr == "" {
			listenAddr = "/ip4/127.0.0.1/tcp/0"
		}
		var order []string
		switch o.Security {
		case "both":
			order = []string{"tls", "noise"}
		default:
			order = strings.Split(o.Security, ",")
		}
		for _, s := range order {
			switch strings.TrimSpace(s) {
			case "noise":
				opts = append(opts, libp2p.Security(noise.ID, noise.New))
			case "tls":
				opts = append(opts, libp2p.Security(libp2ptls.ID, libp2ptls.New))
			default:
				return nil, nil, fmt.Errorf("unknown --security %q", o.Security)
			}
		}
	case "quic":
		opts = append(opts, libp2p.Transport(quic.NewTransport))
		if listenAddr == "" {
			listenAddr = "/ip4/127.0.0.1/udp/0/quic-v1"
		}
	default:
		return nil, nil, fmt.Errorf("unknown --transport %q", o.Transport)
	}
	if listen {
		opts = append(opts, libp2p.ListenAddrStrings(listenAddr))
	} else {
		opts = append(opts, libp2p.NoListenAddrs)
	}
	h, err := libp2p.New(opts...)
	return h, std, err
}

// FullAddr returns the host's first listen address with /p2p/<id> appended.
func FullAddr(h host.Host) (string, error) {
	addrs := h.Addrs()
	if len(addrs) == 0 {
		return "", errors.New("host has no listen address")
	}
	p2p, err := ma.NewComponent("p2p", h.ID().String())
	if err != nil {
		return "", err
	}
	return addrs[0].Encapsulate(p2p.Multiaddr()).String(), nil
}

// ParseTarget turns a /…/p2p/<id> multiaddr into an AddrInfo.
func ParseTarget(s string) (*peer.AddrInfo, error) {
	m, err := ma.NewMultiaddr(s)
	if err != nil {
		return nil, err
	}
	return peer.AddrInfoFromP2pAddr(m)
}

// Libp2pVersion reports the go-libp2p module version compiled in.
func Libp2pVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/libp2p/go-libp2p" {
				return d.Version
			}
		}
	}
	return "unknown"
}

// ConnInfo describes an established connection for JSON output.
func ConnInfo(c network.Conn) map[string]any {
	st := c.ConnState()
	return map[string]any{
		"security":    string(st.Security),
		"muxer":       string(st.StreamMultiplexer),
		"early_muxer": st.UsedEarlyMuxerNegotiation,
		"transport":   st.Transport,
		"local_addr":  c.LocalMultiaddr().String(),
		"remote_addr": c.RemoteMultiaddr().String(),
		"remote_peer": c.RemotePeer().String(),
		"direction":   c.Stat().Direction.String(),
	}
}

// --- deterministic pattern: byte i of a stream is i mod 251 ---

// PatternPeriod is the pattern's period (a prime, so it never aligns with buffer sizes).
const PatternPeriod = 251

var patternBuf = func() []byte {
	b := make([]byte, PatternPeriod*264) // ≥ 64 KiB + one period
	for i := range b {
		b[i] = byte(i % PatternPeriod)
	}
	return b
}()

// PatternChunk returns up to max bytes of the pattern starting at stream offset off.
func PatternChunk(off uint64, max int) []byte {
	if max > 65536 {
		max = 65536
	}
	s := int(off % PatternPeriod)
	return patternBuf[s : s+max]
}

// --- process statistics ---

// PeakRSSKiB is getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux).
func PeakRSSKiB() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Maxrss
}

// CPUSeconds is user+system CPU time of this process.
func CPUSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// --- output ---

var outMu sync.Mutex

// PrintLine writes one line to stdout atomically.
func PrintLine(s string) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintln(os.Stdout, s)
}

// PrintJSON writes v as one JSON line to stdout.
func PrintJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]any{"ok": false, "error": err.Error()})
	}
	PrintLine(string(b))
}

// Logf writes a diagnostic line to stderr.
func Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// --- lifetime ---

// WaitForExit blocks until SIGINT/SIGTERM, or until stdin reaches EOF when stdin is a pipe
// or socket (a parent that holds our stdin pipe and dies takes us with it). A terminal or
// /dev/null stdin is ignored, so `peer listen </dev/null` keeps serving.
func WaitForExit() string {
	done := make(chan string, 2)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { done <- (<-sig).String() }()
	if fi, err := os.Stdin.Stat(); err == nil && fi.Mode()&(os.ModeNamedPipe|os.ModeSocket) != 0 {
		go func() {
			r := bufio.NewReader(os.Stdin)
			for {
				if _, err := r.ReadByte(); err != nil {
					done <- "stdin closed"
					return
				}
			}
		}()
	}
	return <-done
}
