// Command peer is the go-libp2p interop peer: a listener that serves identify, ping, the
// glueberry test protocols and /bench/1.0.0, and a dialer that runs interop tests (or the
// benchmark) against any peer that serves the same protocols. See docs/interop.md.
//
//	peer listen [--transport tcp|quic] [--security noise|tls|both] [--seed HEX] [--listen MA] [--events]
//	peer dial MULTIADDR [TEST...] [flags]     TEST: connect identify ping echo source sink
//	                                          transfer reset close goaway disconnect all bench
//	peer dial MULTIADDR --connect-only [--hold S]
//
// The listener prints "READY <multiaddr>/p2p/<id>" and serves until SIGINT/SIGTERM or until
// its stdin pipe closes. The dialer prints one JSON line; exit code 0 = every test passed,
// 1 = a test failed, 2 = usage or setup error.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/glueberry/interop/internal/common"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
)

var allTests = []string{"connect", "identify", "ping", "echo", "source", "sink", "reset", "close", "goaway", "disconnect"}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  peer listen [flags]
  peer dial MULTIADDR [TEST...] [flags]
tests: connect identify ping echo source sink transfer(=source+sink) reset close goaway disconnect all bench
`)
	os.Exit(2)
}

func agent() string { return "glueberry-interop-go/1.0 go-libp2p/" + common.Libp2pVersion() }

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "listen":
		os.Exit(listen(os.Args[2:]))
	case "dial":
		os.Exit(dial(os.Args[2:]))
	case "version":
		common.PrintJSON(map[string]any{"impl": "go-libp2p", "version": common.Libp2pVersion(), "agent": agent()})
	default:
		usage()
	}
}

func listen(args []string) int {
	fs := flag.NewFlagSet("listen", flag.ExitOnError)
	var hf common.HostFlags
	hf.Register(fs)
	if pos, err := common.ParseIntermixed(fs, args); err != nil || len(pos) > 0 {
		usage()
	}
	h, _, err := hf.NewHost(true, agent())
	if err != nil {
		common.Logf("host: %v", err)
		return 2
	}
	defer h.Close()
	sv := &server{events: hf.Events}
	sv.register(h)
	if hf.Events {
		watchEvents(h)
	}
	addr, err := common.FullAddr(h)
	if err != nil {
		common.Logf("%v", err)
		return 2
	}
	common.PrintLine("READY " + addr)
	why := common.WaitForExit()
	common.Logf("listener exiting: %s", why)
	return 0
}

// watchEvents prints connection and identify events as JSON lines.
func watchEvents(h host.Host) {
	h.Network().Notify(&network.NotifyBundle{
		ConnectedF: func(_ network.Network, c network.Conn) {
			ev := common.ConnInfo(c)
			ev["event"] = "connected"
			common.PrintJSON(ev)
		},
		DisconnectedF: func(_ network.Network, c network.Conn) {
			common.PrintJSON(map[string]any{"event": "disconnected", "remote_peer": c.RemotePeer().String()})
		},
	})
	sub, err := h.EventBus().Subscribe([]any{new(event.EvtPeerIdentificationCompleted), new(event.EvtPeerIdentificationFailed)})
	if err != nil {
		common.Logf("subscribe: %v", err)
		return
	}
	go func() {
		for e := range sub.Out() {
			switch ev := e.(type) {
			case event.EvtPeerIdentificationCompleted:
				protos := []string{}
				for _, p := range ev.Protocols {
					protos = append(protos, string(p))
				}
				addrs := []string{}
				for _, a := range ev.ListenAddrs {
					addrs = append(addrs, a.String())
				}
				out := map[string]any{"event": "identified", "remote_peer": ev.Peer.String(),
					"agent_version": ev.AgentVersion, "protocol_version": ev.ProtocolVersion,
					"protocols": protos, "listen_addrs": addrs, "signed_peer_record": ev.SignedPeerRecord != nil}
				if ev.ObservedAddr != nil {
					out["observed_addr"] = ev.ObservedAddr.String()
				}
				common.PrintJSON(out)
			case event.EvtPeerIdentificationFailed:
				common.PrintJSON(map[string]any{"event": "identify_failed", "remote_peer": ev.Peer.String(), "error": ev.Reason.Error()})
			}
		}
	}()
}

func dial(args []string) int {
	fs := flag.NewFlagSet("dial", flag.ExitOnError)
	var hf common.HostFlags
	hf.Register(fs)
	d := &dialer{}
	var b benchFlags
	timeout := fs.Float64("timeout", 60, "seconds allowed per test")
	connectOnly := fs.Bool("connect-only", false, "connect, print the connection JSON, then hold the connection")
	hold := fs.Float64("hold", 0, "with --connect-only: seconds to hold (0 = until SIGINT/SIGTERM or stdin EOF)")
	fs.BoolVar(&d.eager, "eager", false, "negotiate every test stream with multistream-select before use (default: host behaviour, lazy once identify listed the protocol)")
	fs.IntVar(&d.pings, "pings", 5, "ping: number of pings")
	fs.IntVar(&d.echoStreams, "echo-streams", 8, "echo: concurrent streams")
	fs.IntVar(&d.echoBytes, "echo-bytes", 256<<10, "echo: bytes per stream")
	fs.IntVar(&d.transferMiB, "transfer-mib", 64, "source/sink: MiB each way")
	fs.IntVar(&d.goawayStream, "goaway-streams", 4, "goaway/disconnect: streams open when the connection closes")
	fs.IntVar(&b.setupN, "setup-n", 20, "bench: fresh connections for the setup test")
	fs.IntVar(&b.msgs, "msgs", 20000, "bench: messages for the rate test")
	fs.IntVar(&b.msgSize, "msg-size", 1024, "bench: message size")
	fs.IntVar(&b.bulkMiB, "bulk-mib", 256, "bench: MiB for the bulk test")
	fs.IntVar(&b.chunk, "chunk", 65536, "bench: bulk write size")
	fs.IntVar(&b.rttN, "rtt-n", 2000, "bench: round trips")
	fs.IntVar(&b.warmup, "warmup", 100, "bench: warm-up round trips")
	pos, err := common.ParseIntermixed(fs, args)
	if err != nil {
		usage()
	}
	var target string
	var tests []string
	for _, p := range pos {
		if strings.HasPrefix(p, "/") {
			target = p
			continue
		}
		switch p {
		case "all":
			tests = append(tests, allTests...)
		case "transfer":
			tests = append(tests, "source", "sink")
		case "connect", "identify", "ping", "echo", "source", "sink", "reset", "close", "goaway", "disconnect", "bench":
			tests = append(tests, p)
		default:
			common.Logf("unknown test %q", p)
			usage()
		}
	}
	if target == "" {
		usage()
	}
	if len(tests) == 0 && !*connectOnly {
		tests = allTests
	}
	d.timeout = time.Duration(*timeout * float64(time.Second))
	ai, err := common.ParseTarget(target)
	if err != nil {
		common.Logf("target: %v", err)
		return 2
	}
	d.target = ai
	h, _, err := hf.NewHost(false, agent())
	if err != nil {
		common.Logf("host: %v", err)
		return 2
	}
	defer h.Close()
	d.h = h
	sv := &server{}
	sv.register(h) // the remote may open test streams back to us
	d.idSub, err = h.EventBus().Subscribe([]any{new(event.EvtPeerIdentificationCompleted), new(event.EvtPeerIdentificationFailed)})
	if err != nil {
		common.Logf("subscribe: %v", err)
		return 2
	}
	h.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)

	out := map[string]any{"impl": "go-libp2p", "version": common.Libp2pVersion(), "peer_id": h.ID().String(),
		"remote": target, "transport": hf.Transport, "security": hf.Security}
	if *connectOnly {
		r := d.testConnect()
		out["ok"] = r["ok"]
		out["tests"] = map[string]any{"connect": r}
		common.PrintJSON(out)
		if r["ok"] != true {
			return 1
		}
		if *hold > 0 {
			time.Sleep(time.Duration(*hold * float64(time.Second)))
		} else {
			common.WaitForExit()
		}
		return 0
	}
	results := map[string]any{}
	allOK := true
	record := func(name string, r map[string]any) {
		results[name] = r
		if r["ok"] != true {
			allOK = false
		}
	}
	if len(tests) > 0 && tests[0] != "connect" {
		tests = append([]string{"connect"}, tests...)
	}
	seen := map[string]bool{}
	for _, t := range tests {
		if seen[t] {
			continue
		}
		seen[t] = true
		if t != "connect" && results["connect"] != nil && results["connect"].(map[string]any)["ok"] != true {
			record(t, map[string]any{"ok": false, "error": "not connected"})
			continue
		}
		switch t {
		case "connect":
			record(t, d.testConnect())
		case "identify":
			record(t, d.testIdentify())
		case "ping":
			record(t, d.testPing())
		case "echo":
			record(t, d.testEcho())
		case "source":
			record(t, d.testSource())
		case "sink":
			record(t, d.testSink())
		case "reset":
			record(t, d.testReset())
		case "close":
			record(t, d.testClose())
		case "goaway":
			record(t, d.testGoaway(true))
		case "disconnect":
			record(t, d.testGoaway(false))
		case "bench":
			r, err := d.runBench(b)
			if err != nil {
				record(t, map[string]any{"ok": false, "error": err.Error()})
				continue
			}
			for k, v := range r {
				out[k] = v // the bench keys sit at top level, like the shared peers' JSON
			}
			record(t, map[string]any{"ok": true})
		}
	}
	out["ok"] = allOK
	out["tests"] = results
	common.PrintJSON(out)
	if !allOK {
		return 1
	}
	return 0
}
