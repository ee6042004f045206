package cachepush

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/queue"
)

// BenchmarkWriteEntry is the CPU and garbage of writing one new cache
// entry (writeEntry: the staged NAR re-hashed and compressed, the
// provenance sidecar with one bundle, the signed narinfo, all committed
// to a local store by group commit), for tiny NARs (a script, as
// BenchmarkResultsCluster publishes a small file), 16 entries at once as a
// pusher's handlers write them. Staged NARs are read from memory, so that
// the staging store's cost (not this path's) stays out. It reports the
// process's CPU per entry in user space (garbage collection included)
// and in the kernel, besides the allocations. The kernel's share varies
// with the filesystem's other load; with TMPDIR=/dev/shm (tmpfs) it
// varies less, and fsyncs cost nothing.
//
//	go test -run '^$' -bench WriteEntry -benchtime 4000x ./cache-push/
func BenchmarkWriteEntry(b *testing.B) {
	ctx := context.Background()
	f := newFixture(b)
	// As BenchmarkResultsCluster configures it: without verification
	// summaries (BenchmarkVSAWrite measures what they add).
	cfg := f.pusher.cfg
	cfg.VSA = nil
	staged := &memStaging{nars: map[string][]byte{}}
	cfg.Staging = staged
	pu, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}

	type entry struct {
		out attest.Output
		key string
	}
	entries := make([]entry, b.N)
	for i := range entries {
		name := fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), i)
		n := makeNAR(b, name)
		entries[i] = entry{out: attest.Output{Name: "out", Path: storePath(name), NarHash: sha256.Sum256(n), NarSize: uint64(len(n))}, key: name}
		staged.nars[name] = n
	}
	// One real bundle, of the size a result's is; the sidecar of every
	// entry holds it.
	bundle := benchBundle(b, f, entries[0].out)
	q := &cachelayout.QuorumInfo{Verdict: VerdictAgreed, Min: 1, Distinct: "builder", Agreeing: []string{testBuilder}}
	m := entryMeta{tenant: testTenant, builder: testBuilder, msgID: "bench", drv: storePath("bench.drv")}

	b.ReportAllocs()
	b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0))) // about 16 writers, as a pusher's handlers
	var next atomic.Int64
	user0, sys0 := testproc.SelfCPUSplit(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e := entries[next.Add(1)-1]
			oc, err := pu.writeEntry(ctx, m, e.out, e.key, []json.RawMessage{bundle}, nil, q)
			if err != nil || oc != outPublished {
				b.Errorf("%s: outcome %d, %v", e.out.Path, oc, err)
				return
			}
		}
	})
	b.StopTimer()
	user, sys := testproc.SelfCPUSplit(b)
	b.ReportMetric(float64((user-user0).Microseconds())/float64(b.N), "user-µs/entry")
	b.ReportMetric(float64((sys-sys0).Microseconds())/float64(b.N), "sys-µs/entry")
}

// memStaging serves staged NARs from memory.
type memStaging struct {
	mu   sync.Mutex
	nars map[string][]byte
}

func (s *memStaging) OpenStaged(_ context.Context, key string) (io.ReadCloser, queue.StagedInfo, error) {
	s.mu.Lock()
	n, ok := s.nars[key]
	s.mu.Unlock()
	if !ok {
		return nil, queue.StagedInfo{}, fmt.Errorf("%s: %w", key, queue.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(n)), queue.StagedInfo{Size: uint64(len(n))}, nil
}

// benchBundle is the bundle f's builder signs for out, the output of a
// made-up derivation.
func benchBundle(b *testing.B, f *fixture, out attest.Output) json.RawMessage {
	b.Helper()
	st, err := attest.NewStatement(&attest.Build{DrvPath: storePath("bench.drv"), System: "x86_64-linux", BuilderID: testBuilder, Outputs: []attest.Output{out}})
	if err != nil {
		b.Fatal(err)
	}
	bundle, err := attest.Sign(b.Context(), st, f.signer)
	if err != nil {
		b.Fatal(err)
	}
	return bundle
}
