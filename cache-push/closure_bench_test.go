package cachepush

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
)

// BenchmarkReferenceCheck measures what the closure rule adds to the
// publication of one path whose references are all visible, on a real
// NATS and a local store: the look-up of a waiting entry for it, the
// check of its references before and after its narinfo is written, and
// the look-up of entries waiting for it. p50-ms is the figure to hold
// under 2 ms; refs is the number of references per path.
//
//	go test -run '^$' -bench ReferenceCheck ./cache-push/
func BenchmarkReferenceCheck(b *testing.B) {
	for _, nrefs := range []int{2, 20, 100} {
		b.Run(fmt.Sprintf("refs=%d", nrefs), func(b *testing.B) {
			f := newFixture(b)
			ctx := testctx.New(b, 60*time.Second)
			var refs []string
			for i := range nrefs {
				p := storePath(fmt.Sprintf("ref-%d", i))
				refs = append(refs, p)
				if err := store.Put(ctx, f.store, cachelayout.NarinfoKey(p), strings.NewReader("StorePath: "+p+"\n")); err != nil {
					b.Fatal(err)
				}
			}
			var lat []time.Duration
			i := 0
			for b.Loop() {
				self := storePath(fmt.Sprintf("self-%d", i))
				i++
				t0 := time.Now()
				if _, err := GetWaiting(ctx, f.conn, testTenant, self); !errors.Is(err, queue.ErrNotFound) {
					b.Fatal(err)
				}
				for range 2 { // before and after the narinfo is written
					if m, err := f.pusher.missingRefs(ctx, self, append(refs, self)); err != nil || len(m) > 0 {
						b.Fatal(m, err)
					}
				}
				f.pusher.releaseWaiters(ctx, testTenant, self)
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
			b.ReportMetric(pct(0.5), "p50-ms")
			b.ReportMetric(pct(0.9), "p90-ms")
		})
	}
}
