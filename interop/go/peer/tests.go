package main

// Dial side: each test returns a JSON-ready result map with "ok" and, on failure, "error".

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/glueberry/interop/internal/common"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	msmux "github.com/multiformats/go-multistream"
)

type dialer struct {
	h       host.Host
	target  *peer.AddrInfo
	timeout time.Duration
	eager   bool

	pings        int
	echoStreams  int
	echoBytes    int
	transferMiB  int
	goawayStream int

	idSub event.Subscription
}

func (d *dialer) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d.timeout)
}

// open opens a stream for proto. By default it uses the host (which waits for identify and
// negotiates lazily when identify listed the protocol); with --eager it negotiates with
// multistream-select on a fresh muxed stream before returning.
func (d *dialer) open(ctx context.Context, proto protocol.ID) (network.Stream, error) {
	if !d.eager {
		return d.h.NewStream(ctx, d.target.ID, proto)
	}
	conns := d.h.Network().ConnsToPeer(d.target.ID)
	if len(conns) == 0 {
		if err := d.h.Connect(ctx, *d.target); err != nil {
			return nil, err
		}
		conns = d.h.Network().ConnsToPeer(d.target.ID)
	}
	s, err := conns[0].NewStream(ctx)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := msmux.SelectProtoOrFail(proto, s); err != nil {
		_ = s.Reset()
		return nil, err
	}
	_ = s.SetDeadline(time.Time{})
	_ = s.SetProtocol(proto)
	return s, nil
}

func fail(res map[string]any, err error) map[string]any {
	res["ok"] = false
	res["error"] = err.Error()
	return res
}

func (d *dialer) conn() (network.Conn, error) {
	conns := d.h.Network().ConnsToPeer(d.target.ID)
	if len(conns) == 0 {
		return nil, errors.New("not connected")
	}
	return conns[0], nil
}

// connect: dial, secure, mux; report what was negotiated.
func (d *dialer) testConnect() map[string]any {
	res := map[string]any{}
	ctx, cancel := d.ctx()
	defer cancel()
	t0 := time.Now()
	// DialPeer returns once security and muxer are up; host.Connect would also wait for identify.
	c, err := d.h.Network().DialPeer(ctx, d.target.ID)
	if err != nil {
		return fail(res, err)
	}
	res["ms"] = msSince(t0)
	for k, v := range common.ConnInfo(c) {
		res[k] = v
	}
	if c.RemotePeer() != d.target.ID {
		return fail(res, fmt.Errorf("remote peer %s, want %s", c.RemotePeer(), d.target.ID))
	}
	res["ok"] = true
	return res
}

// identify: wait for identify to complete and report what the remote said.
func (d *dialer) testIdentify() map[string]any {
	res := map[string]any{}
	c, err := d.conn()
	if err != nil {
		return fail(res, err)
	}
	timer := time.NewTimer(d.timeout)
	defer timer.Stop()
	for {
		select {
		case e := <-d.idSub.Out():
			switch ev := e.(type) {
			case event.EvtPeerIdentificationCompleted:
				if ev.Peer != d.target.ID {
					continue
				}
				res["agent_version"] = ev.AgentVersion
				res["protocol_version"] = ev.ProtocolVersion
				protos := make([]string, 0, len(ev.Protocols))
				for _, p := range ev.Protocols {
					protos = append(protos, string(p))
				}
				sort.Strings(protos)
				res["protocols"] = protos
				addrs := make([]string, 0, len(ev.ListenAddrs))
				for _, a := range ev.ListenAddrs {
					addrs = append(addrs, a.String())
				}
				res["listen_addrs"] = addrs
				if ev.ObservedAddr != nil {
					res["observed_addr"] = ev.ObservedAddr.String()
				}
				res["signed_peer_record"] = ev.SignedPeerRecord != nil
				if pk := c.RemotePublicKey(); pk != nil {
					id, _ := peer.IDFromPublicKey(pk)
					res["public_key_matches"] = id == d.target.ID
				}
				res["ok"] = true
				return res
			case event.EvtPeerIdentificationFailed:
				if ev.Peer == d.target.ID {
					return fail(res, fmt.Errorf("identify failed: %w", ev.Reason))
				}
			}
		case <-timer.C:
			return fail(res, errors.New("identify did not complete in time"))
		}
	}
}

// ping: N pings on one /ipfs/ping/1.0.0 stream, RTTs in µs.
func (d *dialer) testPing() map[string]any {
	res := map[string]any{}
	ctx, cancel := d.ctx()
	defer cancel()
	ch := ping.Ping(ctx, d.h, d.target.ID)
	rtts := []float64{}
	for len(rtts) < d.pings {
		r, ok := <-ch
		if !ok {
			return fail(res, errors.New("ping channel closed"))
		}
		if r.Error != nil {
			res["rtts_us"] = rtts
			return fail(res, r.Error)
		}
		rtts = append(rtts, float64(r.RTT.Nanoseconds())/1e3)
	}
	cancel()
	res["rtts_us"] = rtts
	res["ok"] = true
	return res
}

