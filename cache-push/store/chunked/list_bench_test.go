package chunked

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

// BenchmarkParseList: a list of 4,200 chunks.
func BenchmarkParseList(b *testing.B) {
	var l chunkList
	for i := range 4200 {
		l.add(sha256.Sum256([]byte{byte(i), byte(i >> 8)}), 16<<10)
	}
	enc := l.encode()
	for b.Loop() {
		if _, err := parseList(bytes.NewReader(enc)); err != nil {
			b.Fatal(err)
		}
	}
}
