package main

// `gbpeer dial ADDR bench`: Glueberry-level rates on the "bench" stream of a tagged-mode peer.

import (
	"context"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/glueberry/interop/internal/common"
)

type benchFlags struct{ msgs, msgSize, bulkMiB, chunk, rttN, warmup int }

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
	return s[min(int(math.Round(p/100*float64(len(s)-1))), len(s)-1)]
}

const benchStream = "bench"

// stats asks the remote for (peak RSS KiB, CPU s).
func (d *gbDialer) stats(ctx context.Context) (float64, float64, error) {
	if err := d.a.n.Send(ctx, d.target.ID, benchStream, []byte{TagStats}); err != nil {
		return 0, 0, err
	}
	got, err := d.a.wait(ctx, benchStream)
	if err != nil {
		return 0, 0, err
	}
	var rss, cpu float64
	if _, err := fmt.Sscanf(string(got), "T%f %f", &rss, &cpu); err != nil {
		return 0, 0, fmt.Errorf("stats reply %q: %w", got, err)
	}
	return rss, cpu, nil
}

// sync sends a 1-byte query and waits for its reply: everything sent before has arrived.
func (d *gbDialer) sync(ctx context.Context) error {
	if err := d.a.n.Send(ctx, d.target.ID, benchStream, []byte{TagQuery}); err != nil {
		return err
	}
	got, err := d.a.wait(ctx, benchStream)
	if err != nil {
		return err
	}
	if string(got) != "R" {
		return fmt.Errorf("sync reply %q", got)
	}
	return nil
}

func (d *gbDialer) runBench(b benchFlags) (map[string]any, error) {
	res := map[string]any{"impl": "glueberry-go-wire (go-libp2p " + common.Libp2pVersion() + ")"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	p := d.target.ID
	if err := d.sync(ctx); err != nil { // opens the stream
		return nil, err
	}
	oneWay := func(n, size int) (float64, float64, float64, error) {
		msg := tagged(TagData, size)
		_, rc0, err := d.stats(ctx)
		if err != nil {
			return 0, 0, 0, err
		}
		c0 := common.CPUSeconds()
		t0 := time.Now()
		for i := 0; i < n; i++ {
			if err := d.a.n.Send(ctx, p, benchStream, msg); err != nil {
				return 0, 0, 0, err
			}
		}
		if err := d.sync(ctx); err != nil {
			return 0, 0, 0, err
		}
		el := time.Since(t0).Seconds()
		c1 := common.CPUSeconds()
		_, rc1, err := d.stats(ctx)
		return el, c1 - c0, rc1 - rc0, err
	}
	if b.msgs > 0 {
		el, cd, cl, err := oneWay(b.msgs, b.msgSize)
		if err != nil {
			return nil, err
		}
		res["msgs_per_s"] = float64(b.msgs) / el
		res["msgs_cpu_us_dialer"] = cd / float64(b.msgs) * 1e6
		res["msgs_cpu_us_listener"] = cl / float64(b.msgs) * 1e6
	}
	if b.bulkMiB > 0 {
		n := (b.bulkMiB << 20) / b.chunk
		el, cd, cl, err := oneWay(n, b.chunk)
		if err != nil {
			return nil, err
		}
		total := float64(n * b.chunk)
		res["bulk_MBps"] = total / el / 1e6
		res["bulk_cpu_s_per_GB"] = (cd + cl) / total * 1e9
	}
	if b.rttN > 0 {
		q := tagged(TagQuery, b.msgSize)
		rtts := []float64{}
		for i := 0; i < b.rttN+b.warmup; i++ {
			t0 := time.Now()
			if err := d.a.n.Send(ctx, p, benchStream, q); err != nil {
				return nil, err
			}
			got, err := d.a.wait(ctx, benchStream)
			if err != nil {
				return nil, err
			}
			if len(got) != len(q) || got[0] != TagReply {
				return nil, fmt.Errorf("rtt reply of %d bytes", len(got))
			}
			if i >= b.warmup {
				rtts = append(rtts, float64(time.Since(t0).Nanoseconds())/1e3)
			}
		}
		res["rtt_us_median"] = median(rtts)
		res["rtt_us_p99"] = pct(rtts, 99)
	}
	rss, _, err := d.stats(ctx)
	if err != nil {
		return nil, err
	}
	res["rss_listener_MB"] = rss / 1024
	res["rss_dialer_MB"] = float64(common.PeakRSSKiB()) / 1024
	return res, nil
}
