// Package testkey gives tests a fresh builder key and the attest.Signer
// that signs with it.
package testkey

import (
	"crypto/ecdsa"
	"testing"

	"codeberg.org/provenix/provenix/attest"
)

// Signer is a new signer with a fresh key, and that key; it fails the test
// when either cannot be made.
func Signer(t testing.TB) (*attest.Signer, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := attest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := attest.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	return s, key
}
