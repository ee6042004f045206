package queue

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testproc"
)

// BenchmarkStageSmall stages objects of one chunk (4 KiB, in a builder's
// scope, as builders stage NARs and closures), 16 at once, and reports
// the CPU of this process (client and in-process server) per object.
//
//	go test -run '^$' -bench StageSmall -benchtime 5000x ./queue/
func BenchmarkStageSmall(b *testing.B) {
	_, c := setup(b)
	ctx := context.Background()
	data := randomBytes(1, 4<<10)
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu0 := testproc.SelfCPU(b)
	start := time.Now()
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				if _, err := c.Stage(ctx, ScopedKey(fmt.Sprintf("closure/small-%d", i), "builder"), bytes.NewReader(data)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), testproc.SelfCPU(b)-cpu0
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/object")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "objects/s")
}
