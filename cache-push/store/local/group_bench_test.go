package local

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/internal/testproc"
)

// BenchmarkEntries measures what the cache's writes cost per entry (NAR,
// sidecar and narinfo as one group of two stages, the pusher's pattern;
// "-3commits": the NAR, the sidecar and the narinfo committed one after
// the other, as the pusher did before) with 32 writers at once, for each
// way of committing, in the same run:
// rounds of 100 entries go to each store in turn, so that the disk's and
// the machine's other load fall on all alike. It reports entries per
// second and the CPU time per entry of the process, for each, and their
// ratios to "alone", every commit flushing on its own
// (WithoutGroupCommit); "batch-late-writeback" leaves the writes to the
// fsyncs (withLateWriteback). Each figure is the median of its rounds.
//
//	go test -run '^$' -bench Entries -benchtime 12000x ./cache-push/store/local/
func BenchmarkEntries(b *testing.B) {
	const round = 100
	setups := []benchSetup{
		{name: "batch"},
		{name: "alone", opts: []Option{WithoutGroupCommit()}},
		{name: "batch-syncfs", opts: []Option{WithFilesystemFlush()}},
		{name: "batch-late-writeback", opts: []Option{withLateWriteback()}},
		{name: "batch-3commits", three: true},
		{name: "alone-3commits", opts: []Option{WithoutGroupCommit()}, three: true},
	}
	stores := make([]*Store, len(setups))
	for i, su := range setups {
		s, err := New(filepath.Join(b.TempDir(), "cache"), su.opts...)
		if err != nil {
			b.Fatal(err)
		}
		stores[i] = s
	}
	body := bytes.Repeat([]byte("x"), 2000)
	// Per round, so that the medians leave out the rounds that the
	// machine's other work slowed most.
	elapsed := make([][]time.Duration, len(setups))
	cpu := make([][]time.Duration, len(setups))
	n := 0
	for b.Loop() {
		n++
		if n%round != 0 {
			continue
		}
		i := (n / round) % len(setups)
		start, cpu0 := time.Now(), testproc.SelfCPU(b)
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				for {
					k := next.Add(1)
					if k > round {
						return
					}
					if err := writeEntry(b, stores[i], fmt.Sprintf("%016d%016d", n, k), body, setups[i].three); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		elapsed[i] = append(elapsed[i], time.Since(start))
		cpu[i] = append(cpu[i], testproc.SelfCPU(b)-cpu0)
	}
	for i := range setups {
		if len(elapsed[i]) == 0 {
			b.Fatalf("-benchtime of at least %dx needed", len(setups)*round)
		}
	}
	median := func(ds []time.Duration) time.Duration {
		ds = slices.Clone(ds)
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	rate := func(i int) float64 { return round / median(elapsed[i]).Seconds() }
	cpuPer := func(i int) float64 { return float64(median(cpu[i]).Microseconds()) / round }
	for i, su := range setups {
		b.ReportMetric(rate(i), su.name+"-entries/s")
		b.ReportMetric(cpuPer(i), su.name+"-cpu-µs/entry")
		if i != 1 {
			b.ReportMetric(rate(i)/rate(1), su.name+"/alone-rate")
			b.ReportMetric(cpuPer(i)/cpuPer(1), su.name+"/alone-cpu")
		}
	}
}

// benchSetup is one way of committing BenchmarkEntries measures.
type benchSetup struct {
	name  string
	opts  []Option
	three bool // commit NAR, sidecar and narinfo one by one
}

func writeEntry(b *testing.B, s *Store, hash string, body []byte, three bool) error {
	if three {
		for _, o := range []struct {
			key  string
			body []byte
		}{{"nar/" + hash + ".nar.zst", body}, {hash + ".provenance.json", body}, {hash + ".narinfo", body[:500]}} {
			if err := store.Put(b.Context(), s, o.key, bytes.NewReader(o.body)); err != nil {
				return err
			}
		}
		return nil
	}
	var objs []store.Object
	for _, o := range []struct {
		key  string
		body []byte
	}{{"nar/" + hash + ".nar.zst", body}, {hash + ".provenance.json", body}, {hash + ".narinfo", body[:500]}} {
		obj, err := store.Write(b.Context(), s, o.key, bytes.NewReader(o.body))
		if err != nil {
			store.AbortAll(objs)
			return err
		}
		objs = append(objs, obj)
	}
	return s.CommitGroup(b.Context(), objs[:2], objs[2:])
}
