package cachepush

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"strings"
	"testing"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
)

// BenchmarkVSAWrite is what a verification summary adds to a publish:
// reading the sidecar, signing the summary and storing it (fsync'd), on a
// path with one bundle. The baseline, in the same run on the same store,
// is storing its narinfo, one of the writes every publish makes anyway.
//
//	go test -run '^$' -bench VSAWrite -benchtime 2000x ./cache-push/
func BenchmarkVSAWrite(b *testing.B) {
	ctx := context.Background()
	f := newFixture(b)
	nar := sha256.Sum256([]byte("nar"))
	out := attest.Output{Name: "out", Path: storePath("bench"), NarHash: nar, NarSize: 3, References: []string{storePath("bench")}}
	if err := f.pusher.writeProvenance(ctx, out, []json.RawMessage{benchBundle(b, f, out)}, nil); err != nil {
		b.Fatal(err)
	}
	ni := "StorePath: " + out.Path + "\nURL: nar/x.nar.zst\nCompression: zstd\nNarHash: sha256:" + out.NarHashHex() + "\nNarSize: 3\n"
	w := &Waiting{StorePath: out.Path, NarSHA256: out.NarHashHex(), Narinfo: ni}
	b.Run("narinfo", func(b *testing.B) {
		for b.Loop() {
			if err := store.Put(ctx, f.store, cachelayout.NarinfoKey(out.Path), strings.NewReader(ni)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("vsa", func(b *testing.B) {
		for b.Loop() {
			if err := f.pusher.writeVSA(ctx, w); err != nil {
				b.Fatal(err)
			}
		}
	})
}
