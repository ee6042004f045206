//go:build linux

package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cache-push/wire"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

// benchFloorRun is benchPushRun's floor: it stages and publishes
// benchResults new results on url as benchPushRun does, and consumes
// them as two pushers would (one group, wire.DirConcurrency handlers
// each) with a handler doing only what no push can skip (floorPush); it
// returns how long that took from the first publish and this process's
// CPU time. opts is benchPushRun's, unused.
func benchFloorRun(b *testing.B, ctx context.Context, p up.Paths, signer *attest.Signer, url string, _ ...local.Option) (time.Duration, time.Duration) {
	b.Helper()
	pol, err := policy.Load(p.Policy())
	if err != nil {
		b.Fatal(err)
	}
	verifier, err := pol.Verifier()
	if err != nil {
		b.Fatal(err)
	}
	conn, rs := benchResultsStaged(b, ctx, signer, url)
	tag := uniqueMessage(b)[len(b.Name())+1:]

	var handled atomic.Int64
	done := make(chan struct{})
	handler := func(pc *queue.Conn) queue.Handler {
		return func(ctx context.Context, d *queue.Delivery) error {
			if err := floorPush(ctx, pc, verifier, d); err != nil {
				b.Error(err)
			}
			if handled.Add(1) == int64(len(rs)) {
				close(done)
			}
			return nil
		}
	}
	start, startCPU := time.Now(), testproc.SelfCPU(b)
	for range 2 {
		pc, err := queue.Connect(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		defer pc.Close()
		k, err := pc.ConsumeResults(ctx, queue.ConsumerOptions{Group: "floor" + tag, FilterSubject: queue.ResultsFilter(up.DefaultTenant),
			Concurrency: wire.DirConcurrency}, handler(pc))
		if err != nil {
			b.Fatal(err)
		}
		defer k.Stop()
	}
	publishAll(b, ctx, conn, rs)
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d results handled after 5 minutes", handled.Load(), len(rs))
	}
	return time.Since(start), testproc.SelfCPU(b) - startCPU
}

// floorPush is what no push of d can skip: its staged NAR read, its
// bundle verified, one vote record written, one event published.
func floorPush(ctx context.Context, c *queue.Conn, verifier *attest.Verifier, d *queue.Delivery) error {
	r, err := queue.DecodeResult(d.Data)
	if err != nil {
		return err
	}
	o := r.Outputs[0]
	rc, _, err := c.OpenStaged(ctx, o.StagingKey)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	want := []attest.Subject{{Path: o.Path}}
	hex.Decode(want[0].NarHash[:], []byte(o.NarHash))
	if _, err := verifier.Verify(r.Bundle, want); err != nil {
		return err
	}
	vote, err := json.Marshal(map[string]string{"builder": r.Builder, "narHash": o.NarHash})
	if err != nil {
		return err
	}
	if _, err := c.KVCreate(ctx, queue.BucketVotes, queue.VoteKey(r.Tenant, o.Path, r.Builder), vote); err != nil {
		return err
	}
	return c.PublishEvent(ctx, r.Tenant, queue.EventPublished, map[string]string{"path": o.Path})
}
