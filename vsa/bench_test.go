package vsa_test

import (
	"testing"

	"codeberg.org/provenix/provenix/internal/testkey"
	"codeberg.org/provenix/provenix/vsa"
)

// BenchmarkSign: building and signing one summary into a bundle with a
// key (ECDSA P-256), the CPU a pusher spends per published path.
//
//	go test -run '^$' -bench Sign ./vsa/
func BenchmarkSign(b *testing.B) {
	signer, _ := testkey.Signer(b)
	for b.Loop() {
		if _, err := vsa.Sign(b.Context(), summary(), signer); err != nil {
			b.Fatal(err)
		}
	}
}
