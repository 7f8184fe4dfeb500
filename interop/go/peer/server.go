package main

// Listener side: the test protocols (docs/interop.md §"Test protocols") and /bench/1.0.0.

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/glueberry/interop/internal/common"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
)

const (
	ProtoEcho   = protocol.ID("/echo/1.0.0")
	ProtoSource = protocol.ID("/glueberry-test/source/1.0.0")
	ProtoSink   = protocol.ID("/glueberry-test/sink/1.0.0")
	ProtoReset  = protocol.ID("/glueberry-test/reset/1.0.0")
	ProtoClose  = protocol.ID("/glueberry-test/close/1.0.0")
	ProtoBench  = protocol.ID("/bench/1.0.0")

	// maxSource bounds the byte count a source request may ask for (16 GiB).
	maxSource = 1 << 34
	// idleTimeout ends a test-protocol stream that makes no progress.
	idleTimeout = 2 * time.Minute
)

type server struct {
	events bool
}

func (sv *server) register(h host.Host) {
	h.SetStreamHandler(ProtoEcho, sv.wrap(serveEcho))
	h.SetStreamHandler(ProtoSource, sv.wrap(serveSource))
	h.SetStreamHandler(ProtoSink, sv.wrap(serveSink))
	h.SetStreamHandler(ProtoReset, sv.wrap(serveReset))
	h.SetStreamHandler(ProtoClose, sv.wrap(serveClose))
	h.SetStreamHandler(ProtoBench, sv.wrap(serveBench))
}

// wrap runs a handler, resets the stream on error, and reports the outcome as an event.
func (sv *server) wrap(f func(network.Stream) (map[string]any, error)) network.StreamHandler {
	return func(s network.Stream) {
		t0 := time.Now()
		info, err := f(s)
		if err != nil {
			_ = s.Reset()
		}
		if sv.events {
			ev := map[string]any{"event": "stream", "protocol": string(s.Protocol()),
				"peer": s.Conn().RemotePeer().String(), "ms": msSince(t0), "ok": err == nil}
			for k, v := range info {
				ev[k] = v
			}
			if err != nil {
				ev["error"] = err.Error()
			}
			common.PrintJSON(ev)
		} else if err != nil && !errors.Is(err, network.ErrReset) {
			common.Logf("%s: %v", s.Protocol(), err)
		}
	}
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1e3 }

// deadlineReader refreshes the stream's read deadline before each read.
type deadlineReader struct{ s network.Stream }

func (r deadlineReader) Read(p []byte) (int, error) {
	_ = r.s.SetReadDeadline(time.Now().Add(idleTimeout))
	return r.s.Read(p)
}

// /echo/1.0.0: echo every byte until EOF, then close the write side.
func serveEcho(s network.Stream) (map[string]any, error) {
	buf := make([]byte, 64<<10)
	n, err := io.CopyBuffer(s, deadlineReader{s}, buf)
	if err != nil {
		return map[string]any{"bytes": n}, err
	}
	return map[string]any{"bytes": n}, s.Close()
}

// source: read an 8-byte big-endian N, write N pattern bytes, close.
func serveSource(s network.Stream) (map[string]any, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(deadlineReader{s}, hdr[:]); err != nil {
		return nil, fmt.Errorf("reading length: %w", err)
	}
	n := binary.BigEndian.Uint64(hdr[:])
	if n > maxSource {
		return map[string]any{"bytes": n}, fmt.Errorf("source length %d over limit", n)
	}
	if err := writePattern(s, n); err != nil {
		return map[string]any{"bytes": n}, err
	}
	return map[string]any{"bytes": n}, s.Close()
}

func writePattern(s network.Stream, n uint64) error {
	for off := uint64(0); off < n; {
		want := n - off
		if want > 65536 {
			want = 65536
		}
		_ = s.SetWriteDeadline(time.Now().Add(idleTimeout))
		w, err := s.Write(common.PatternChunk(off, int(want)))
		off += uint64(w)
		if err != nil {
			return err
		}
	}
	return nil
}

// sink: read until EOF, reply 8-byte big-endian count + sha256 of the bytes, close.
func serveSink(s network.Stream) (map[string]any, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, deadlineReader{s}, make([]byte, 64<<10))
	if err != nil {
		return map[string]any{"bytes": n}, err
	}
	out := binary.BigEndian.AppendUint64(nil, uint64(n))
	out = h.Sum(out)
	if _, err := s.Write(out); err != nil {
		return map[string]any{"bytes": n}, err
	}
	return map[string]any{"bytes": n}, s.Close()
}

// reset: read one byte, then reset the stream.
func serveReset(s network.Stream) (map[string]any, error) {
	var b [1]byte
	_, err := io.ReadFull(deadlineReader{s}, b[:])
	_ = s.Reset()
	if err != nil {
		return nil, fmt.Errorf("reading the byte: %w", err)
	}
	return map[string]any{"reset": true}, nil
}

// close: write "bye", then close the stream (both directions).
func serveClose(s network.Stream) (map[string]any, error) {
	if _, err := s.Write([]byte("bye")); err != nil {
		return nil, err
	}
	return nil, s.Close()
}

// /bench/1.0.0 listener: the workload of the shared peer benchmark (E, M, B, R modes).
func serveBench(s network.Stream) (map[string]any, error) {
	r := bufio.NewReaderSize(s, 64<<10)
	mode, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	switch mode {
	case 'E':
		if _, err := s.Write([]byte{'E'}); err != nil {
			return nil, err
		}
		if _, err := io.CopyBuffer(s, r, make([]byte, 64<<10)); err != nil {
			return nil, err
		}
	case 'M':
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, err
		}
		n := binary.BigEndian.Uint32(hdr[:])
		for i := uint32(0); i < n; i++ {
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				return nil, err
			}
			if _, err := r.Discard(int(binary.BigEndian.Uint32(hdr[:]))); err != nil {
				return nil, err
			}
		}
		if _, err := s.Write([]byte{'K'}); err != nil {
			return nil, err
		}
	case 'B':
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, err
		}
		total := int64(binary.BigEndian.Uint64(hdr[:]))
		if _, err := io.CopyN(io.Discard, r, total); err != nil {
			return nil, err
		}
		if _, err := s.Write([]byte{'K'}); err != nil {
			return nil, err
		}
	case 'R':
		line := fmt.Sprintf("%d %.6f\n", common.PeakRSSKiB(), common.CPUSeconds())
		if _, err := s.Write([]byte(line)); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown bench mode %q", mode)
	}
	return map[string]any{"mode": string(mode)}, s.Close()
}
