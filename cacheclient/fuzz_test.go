package cacheclient_test

import (
	"strings"
	"testing"

	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/storepath"
)

func FuzzParseNarinfo(f *testing.F) {
	f.Add([]byte("StorePath: /nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox\nURL: nar/1lwydijr6099gzlp5ys3i65027bngl5bqv8cq01gj85jdprvga83.nar.zst\nCompression: zstd\nNarHash: sha256:08f8d8hryay76i5ifs5ssn91cxyaffm7c4lkghd6z0rywb3xn8zl\nNarSize: 1234\nReferences: 8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox\nCA: fixed:r:sha256:08f8d8hryay76i5ifs5ssn91cxyaffm7c4lkghd6z0rywb3xn8zl\nSig: c-1:" + strings.Repeat("A", 86) + "==\n"))
	f.Add([]byte("StorePath: x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ni, err := cacheclient.ParseNarinfo(b)
		if err != nil {
			return
		}
		// What is accepted is well formed and survives a round trip.
		if storepath.Check(ni.StorePath) != nil || ni.NarHash == nil || ni.URL == "" {
			t.Fatalf("accepted %+v", ni)
		}
		again, err := cacheclient.ParseNarinfo([]byte(ni.String()))
		if err != nil || again.Fingerprint() != ni.Fingerprint() {
			t.Fatalf("round trip: %v\n%s", err, ni.String())
		}
	})
}
