package main

// The test application on top of the Glueberry wire (docs/interop.md, "gbpeer"): tagged
// messages in tagged mode, verbatim echo in echo mode, and the dial-side tests.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/glueberry/interop/internal/common"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Tags: the first plaintext byte of a tagged-mode message.
const (
	TagQuery   = 'Q' // reply 'R' ‖ same body on the same stream
	TagReply   = 'R'
	TagData    = 'D' // one-way data, counted
	TagStats   = 'S' // reply 'T' ‖ "<peak RSS KiB> <CPU s>"
	TagStatsR  = 'T'
	TagVerdict = 'V' // the sender's verdict on the exchange it originated: "ok" or "fail: …"
)

var (
	// Sizes (whole plaintext, tag included) of the queries the listener originates on "events".
	listenerPlan = []int{1, 2, 1000, 65536, MaxMessage}
	// Sizes of the dialer's queries on "messages" and on "bulk".
	dialerPlanMessages = []int{1, 2, 29, 1000, 4096, 65535, 65536, 65537}
	dialerPlanBulk     = []int{MaxMessage, MaxMessage, MaxMessage}
	// Sizes of the verbatim messages of the echo test.
	echoPlan = []int{0, 1, 1000, 65536, MaxMessage}
)

func peerIDFromEd25519(pk []byte) (peer.ID, error) {
	k, err := crypto.UnmarshalEd25519PublicKey(pk)
	if err != nil {
		return "", err
	}
	return peer.IDFromPublicKey(k)
}

// query builds tag ‖ pattern, size bytes in all.
func tagged(tag byte, size int) []byte {
	out := make([]byte, 0, size)
	out = append(out, tag)
	for off := 0; len(out) < size; {
		c := common.PatternChunk(uint64(off), size-len(out))
		out = append(out, c...)
		off += len(c)
	}
	return out
}

func raw(size int) []byte {
	out := make([]byte, 0, size)
	for len(out) < size {
		out = append(out, common.PatternChunk(uint64(len(out)), size-len(out))...)
	}
	return out
}

// App routes delivered messages.
type App struct {
	n    *Node
	echo bool

	mu      sync.Mutex
	queues  map[string]chan []byte // per-stream channel of messages for waiting tests
	dataN   atomic.Int64
	dataB   atomic.Int64
	queries atomic.Int64 // queries answered
}

func NewApp(n *Node, echo bool) *App {
	a := &App{n: n, echo: echo, queues: map[string]chan []byte{}}
	n.inbox = a.deliver
	return a
}

func (a *App) queue(name string) chan []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	q, ok := a.queues[name]
	if !ok {
		q = make(chan []byte, 4096)
		a.queues[name] = q
	}
	return q
}

func (a *App) reply(m Message, data []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := a.n.Send(ctx, m.Peer, m.Stream, data); err != nil {
		common.Logf("reply on %s: %v", m.Stream, err)
	}
}

// deliver runs on the stream's read loop, so replies keep the stream's order.
func (a *App) deliver(m Message) {
	if a.echo {
		a.reply(m, m.Data)
		return
	}
	if len(m.Data) > 0 {
		switch m.Data[0] {
		case TagQuery:
			a.queries.Add(1)
			out := append([]byte{TagReply}, m.Data[1:]...)
			a.reply(m, out)
			return
		case TagData:
			a.dataN.Add(1)
			a.dataB.Add(int64(len(m.Data)))
			return
		case TagStats:
			a.reply(m, []byte(fmt.Sprintf("T%d %.6f", common.PeakRSSKiB(), common.CPUSeconds())))
			return
		}
	}
	select {
	case a.queue(m.Stream) <- m.Data:
	default:
		common.Logf("dropping a message on %s: nobody is reading", m.Stream)
	}
}

func (a *App) wait(ctx context.Context, name string) ([]byte, error) {
	select {
	case d := <-a.queue(name):
		return d, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting on %q: %w", name, ctx.Err())
	}
}

