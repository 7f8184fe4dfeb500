package main

// The Glueberry v1 wire, byte for byte (shared/reference/glueberry-go-v1.md §1.4, §1.5, §2):
//   frame = uvarint(L) ‖ uvarint(N) ‖ payload[N]      L = len(uvarint(N)) + N
//   encrypted payload = nonce[12] ‖ ChaCha20-Poly1305(key, nonce, plaintext, aad = ∅)
//   key = HKDF-SHA256(X25519(x_priv, peer_x_pub), salt = nil, info = "glueberry-v1-stream-key")
//   x_priv = clamp(SHA-512(seed)[:32]);  x_pub = Montgomery u of the Ed25519 public point

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"filippo.io/edwards25519"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/hkdf"
)

const (
	// MaxFrame is cramberry's outer-length limit: a larger L kills Go's read loop.
	MaxFrame = 64 << 20
	// MaxMessage is Glueberry-Go's default MaxMessageSize, checked on the sender's plaintext.
	MaxMessage = 1 << 20
	// HKDFInfo is the HKDF info string.
	HKDFInfo = "glueberry-v1-stream-key"
	// Overhead is nonce + tag.
	Overhead = 12 + 16
)

// Frame returns uvarint(L) ‖ uvarint(N) ‖ payload.
func Frame(payload []byte) []byte {
	inner := binary.AppendUvarint(nil, uint64(len(payload)))
	out := binary.AppendUvarint(make([]byte, 0, 20+len(payload)), uint64(len(inner)+len(payload)))
	out = append(out, inner...)
	return append(out, payload...)
}

// ReadFrame reads one frame. io.EOF means a clean end before a frame (as Go treats it);
// trailing bytes after the inner payload are ignored, as cramberry does.
func ReadFrame(r *bufio.Reader) ([]byte, error) {
	if _, err := r.Peek(1); err != nil {
		return nil, err
	}
	l, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("outer length: %w", err)
	}
	if l == 0 {
		return nil, errors.New("empty outer frame")
	}
	if l > MaxFrame {
		return nil, fmt.Errorf("frame of %d bytes over the 64 MiB limit", l)
	}
	buf := make([]byte, l)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("frame body: %w", err)
	}
	n, k := binary.Uvarint(buf)
	if k <= 0 || n > uint64(len(buf)-k) {
		return nil, errors.New("inner length exceeds the frame")
	}
	return buf[k : k+int(n)], nil
}

// XPrivate converts an Ed25519 private key (seed ‖ pub) to an X25519 scalar.
func XPrivate(priv ed25519.PrivateKey) []byte {
	h := sha512.Sum512(priv.Seed())
	k := append([]byte(nil), h[:32]...)
	k[0] &= 248
	k[31] &= 127
	k[31] |= 64
	return k
}

// XPublic converts an Ed25519 public key to X25519 (filippo.io/edwards25519, as Go does).
func XPublic(pub []byte) ([]byte, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key is %d bytes", len(pub))
	}
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return nil, err
	}
	return p.BytesMontgomery(), nil
}

// SharedSecret is X25519(xpriv, xpub), refusing an all-zero result like Glueberry-Go.
func SharedSecret(xpriv, xpub []byte) ([]byte, error) {
	s, err := curve25519.X25519(xpriv, xpub)
	if err != nil {
		return nil, err
	}
	var zero [32]byte
	if string(s) == string(zero[:]) {
		return nil, errors.New("X25519 produced all-zero output")
	}
	return s, nil
}

// StreamKey is HKDF-SHA256(shared, salt nil, info "glueberry-v1-stream-key", 32 bytes).
func StreamKey(shared []byte) []byte {
	k := make([]byte, 32)
	if _, err := io.ReadFull(hkdf.New(sha256.New, shared, nil, []byte(HKDFInfo)), k); err != nil {
		panic(err)
	}
	return k
}

// DeriveKey goes from our Ed25519 private key and the peer's Ed25519 public key to the key.
func DeriveKey(priv ed25519.PrivateKey, peerPub []byte) ([]byte, error) {
	xpub, err := XPublic(peerPub)
	if err != nil {
		return nil, err
	}
	shared, err := SharedSecret(XPrivate(priv), xpub)
	if err != nil {
		return nil, err
	}
	return StreamKey(shared), nil
}

// Seal returns nonce ‖ ciphertext ‖ tag with a random nonce (or the given one).
func Seal(key, plaintext, nonce []byte) ([]byte, error) {
	a, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, err
	}
	if nonce == nil {
		nonce = make([]byte, 12)
		if _, err := rand.Read(nonce); err != nil {
			return nil, err
		}
	}
	out := make([]byte, 12, 12+len(plaintext)+16)
	copy(out, nonce)
	return a.Seal(out, nonce, plaintext, nil), nil
}

// Open decrypts nonce ‖ ciphertext ‖ tag.
func Open(aead interface {
	Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error)
}, blob []byte) ([]byte, error) {
	if len(blob) < Overhead {
		return nil, fmt.Errorf("ciphertext too short: %d bytes", len(blob))
	}
	return aead.Open(nil, blob[:12], blob[12:], nil)
}

// --- the integration test's cramberry handshake payloads (§7.7) ---

var (
	HelloMsg    = []byte{0x14, 0x80, 0x01, 0x10, 0x01, 0x00, 0x00}
	CompleteMsg = []byte{0x14, 0x82, 0x01, 0x10, 0x01, 0x00, 0x00}
	pubKeyHead  = []byte{0x14, 0x81, 0x01, 0x14, 0x20}
	pubKeyTail  = []byte{0x00, 0x00}
)

// PubKeyMsg is 14 81 01 14 20 <32-byte Ed25519 public key> 00 00.
func PubKeyMsg(pub []byte) []byte {
	out := append(append([]byte(nil), pubKeyHead...), pub...)
	return append(out, pubKeyTail...)
}

// ParsePubKeyMsg returns the key of a PubKey payload, or nil if it is not one.
func ParsePubKeyMsg(b []byte) []byte {
	if len(b) != len(pubKeyHead)+32+len(pubKeyTail) || string(b[:5]) != string(pubKeyHead) || string(b[37:]) != string(pubKeyTail) {
		return nil
	}
	return b[5:37]
}