// echoOne writes n pattern bytes while reading them back, then half-closes and expects EOF.
func (d *dialer) echoOne(ctx context.Context, n int) error {
	s, err := d.open(ctx, ProtoEcho)
	if err != nil {
		return err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	werr := make(chan error, 1)
	go func() {
		for off := 0; off < n; {
			w := n - off
			if w > 16384 {
				w = 16384
			}
			k, err := s.Write(common.PatternChunk(uint64(off), w))
			off += k
			if err != nil {
				werr <- err
				return
			}
		}
		werr <- s.CloseWrite()
	}()
	got, err := readPattern(s)
	if err != nil {
		_ = s.Reset()
		return err
	}
	if e := <-werr; e != nil {
		return fmt.Errorf("write: %w", e)
	}
	if got != uint64(n) {
		return fmt.Errorf("echoed %d bytes, sent %d", got, n)
	}
	return nil
}

// readPattern reads to EOF, checking every byte against the pattern; returns the count.
func readPattern(r io.Reader) (uint64, error) {
	buf := make([]byte, 64<<10)
	var off uint64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			if !bytes.Equal(buf[:k], common.PatternChunk(off, k)) {
				return off, fmt.Errorf("pattern mismatch in bytes %d..%d", off, off+uint64(k))
			}
			off += uint64(k)
		}
		if err == io.EOF {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

// echo: K concurrent /echo/1.0.0 streams.
func (d *dialer) testEcho() map[string]any {
	res := map[string]any{"streams": d.echoStreams, "bytes_per_stream": d.echoBytes}
	ctx, cancel := d.ctx()
	defer cancel()
	t0 := time.Now()
	errs := make([]error, d.echoStreams)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = d.echoOne(ctx, d.echoBytes) }()
	}
	wg.Wait()
	res["ms"] = msSince(t0)
	if err := errors.Join(errs...); err != nil {
		return fail(res, err)
	}
	res["ok"] = true
	return res
}

// source: ask for N bytes, check count and pattern.
func (d *dialer) testSource() map[string]any {
	n := uint64(d.transferMiB) << 20
	res := map[string]any{"bytes": n}
	ctx, cancel := d.ctx()
	defer cancel()
	t0 := time.Now()
	s, err := d.open(ctx, ProtoSource)
	if err != nil {
		return fail(res, err)
	}
	defer s.Close()
	dl, _ := ctx.Deadline()
	_ = s.SetDeadline(dl)
	if _, err := s.Write(binary.BigEndian.AppendUint64(nil, n)); err != nil {
		return fail(res, err)
	}
	if err := s.CloseWrite(); err != nil {
		return fail(res, err)
	}
	got, err := readPattern(s)
	if err != nil {
		return fail(res, err)
	}
	if got != n {
		return fail(res, fmt.Errorf("received %d bytes, want %d", got, n))
	}
	el := time.Since(t0)
	res["ms"] = float64(el.Microseconds()) / 1e3
	res["MBps"] = float64(n) / el.Seconds() / 1e6
	res["ok"] = true
	return res
}

// sink: send N pattern bytes, half-close, check the count + sha256 reply.
func (d *dialer) testSink() map[string]any {
	n := uint64(d.transferMiB) << 20
	res := map[string]any{"bytes": n}
	ctx, cancel := d.ctx()
	defer cancel()
	t0 := time.Now()
	s, err := d.open(ctx, ProtoSink)
	if err != nil {
		return fail(res, err)
	}
	defer s.Close()
	dl, _ := ctx.Deadline()
	_ = s.SetDeadline(dl)
	h := sha256.New()
	for off := uint64(0); off < n; {
		w := n - off
		if w > 65536 {
			w = 65536
		}
		chunk := common.PatternChunk(off, int(w))
		k, err := s.Write(chunk)
		h.Write(chunk[:k])
		off += uint64(k)
		if err != nil {
			return fail(res, err)
		}
	}
	if err := s.CloseWrite(); err != nil {
		return fail(res, err)
	}
	reply, err := io.ReadAll(s)
	if err != nil {
		return fail(res, err)
	}
	if len(reply) != 40 {
		return fail(res, fmt.Errorf("reply is %d bytes, want 40", len(reply)))
	}
	if c := binary.BigEndian.Uint64(reply[:8]); c != n {
		return fail(res, fmt.Errorf("sink counted %d bytes, sent %d", c, n))
	}
	if !bytes.Equal(reply[8:], h.Sum(nil)) {
		return fail(res, errors.New("sink sha256 differs from what was sent"))
	}
	el := time.Since(t0)
	res["ms"] = float64(el.Microseconds()) / 1e3
	res["MBps"] = float64(n) / el.Seconds() / 1e6
	res["ok"] = true
	return res
}

