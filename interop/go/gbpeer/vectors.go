package main

// `gbpeer vectors`: the reference's §2.9 test vectors (and framing examples), computed by Go.

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func keyVector(seedByte byte) (ed25519.PrivateKey, map[string]any, error) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seedByte}, 32))
	pub := priv.Public().(ed25519.PublicKey)
	lpub, err := crypto.UnmarshalEd25519PublicKey(pub)
	if err != nil {
		return nil, nil, err
	}
	id, err := peer.IDFromPublicKey(lpub)
	if err != nil {
		return nil, nil, err
	}
	xpub, err := XPublic(pub)
	if err != nil {
		return nil, nil, err
	}
	return priv, map[string]any{
		"seed":        hex.EncodeToString(priv.Seed()),
		"ed25519_pub": hex.EncodeToString(pub),
		"peer_id":     id.String(),
		"x25519_priv": hex.EncodeToString(XPrivate(priv)),
		"x25519_pub":  hex.EncodeToString(xpub),
	}, nil
}

func vectors() (map[string]any, error) {
	privA, a, err := keyVector(1)
	if err != nil {
		return nil, err
	}
	privB, b, err := keyVector(2)
	if err != nil {
		return nil, err
	}
	xpubB, _ := XPublic(privB.Public().(ed25519.PublicKey))
	xpubA, _ := XPublic(privA.Public().(ed25519.PublicKey))
	sAB, err := SharedSecret(XPrivate(privA), xpubB)
	if err != nil {
		return nil, err
	}
	sBA, err := SharedSecret(XPrivate(privB), xpubA)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(sAB, sBA) {
		return nil, errors.New("X25519 is not symmetric")
	}
	key := StreamKey(sAB)
	kA, _ := DeriveKey(privA, privB.Public().(ed25519.PublicKey))
	kB, _ := DeriveKey(privB, privA.Public().(ed25519.PublicKey))
	if !bytes.Equal(kA, key) || !bytes.Equal(kB, key) {
		return nil, errors.New("DeriveKey disagrees")
	}
	nonce, _ := hex.DecodeString("000102030405060708090a0b")
	blob, err := Seal(key, []byte("hello"), nonce)
	if err != nil {
		return nil, err
	}
	identity := make([]byte, 32)
	identity[0] = 1
	idX, err := XPublic(identity)
	if err != nil {
		return nil, err
	}
	_, idErr := SharedSecret(XPrivate(privA), idX)
	frames := map[string]string{}
	for name, p := range map[string][]byte{
		"010203": {1, 2, 3}, "empty": {}, "200_bytes": make([]byte, 200),
		"16384_bytes": make([]byte, 16384), "1MiB": make([]byte, 1<<20),
	} {
		f := Frame(p)
		frames[name] = hex.EncodeToString(f[:len(f)-len(p)]) // the two varints
	}
	return map[string]any{
		"A":                      a,
		"B":                      b,
		"x25519_shared":          hex.EncodeToString(sAB),
		"stream_key":             hex.EncodeToString(key),
		"hello_nonce":            hex.EncodeToString(nonce),
		"hello_blob":             hex.EncodeToString(blob),
		"hello_frame":            hex.EncodeToString(Frame(blob)),
		"identity_point_x25519":  hex.EncodeToString(idX),
		"identity_point_ecdh_ok": idErr == nil,
		"frame_headers":          frames,
		"handshake": map[string]string{
			"hello":          hex.EncodeToString(HelloMsg),
			"pubkey_A":       hex.EncodeToString(PubKeyMsg(privA.Public().(ed25519.PublicKey))),
			"complete":       hex.EncodeToString(CompleteMsg),
			"hello_frame":    hex.EncodeToString(Frame(HelloMsg)),
			"complete_frame": hex.EncodeToString(Frame(CompleteMsg)),
		},
	}, nil
}
