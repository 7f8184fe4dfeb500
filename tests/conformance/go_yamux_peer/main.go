// Command go_yamux_peer runs go-yamux v5 (configured as go-libp2p configures it) over plain
// TCP, so the Python yamux implementation can be checked against the real thing.
//
//	go_yamux_peer serve          listen on 127.0.0.1:0, print the address, serve one session
//	go_yamux_peer dial ADDR      dial ADDR, run the client scenarios, print a JSON summary
//
// Stream commands (first byte the opener writes):
//
//	'E' echo everything until EOF, then half-close
//	'R' reset the stream with error code 0x1001 (go-libp2p's ProtocolNegotiationFailed)
//	'O' open a stream back to the opener, write "hello from go", half-close it
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"time"

	yamux "github.com/libp2p/go-yamux/v5"
)

func config() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = 16 << 20
	cfg.LogOutput = io.Discard
	cfg.ReadBufSize = 0
	cfg.MaxIncomingStreams = math.MaxUint32
	return cfg
}

func handle(sess *yamux.Session, st *yamux.Stream) {
	cmd := make([]byte, 1)
	if _, err := io.ReadFull(st, cmd); err != nil {
		st.Reset()
		return
	}
	switch cmd[0] {
	case 'E':
		_, _ = io.Copy(st, st)
		_ = st.CloseWrite()
	case 'R':
		_ = st.ResetWithError(0x1001)
	case 'O':
		back, err := sess.OpenStream(context.Background())
		if err == nil {
			_, _ = back.Write([]byte("hello from go"))
			_ = back.CloseWrite()
			_, _ = io.Copy(io.Discard, back)
		}
		_ = st.CloseWrite()
	default:
		st.Reset()
	}
}

func serve() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	sess, err := yamux.Server(conn, config(), nil)
	if err != nil {
		return err
	}
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			var ga *yamux.GoAwayError
			if errors.As(err, &ga) {
				fmt.Printf("session ended: goaway remote=%v code=%d\n", ga.Remote, ga.ErrorCode)
			} else {
				fmt.Printf("session ended: %v\n", err)
			}
			return nil
		}
		go handle(sess, st)
	}
}

type summary struct {
	Echoed     int      `json:"echoed"`
	BigOK      bool     `json:"big_ok"`
	ResetCode  int64    `json:"reset_code"`
	FromPython string   `json:"from_python"`
	RTTms      float64  `json:"rtt_ms"`
	Errors     []string `json:"errors"`
}

func dial(addr string) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	sess, err := yamux.Client(conn, config(), nil)
	if err != nil {
		return err
	}
	var out summary
	var mu sync.Mutex
	fail := func(e error) { mu.Lock(); out.Errors = append(out.Errors, e.Error()); mu.Unlock() }
	// Python-side handlers: 'E' echo, 'R' reset with code 42, 'S' write "hi from python".
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			st, err := sess.OpenStream(context.Background())
			if err != nil {
				fail(err)
				return
			}
			msg := bytes.Repeat([]byte{byte(i)}, 1000+i*3000)
			go func() {
				_, _ = st.Write([]byte{'E'})
				_, _ = st.Write(msg)
				_ = st.CloseWrite()
			}()
			got, err := io.ReadAll(st)
			if err != nil || !bytes.Equal(got, msg) {
				fail(fmt.Errorf("echo %d: err=%v len=%d", i, err, len(got)))
				return
			}
			mu.Lock()
			out.Echoed++
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	// 32 MiB through one stream: window growth on both sides.
	st, err := sess.OpenStream(context.Background())
	if err == nil {
		big := make([]byte, 32<<20)
		for i := range big {
			big[i] = byte(i * 7)
		}
		go func() {
			_, _ = st.Write([]byte{'E'})
			_, _ = st.Write(big)
			_ = st.CloseWrite()
		}()
		h := sha256.New()
		n, err := io.Copy(h, st)
		want := sha256.Sum256(big)
		out.BigOK = err == nil && n == int64(len(big)) && bytes.Equal(h.Sum(nil), want[:])
	}
	// The Python side resets a stream with code 42.
	if st, err := sess.OpenStream(context.Background()); err == nil {
		_, _ = st.Write([]byte{'R'})
		_, err = st.Read(make([]byte, 1))
		var se *yamux.StreamError
		if errors.As(err, &se) && se.Remote {
			out.ResetCode = int64(se.ErrorCode)
		} else {
			fail(fmt.Errorf("expected a remote stream reset, got %v", err))
		}
	}
	if st, err := sess.OpenStream(context.Background()); err == nil {
		_, _ = st.Write([]byte{'S'})
		_ = st.CloseWrite()
		got, _ := io.ReadAll(st)
		out.FromPython = string(got)
	}
	if rtt, err := sess.Ping(); err == nil {
		out.RTTms = float64(rtt) / float64(time.Millisecond)
	} else {
		fail(err)
	}
	_ = sess.Close() // go-yamux v5: plain EOF, no GoAway
	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(out)
}

func main() {
	var err error
	switch {
	case len(os.Args) == 2 && os.Args[1] == "serve":
		err = serve()
	case len(os.Args) == 3 && os.Args[1] == "dial":
		err = dial(os.Args[2])
	default:
		err = errors.New("usage: go_yamux_peer serve | dial ADDR")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