// reset: send one byte to the reset protocol; the read must fail with a stream reset.
func (d *dialer) testReset() map[string]any {
	res := map[string]any{}
	ctx, cancel := d.ctx()
	defer cancel()
	s, err := d.open(ctx, ProtoReset)
	if err != nil {
		return fail(res, err)
	}
	defer s.Close()
	dl, _ := ctx.Deadline()
	_ = s.SetDeadline(dl)
	if _, err := s.Write([]byte{'x'}); err != nil {
		return fail(res, err)
	}
	data, err := io.ReadAll(s)
	res["bytes_before_reset"] = len(data)
	switch {
	case err == nil:
		return fail(res, errors.New("clean EOF where a reset was expected"))
	case errors.Is(err, network.ErrReset):
		res["error_seen"] = err.Error()
		var se *network.StreamError
		if errors.As(err, &se) {
			res["error_code"] = uint32(se.ErrorCode)
			res["remote"] = se.Remote
		}
		res["ok"] = true
		return res
	default:
		return fail(res, fmt.Errorf("expected a stream reset, got: %w", err))
	}
}

// close: the remote writes "bye" and closes; expect exactly that, then a clean EOF.
func (d *dialer) testClose() map[string]any {
	res := map[string]any{}
	ctx, cancel := d.ctx()
	defer cancel()
	s, err := d.open(ctx, ProtoClose)
	if err != nil {
		return fail(res, err)
	}
	defer s.Close()
	dl, _ := ctx.Deadline()
	_ = s.SetDeadline(dl)
	data, err := io.ReadAll(s)
	res["received"] = string(data)
	if err != nil {
		return fail(res, fmt.Errorf("expected clean EOF: %w", err))
	}
	if string(data) != "bye" {
		return fail(res, fmt.Errorf("received %q, want \"bye\"", data))
	}
	res["ok"] = true
	return res
}

// goaway / disconnect: close the connection while echo streams are open, check that the
// streams fail promptly and the connection is gone, then reconnect and echo again.
// goaway uses CloseWithError(ConnShutdown), which makes yamux send GoAway(0x1006);
// disconnect uses Close(), which go-yamux ends with a plain EOF (no GoAway frame).
func (d *dialer) testGoaway(withCode bool) map[string]any {
	res := map[string]any{"streams": d.goawayStream}
	ctx, cancel := d.ctx()
	defer cancel()
	var streams []network.Stream
	for i := 0; i < d.goawayStream; i++ {
		s, err := d.open(ctx, ProtoEcho)
		if err != nil {
			return fail(res, err)
		}
		defer s.Close()
		msg := []byte(fmt.Sprintf("stream %d", i))
		if _, err := s.Write(msg); err != nil {
			return fail(res, err)
		}
		got := make([]byte, len(msg))
		_ = s.SetReadDeadline(time.Now().Add(d.timeout))
		if _, err := io.ReadFull(s, got); err != nil {
			return fail(res, fmt.Errorf("echo before close: %w", err))
		}
		streams = append(streams, s)
	}
	c, err := d.conn()
	if err != nil {
		return fail(res, err)
	}
	t0 := time.Now()
	if withCode {
		res["code"] = uint32(network.ConnShutdown)
		err = c.CloseWithError(network.ConnShutdown)
	} else {
		err = c.Close()
	}
	if err != nil {
		res["close_error"] = err.Error()
	}
	for i, s := range streams {
		_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := s.Read(make([]byte, 1)); err == nil {
			return fail(res, fmt.Errorf("stream %d still readable after connection close", i))
		} else if isTimeout(err) {
			return fail(res, fmt.Errorf("stream %d read blocked after connection close", i))
		}
	}
	res["streams_failed_ms"] = msSince(t0)
	if d.h.Network().Connectedness(d.target.ID) == network.Connected {
		// another connection may have raced in; wait briefly for ours to go away
		time.Sleep(200 * time.Millisecond)
	}
	// the remote must accept a fresh connection and serve it
	t1 := time.Now()
	if err := d.h.Connect(ctx, *d.target); err != nil {
		return fail(res, fmt.Errorf("reconnect: %w", err))
	}
	if err := d.echoOne(ctx, 1024); err != nil {
		return fail(res, fmt.Errorf("echo after reconnect: %w", err))
	}
	res["reconnect_ms"] = msSince(t1)
	res["ok"] = true
	return res
}

// isTimeout reports whether err is a deadline expiry (the stream stayed blocked).
func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &t) && t.Timeout())
}
