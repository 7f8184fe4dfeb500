package main

// /bench/1.0.0 dialer: the same workload, flags and JSON keys as the shared benchmark peers.

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/glueberry/interop/internal/common"
	"github.com/libp2p/go-libp2p/core/network"
)

type benchFlags struct {
	setupN, msgs, msgSize, bulkMiB, chunk, rttN, warmup int
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

func pct(xs []float64, p float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(math.Round(p / 100 * float64(len(s)-1)))
	return s[min(i, len(s)-1)]
}

// benchStream opens /bench/1.0.0 with an eager multistream-select negotiation on the
// current connection, as the other benchmark peers do (no wait for identify).
func (d *dialer) benchStream(ctx context.Context) (network.Stream, error) {
	saved := d.eager
	d.eager = true
	defer func() { d.eager = saved }()
	return d.open(ctx, ProtoBench)
}

// remote asks the listener for (peak RSS KiB, CPU seconds) with an 'R' stream.
func (d *dialer) remote(ctx context.Context) (float64, float64, error) {
	s, err := d.benchStream(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer s.Close()
	if _, err := s.Write([]byte{'R'}); err != nil {
		return 0, 0, err
	}
	line, err := bufio.NewReader(s).ReadString('\n')
	if err != nil {
		return 0, 0, err
	}
	var rss, cpu float64
	if _, err := fmt.Sscanf(strings.TrimSpace(line), "%f %f", &rss, &cpu); err != nil {
		return 0, 0, err
	}
	return rss, cpu, nil
}

func (d *dialer) runBench(b benchFlags) (map[string]any, error) {
	res := map[string]any{"impl": "go-libp2p " + common.Libp2pVersion()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// 1. setup: fresh connection, stream, 1-byte round trip (drop the connect test's one first)
	_ = d.h.Network().ClosePeer(d.target.ID)
	time.Sleep(50 * time.Millisecond)
	setup := []float64{}
	var phases [3][]float64
	for i := 0; i < b.setupN; i++ {
		t0 := time.Now()
		if _, err := d.h.Network().DialPeer(ctx, d.target.ID); err != nil {
			return nil, fmt.Errorf("setup dial: %w", err)
		}
		t1 := time.Now()
		s, err := d.benchStream(ctx)
		if err != nil {
			return nil, fmt.Errorf("setup stream: %w", err)
		}
		t2 := time.Now()
		if _, err := s.Write([]byte{'E'}); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			return nil, err
		}
		t3 := time.Now()
		ms := func(a, b time.Time) float64 { return float64(b.Sub(a).Nanoseconds()) / 1e6 }
		setup = append(setup, ms(t0, t3))
		phases[0] = append(phases[0], ms(t0, t1))
		phases[1] = append(phases[1], ms(t1, t2))
		phases[2] = append(phases[2], ms(t2, t3))
		_ = s.Close()
		_ = d.h.Network().ClosePeer(d.target.ID)
		time.Sleep(50 * time.Millisecond)
	}
	res["setup_ms"] = setup
	if b.setupN > 0 {
		res["setup_phases_ms"] = []float64{median(phases[0]), median(phases[1]), median(phases[2])}
	}
	if _, err := d.h.Network().DialPeer(ctx, d.target.ID); err != nil {
		return nil, err
	}
	// 2. small messages, one write per [u32 len][payload] frame
	if b.msgs > 0 {
		s, err := d.benchStream(ctx)
		if err != nil {
			return nil, err
		}
		frame := make([]byte, 4+b.msgSize)
		binary.BigEndian.PutUint32(frame, uint32(b.msgSize))
		for i := 4; i < len(frame); i++ {
			frame[i] = 'm'
		}
		hdr := binary.BigEndian.AppendUint32([]byte{'M'}, uint32(b.msgs))
		_, rc0, err := d.remote(ctx)
		if err != nil {
			return nil, err
		}
		c0 := common.CPUSeconds()
		t0 := time.Now()
		if _, err := s.Write(hdr); err != nil {
			return nil, err
		}
		for i := 0; i < b.msgs; i++ {
			if _, err := s.Write(frame); err != nil {
				return nil, err
			}
		}
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			return nil, err
		}
		res["msgs_per_s"] = float64(b.msgs) / time.Since(t0).Seconds()
		c1 := common.CPUSeconds()
		_, rc1, err := d.remote(ctx)
		if err != nil {
			return nil, err
		}
		res["msgs_cpu_us_dialer"] = (c1 - c0) / float64(b.msgs) * 1e6
		res["msgs_cpu_us_listener"] = (rc1 - rc0) / float64(b.msgs) * 1e6
		_ = s.Close()
	}
	// 3. bulk
	if b.bulkMiB > 0 {
		s, err := d.benchStream(ctx)
		if err != nil {
			return nil, err
		}
		total := uint64(b.bulkMiB) << 20
		chunk := make([]byte, b.chunk)
		for i := range chunk {
			chunk[i] = 'b'
		}
		hdr := binary.BigEndian.AppendUint64([]byte{'B'}, total)
		_, rc0, err := d.remote(ctx)
		if err != nil {
			return nil, err
		}
		c0 := common.CPUSeconds()
		t0 := time.Now()
		if _, err := s.Write(hdr); err != nil {
			return nil, err
		}
		for sent := uint64(0); sent < total; sent += uint64(len(chunk)) {
			if _, err := s.Write(chunk); err != nil {
				return nil, err
			}
		}
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			return nil, err
		}
		res["bulk_MBps"] = float64(total) / time.Since(t0).Seconds() / 1e6
		c1 := common.CPUSeconds()
		_, rc1, err := d.remote(ctx)
		if err != nil {
			return nil, err
		}
		res["bulk_cpu_s_per_GB"] = (c1 - c0 + rc1 - rc0) / float64(total) * 1e9
		_ = s.Close()
	}
	// 4. 1 KiB ping-pong over echo mode
	if b.rttN > 0 {
		s, err := d.benchStream(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := s.Write([]byte{'E'}); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			return nil, err
		}
		msg := make([]byte, b.msgSize)
		for i := range msg {
			msg[i] = 'p'
		}
		got := make([]byte, b.msgSize)
		rtts := []float64{}
		for i := 0; i < b.rttN+b.warmup; i++ {
			t0 := time.Now()
			if _, err := s.Write(msg); err != nil {
				return nil, err
			}
			if _, err := io.ReadFull(s, got); err != nil {
				return nil, err
			}
			if i >= b.warmup {
				rtts = append(rtts, float64(time.Since(t0).Nanoseconds())/1e3)
			}
		}
		res["rtt_us_median"] = median(rtts)
		res["rtt_us_p99"] = pct(rtts, 99)
		_ = s.Close()
	}
	// 5. peak RSS of both ends
	rss, _, err := d.remote(ctx)
	if err != nil {
		return nil, err
	}
	res["rss_listener_MB"] = rss / 1024
	res["rss_dialer_MB"] = float64(common.PeakRSSKiB()) / 1024
	return res, nil
}