// queries sends tagged queries of the given sizes on name and checks the replies in order.
func (a *App) runQueries(ctx context.Context, p peer.ID, name string, sizes []int) error {
	errc := make(chan error, 1)
	go func() {
		for _, sz := range sizes {
			if err := a.n.Send(ctx, p, name, tagged(TagQuery, sz)); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i, sz := range sizes {
		got, err := a.wait(ctx, name)
		if err != nil {
			return err
		}
		want := tagged(TagReply, sz)
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%s reply %d: %d bytes, want %d (or content differs)", name, i, len(got), len(want))
		}
	}
	return <-errc
}

// originate is the listener's half of the exchange test, run once a peer is established.
func (a *App) originate(p peer.ID, st *peerState) {
	if a.echo || !st.allowed["events"] {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	t0 := time.Now()
	err := a.runQueries(ctx, p, "events", listenerPlan)
	verdict := "ok"
	if err != nil {
		verdict = "fail: " + err.Error()
	}
	if serr := a.n.Send(ctx, p, "events", append([]byte{TagVerdict}, verdict...)); serr != nil && err == nil {
		err = serr
	}
	ev := map[string]any{"event": "exchange", "peer": p.String(), "ok": err == nil, "ms": float64(time.Since(t0).Microseconds()) / 1e3,
		"queries_answered": a.queries.Load()}
	if err != nil {
		ev["error"] = err.Error()
	}
	a.n.event(ev)
}

// --- dial-side tests ---

type gbDialer struct {
	a       *App
	target  *peer.AddrInfo
	timeout time.Duration
}

func (d *gbDialer) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d.timeout)
}

func fail(res map[string]any, err error) map[string]any {
	res["ok"] = false
	res["error"] = err.Error()
	return res
}

func (d *gbDialer) testConnect() map[string]any {
	res := map[string]any{}
	ctx, cancel := d.ctx()
	defer cancel()
	t0 := time.Now()
	c, err := d.a.n.h.Network().DialPeer(ctx, d.target.ID)
	if err != nil {
		return fail(res, err)
	}
	res["ms"] = float64(time.Since(t0).Microseconds()) / 1e3
	for k, v := range common.ConnInfo(c) {
		res[k] = v
	}
	res["ok"] = true
	return res
}

func (d *gbDialer) testHandshake() map[string]any {
	res := map[string]any{}
	n := d.a.n
	t0 := time.Now()
	n.sendHello(d.target.ID) // the dialer speaks first (§1.6)
	n.mu.Lock()
	st := n.state(d.target.ID)
	ch := st.establishedCh
	n.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(d.timeout):
		return fail(res, errors.New("handshake did not complete"))
	}
	res["ms"] = float64(time.Since(t0).Microseconds()) / 1e3
	n.mu.Lock()
	res["remote_pubkey"] = fmt.Sprintf("%x", st.remotePK)
	n.mu.Unlock()
	res["pubkey_matches_peer_id"] = pubKeyMatches(d.target.ID, st.remotePK)
	if res["pubkey_matches_peer_id"] != true {
		return fail(res, errors.New("the PubKey message does not match the remote peer ID"))
	}
	res["ok"] = true
	return res
}

func (d *gbDialer) testExchange() map[string]any {
	res := map[string]any{"messages": dialerPlanMessages, "bulk": dialerPlanBulk}
	ctx, cancel := d.ctx()
	defer cancel()
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, job := range []struct {
		name  string
		sizes []int
	}{{"messages", dialerPlanMessages}, {"bulk", dialerPlanBulk}} {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = d.a.runQueries(ctx, d.target.ID, job.name, job.sizes) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fail(res, err)
	}
	res["ms"] = float64(time.Since(t0).Microseconds()) / 1e3
	// the listener's half: it queried us on "events"; its verdict follows its last query
	v, err := d.a.wait(ctx, "events")
	if err != nil {
		return fail(res, fmt.Errorf("no verdict from the remote: %w", err))
	}
	res["remote_verdict"] = strings.TrimPrefix(string(v), "V")
	res["queries_answered"] = d.a.queries.Load()
	if len(v) == 0 || v[0] != TagVerdict || string(v[1:]) != "ok" {
		return fail(res, fmt.Errorf("remote verdict %q", v))
	}
	if d.a.queries.Load() < int64(len(listenerPlan)) {
		return fail(res, fmt.Errorf("answered %d remote queries, want %d", d.a.queries.Load(), len(listenerPlan)))
	}
	res["ok"] = true
	return res
}

func (d *gbDialer) testEcho() map[string]any {
	res := map[string]any{"sizes": echoPlan, "streams": []string{"messages", "bulk"}}
	ctx, cancel := d.ctx()
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, name := range []string{"messages", "bulk"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, sz := range echoPlan {
				if err := d.a.n.Send(ctx, d.target.ID, name, raw(sz)); err != nil {
					errs[i] = err
					return
				}
			}
			for j, sz := range echoPlan {
				got, err := d.a.wait(ctx, name)
				if err != nil {
					errs[i] = err
					return
				}
				if !bytes.Equal(got, raw(sz)) {
					errs[i] = fmt.Errorf("%s echo %d: %d bytes, want %d", name, j, len(got), sz)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fail(res, err)
	}
	res["ok"] = true
	return res
}
