package cachepush

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
)

// BenchmarkVotes measures sustained votes through decode, policy,
// bundle verification, the KV vote update and the tally (quorum 2, so each
// vote stays pending and no NAR is ingested), with 8 concurrent workers on
// a real embedded NATS. The baseline, in the same run and with the same
// concurrency, is bundle verification alone.
//
//	go test -run '^$' -bench Votes -benchtime 4000x ./cache-push/
func BenchmarkVotes(b *testing.B) {
	ctx := context.Background()
	_, conn := testqueue.Embedded(b, natsserver.Config{})
	dir := b.TempDir()
	signer, err := attest.GenerateKeyFiles(filepath.Join(dir, "a"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := attest.GenerateKeyFiles(filepath.Join(dir, "b")); err != nil {
		b.Fatal(err)
	}
	pol, err := policy.Parse([]byte("tenants: [t1]\nsystems: [x86_64-linux]\nquorum: {min: 2}\nbuilders:\n  - {id: a, key: a.pub}\n  - {id: b, key: b.pub}\n"), dir)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := GenerateKeyFiles("bench-1", filepath.Join(dir, "cache")); err != nil {
		b.Fatal(err)
	}
	ck, err := LoadKey(filepath.Join(dir, "cache"))
	if err != nil {
		b.Fatal(err)
	}
	st, err := local.New(filepath.Join(dir, "cache-dir"))
	if err != nil {
		b.Fatal(err)
	}
	pu, err := New(Config{KV: conn, Store: st, Policy: pol, CacheKey: ck, Staging: conn, UncheckedOutputPathsUnsafe: true})
	if err != nil {
		b.Fatal(err)
	}

	type msg struct {
		data    []byte
		bundle  []byte
		subject []attest.Subject
	}
	msgs := make([]msg, b.N)
	for i := range msgs {
		name := fmt.Sprintf("bench-%d", i)
		h := sha256.Sum256([]byte(name))
		out := attest.Output{Name: "out", Path: storePath(name), NarHash: h, NarSize: 1234}
		drv := storePath(name + ".drv")
		stmt, err := attest.NewStatement(&attest.Build{DrvPath: drv, System: "x86_64-linux", BuilderID: "a",
			Installable: attest.Installable{Kind: "drv", Ref: drv}, Outputs: []attest.Output{out}})
		if err != nil {
			b.Fatal(err)
		}
		bundle, err := attest.Sign(ctx, stmt, signer)
		if err != nil {
			b.Fatal(err)
		}
		r := &queue.Result{Version: queue.ResultVersion, Tenant: "t1", Builder: "a", DrvPath: drv, System: "x86_64-linux",
			Outputs: []queue.Output{{Name: "out", Path: out.Path, NarHash: hex.EncodeToString(h[:]), NarSize: 1234, StagingKey: queue.StagingKey(hex.EncodeToString(h[:]))}},
			Bundle:  bundle}
		data, err := json.Marshal(r)
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = msg{data: data, bundle: bundle, subject: []attest.Subject{{Path: out.Path, NarHash: h}}}
	}
	ver, err := pol.Verifier()
	if err != nil {
		b.Fatal(err)
	}
	const workers = 8
	run := func(f func(m msg) error) float64 {
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= int64(len(msgs)) {
						return
					}
					if err := f(msgs[i]); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return float64(len(msgs)) / time.Since(start).Seconds()
	}
	b.ResetTimer()
	baseline := run(func(m msg) error { _, err := ver.Verify(m.bundle, m.subject); return err })
	votes := run(func(m msg) error { return pu.Process(ctx, "results.t1.x86_64-linux", m.data, "") })
	b.StopTimer()
	b.ReportMetric(votes, "votes/s")
	b.ReportMetric(baseline, "verify-only/s")
	b.ReportMetric(votes/baseline, "ratio")
	if n := len(mustVotes(b, conn, pol, msgs[len(msgs)-1].subject[0].Path)); n != 1 {
		b.Fatalf("last result left %d votes", n)
	}
}

func mustVotes(b *testing.B, kv KV, pol *policy.Policy, path string) []Vote {
	v, err := Votes(context.Background(), kv, "t1", path, pol.BuilderIDs())
	if err != nil {
		b.Fatal(err)
	}
	return v
}
