// Command gbpeer speaks the Glueberry v1 wire of Glueberry-Go on go-libp2p, byte for byte:
// the integration test's Hello/PubKey/Complete handshake on /glueberry/stream/handshake/1.0.0,
// then encrypted messages on /glueberry/stream/<name>/1.0.0 with Go's stream rules.
// The Go glueberry module itself is not available from the module proxy, so this program
// re-implements its wire from shared/reference/glueberry-go-v1.md. See docs/interop.md.
//
//	gbpeer vectors                                   the §2.9 test vectors, computed by Go
//	gbpeer listen [--echo] [--events] [--streams a,b] [host flags]
//	gbpeer dial MULTIADDR [connect handshake exchange echo bench ...] [flags]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/glueberry/interop/internal/common"
)

const defaultStreams = "messages,events,bulk,bench"

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  gbpeer vectors
  gbpeer listen [--echo] [--events] [--streams `+defaultStreams+`] [--seed HEX] [--listen MA] [--security ...]
  gbpeer dial MULTIADDR [TEST...] [flags]      TEST: connect handshake exchange echo bench (default: handshake exchange)
`)
	os.Exit(2)
}

func agent() string { return "glueberry-interop-gbpeer/1.0 go-libp2p/" + common.Libp2pVersion() }

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "vectors":
		v, err := vectors()
		if err != nil {
			common.Logf("vectors: %v", err)
			os.Exit(1)
		}
		common.PrintJSON(v)
	case "listen":
		os.Exit(listen(os.Args[2:]))
	case "dial":
		os.Exit(dial(os.Args[2:]))
	default:
		usage()
	}
}

func listen(args []string) int {
	fs := flag.NewFlagSet("listen", flag.ExitOnError)
	var hf common.HostFlags
	hf.Register(fs)
	streams := fs.String("streams", defaultStreams, "stream names prepared for every peer")
	echo := fs.Bool("echo", false, "echo every message verbatim on its stream (instead of tagged mode)")
	if pos, err := common.ParseIntermixed(fs, args); err != nil || len(pos) > 0 {
		usage()
	}
	h, priv, err := hf.NewHost(true, agent())
	if err != nil {
		common.Logf("host: %v", err)
		return 2
	}
	defer h.Close()
	n := NewNode(h, priv, strings.Split(*streams, ","), hf.Events)
	a := NewApp(n, *echo)
	n.onEstablish = a.originate
	addr, err := common.FullAddr(h)
	if err != nil {
		common.Logf("%v", err)
		return 2
	}
	common.PrintLine("READY " + addr)
	common.Logf("gbpeer listener exiting: %s", common.WaitForExit())
	return 0
}

func dial(args []string) int {
	fs := flag.NewFlagSet("dial", flag.ExitOnError)
	var hf common.HostFlags
	hf.Register(fs)
	streams := fs.String("streams", defaultStreams, "stream names prepared for the remote")
	timeout := fs.Float64("timeout", 60, "seconds allowed per test")
	var b benchFlags
	fs.IntVar(&b.msgs, "msgs", 20000, "bench: 1 KiB one-way messages")
	fs.IntVar(&b.msgSize, "msg-size", 1024, "bench: message size (plaintext, tag included)")
	fs.IntVar(&b.bulkMiB, "bulk-mib", 256, "bench: MiB sent as --chunk messages")
	fs.IntVar(&b.chunk, "chunk", 65536, "bench: bulk message size")
	fs.IntVar(&b.rttN, "rtt-n", 2000, "bench: round trips")
	fs.IntVar(&b.warmup, "warmup", 100, "bench: warm-up round trips")
	pos, err := common.ParseIntermixed(fs, args)
	if err != nil {
		usage()
	}
	var target string
	tests := []string{}
	for _, p := range pos {
		switch {
		case strings.HasPrefix(p, "/"):
			target = p
		case p == "connect" || p == "handshake" || p == "exchange" || p == "echo" || p == "bench":
			tests = append(tests, p)
		default:
			common.Logf("unknown test %q", p)
			usage()
		}
	}
	if target == "" {
		usage()
	}
	if len(tests) == 0 {
		tests = []string{"handshake", "exchange"}
	}
	// connect and handshake always run, in that order
	ordered := []string{"connect", "handshake"}
	for _, t := range tests {
		if t != "connect" && t != "handshake" {
			ordered = append(ordered, t)
		}
	}
	ai, err := common.ParseTarget(target)
	if err != nil {
		common.Logf("target: %v", err)
		return 2
	}
	h, priv, err := hf.NewHost(false, agent())
	if err != nil {
		common.Logf("host: %v", err)
		return 2
	}
	defer h.Close()
	h.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
	n := NewNode(h, priv, strings.Split(*streams, ","), false)
	a := NewApp(n, false)
	d := &gbDialer{a: a, target: ai, timeout: time.Duration(*timeout * float64(time.Second))}
	out := map[string]any{"impl": "glueberry-go-wire", "version": common.Libp2pVersion(),
		"peer_id": h.ID().String(), "remote": target}
	results := map[string]any{}
	allOK := true
	for _, t := range ordered {
		if !allOK && (t != "connect") {
			results[t] = map[string]any{"ok": false, "error": "an earlier test failed"}
			continue
		}
		var r map[string]any
		switch t {
		case "connect":
			r = d.testConnect()
		case "handshake":
			r = d.testHandshake()
		case "exchange":
			r = d.testExchange()
		case "echo":
			r = d.testEcho()
		case "bench":
			br, err := d.runBench(b)
			if err != nil {
				r = map[string]any{"ok": false, "error": err.Error()}
			} else {
				for k, v := range br {
					out[k] = v
				}
				if hs, ok := results["handshake"].(map[string]any); ok {
					out["handshake_ms"] = hs["ms"]
				}
				r = map[string]any{"ok": true}
			}
		}
		results[t] = r
		if r["ok"] != true {
			allOK = false
		}
	}
	out["decrypt_failures"] = n.decryptFailures.Load()
	out["streams_reset"] = n.resets.Load()
	out["ok"] = allOK
	out["tests"] = results
	common.PrintJSON(out)
	if !allOK {
		return 1
	}
	return 0
}
