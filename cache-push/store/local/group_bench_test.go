package local

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// BenchmarkEntries measures what the cache's writes cost per entry (NAR,
// then sidecar and narinfo as one group, the pusher's pattern) with 32
// writers at once, with and without group commit in the same run: rounds
// of 500 entries alternate between the two stores, so that the disk's
// and the machine's other load fall on both alike. It reports entries
// per second and the CPU time per entry of the process, for each, and
// their ratios.
//
//	go test -run '^$' -bench Entries -benchtime 6000x ./cache-push/store/local/
func BenchmarkEntries(b *testing.B) {
	const round = 500
	var stores [2]*Store
	for i, opts := range [][]Option{nil, {WithoutGroupCommit()}} {
		s, err := New(filepath.Join(b.TempDir(), "cache"), opts...)
		if err != nil {
			b.Fatal(err)
		}
		stores[i] = s
	}
	body := bytes.Repeat([]byte("x"), 2000)
	var elapsed, cpu [2]time.Duration
	var entries [2]int
	n := 0
	for b.Loop() {
		n++
		if n%round != 0 {
			continue
		}
		i := (n / round) % 2
		start, cpu0 := time.Now(), cpuTime(b)
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				for {
					k := next.Add(1)
					if k > round {
						return
					}
					if err := writeEntry(b, stores[i], fmt.Sprintf("%016d%016d", n, k), body); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		elapsed[i] += time.Since(start)
		cpu[i] += cpuTime(b) - cpu0
		entries[i] += round
	}
	if entries[0] == 0 || entries[1] == 0 {
		b.Fatalf("-benchtime of at least %dx needed", 2*round)
	}
	rate := func(i int) float64 { return float64(entries[i]) / elapsed[i].Seconds() }
	cpuPer := func(i int) float64 { return float64(cpu[i].Microseconds()) / float64(entries[i]) }
	b.ReportMetric(rate(0), "group-entries/s")
	b.ReportMetric(rate(1), "nogroup-entries/s")
	b.ReportMetric(rate(0)/rate(1), "group/nogroup-rate")
	b.ReportMetric(cpuPer(0), "group-cpu-µs/entry")
	b.ReportMetric(cpuPer(1), "nogroup-cpu-µs/entry")
	b.ReportMetric(cpuPer(0)/cpuPer(1), "group/nogroup-cpu")
}

func writeEntry(b *testing.B, s *Store, hash string, body []byte) error {
	if err := store.Put(b.Context(), s, "nar/"+hash+".nar.zst", bytes.NewReader(body)); err != nil {
		return err
	}
	prov, err := store.Write(b.Context(), s, hash+".provenance.json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	ni, err := store.Write(b.Context(), s, hash+".narinfo", bytes.NewReader(body[:500]))
	if err != nil {
		prov.Pending.Abort()
		return err
	}
	return s.CommitGroup(b.Context(), []store.Object{prov}, []store.Object{ni})
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
