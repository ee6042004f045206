package cachepush

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nix-community/go-nix/pkg/nar"

	"codeberg.org/provenix/provenix/queue"
)

// BenchmarkFloodLatency measures what one trusted builder's flood costs
// the others (issue 11, finding 1): the p99 latency from publishing an
// honest builder's result to its publication event, for 100 results
// published 20 ms apart, first with no flood (the baseline), then during
// each of two 1,000-message floods from another builder, all in the same
// run, on one pusher (concurrency 8, as `provenix up`) on a real embedded
// NATS:
//
//   - malformed: the attack, signed results whose reference's
//     hash part holds a newline (rejected, counted against the builder);
//
//   - stuck: signed results whose staged NAR cannot be read, each
//     holding its handler 100 ms before failing retryably (retried until
//     dead-lettered).
//
//     go test -run '^$' -bench FloodLatency -benchtime 1x ./cache-push/
func BenchmarkFloodLatency(b *testing.B) {
	const (
		flood    = 1000
		honest   = 100
		interval = 20 * time.Millisecond
	)
	for b.Loop() {
		f := newFloodFixture(b, nil)
		f.staging.delay = 100 * time.Millisecond
		ctx := context.Background()
		if err := f.pusher.Open(ctx, f.conn, queue.ConsumerOptions{Group: "bench", FilterSubject: queue.ResultsFilter(testTenant), Concurrency: 8}); err != nil {
			b.Fatal(err)
		}
		var mu sync.Mutex
		arrived := map[string]time.Time{}
		subj, _ := queue.EventsSubject(testTenant, queue.EventPublished)
		sub, err := f.conn.NATS().Subscribe(subj, func(m *nats.Msg) {
			var p Publication
			if json.Unmarshal(m.Data, &p) == nil {
				mu.Lock()
				if _, ok := arrived[p.StorePath]; !ok {
					arrived[p.StorePath] = time.Now()
				}
				mu.Unlock()
			}
		})
		if err != nil {
			b.Fatal(err)
		}

		// honestRun publishes honest results paced by interval and returns
		// their latencies, sorted.
		honestRun := func(tag string) []time.Duration {
			rs := make([]*queue.Result, honest)
			for i := range rs {
				rs[i] = stagedResult(b, f, fmt.Sprintf("honest-%s-%d", tag, i))
			}
			sent := make([]time.Time, honest)
			for i, r := range rs {
				sent[i] = time.Now()
				if _, err := f.conn.PublishResult(ctx, r); err != nil {
					b.Fatal(err)
				}
				time.Sleep(interval)
			}
			deadline := time.Now().Add(2 * time.Minute)
			var lat []time.Duration
			for {
				lat = lat[:0]
				mu.Lock()
				for i, r := range rs {
					if at, ok := arrived[r.Outputs[0].Path]; ok {
						lat = append(lat, at.Sub(sent[i]))
					}
				}
				mu.Unlock()
				if len(lat) == honest {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("%s: %d of %d honest results published after 2 minutes", tag, len(lat), honest)
				}
				time.Sleep(10 * time.Millisecond)
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			return lat
		}
		p99 := func(lat []time.Duration) time.Duration { return lat[(len(lat)*99+99)/100-1] }

		base := honestRun("base")

		// Each flood is signed beforehand and published at once (async),
		// so that it is a backlog when the honest results follow.
		publishFlood := func(data [][]byte) {
			for _, d := range data {
				m := nats.NewMsg("results." + testTenant + ".x86_64-linux")
				m.Data = d
				if _, err := f.conn.JetStream().PublishMsgAsync(m); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-f.conn.JetStream().PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("flood not acknowledged")
			}
		}

		// The attack.
		var malformedFlood, stuckFlood [][]byte
		for i := range flood {
			_, data := signed(b, f.mallory, malloryID, fmt.Sprintf("malformed-%d", i), "nar/p", []string{badHashPath}, nil)
			malformedFlood = append(malformedFlood, data)
			_, data = signed(b, f.mallory, malloryID, fmt.Sprintf("stuck-%d", i), fmt.Sprintf("nar/stuck-%d", i), nil, nil)
			stuckFlood = append(stuckFlood, data)
		}
		publishFlood(malformedFlood)
		malformed := honestRun("malformed")

		// Slow, retryable poison.
		f.staging.failPrefix = "nar/stuck-"
		publishFlood(stuckFlood)
		stuck := honestRun("stuck")

		sub.Unsubscribe()
		f.pusher.Close(ctx)
		b.ReportMetric(p99(base).Seconds()*1000, "base-p99-ms")
		b.ReportMetric(p99(malformed).Seconds()*1000, "malformed-p99-ms")
		b.ReportMetric(p99(stuck).Seconds()*1000, "stuck-p99-ms")
		b.ReportMetric(float64(p99(malformed))/float64(p99(base)), "malformed/base")
		b.ReportMetric(float64(p99(stuck))/float64(p99(base)), "stuck/base")
		b.Logf("p50 base %s, malformed %s, stuck %s", base[len(base)/2], malformed[len(malformed)/2], stuck[len(stuck)/2])
	}
}

// stagedResult is an honest builder's result for a small NAR of name,
// staged.
func stagedResult(tb testing.TB, f *floodFixture, name string) *queue.Result {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "out")
	if err := os.WriteFile(dir, []byte(name+"\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	var buf bytes.Buffer
	if err := nar.DumpPath(&buf, dir); err != nil {
		tb.Fatal(err)
	}
	h := sha256Sum(buf.Bytes())
	key := queue.StagingKey(fmt.Sprintf("%x", h))
	if _, err := f.conn.Stage(context.Background(), key, bytes.NewReader(buf.Bytes())); err != nil {
		tb.Fatal(err)
	}
	r, _ := signedNAR(tb, f.signer, testBuilder, name, key, h, uint64(buf.Len()), nil, nil)
	return r
}
