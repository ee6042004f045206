package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/testctx"
)

// testRebuild is a valid request, distinct for each i.
func testRebuild(i int, system string) *RebuildRequest {
	drv := fmt.Sprintf("/nix/store/%032d-hello-%d.drv", i, i)
	return &RebuildRequest{
		Version:   RebuildVersion,
		Tenant:    "t1",
		System:    system,
		DrvPath:   drv,
		Outputs:   []string{fmt.Sprintf("/nix/store/%032d-hello-%d", i+1, i)},
		Closure:   ClosureKey(drv),
		Requested: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC),
	}
}

func TestDecodeRebuildRequest(t *testing.T) {
	good, err := testRebuild(1, "x86_64-linux").Encode()
	if err != nil {
		t.Fatal(err)
	}
	if r, err := DecodeRebuildRequest(good); err != nil || r.MsgID() != "rebuild:t1:"+strings.TrimPrefix(testRebuild(1, "x").DrvPath, "/nix/store/") {
		t.Fatalf("round trip: %+v %v", r, err)
	}
	mutate := func(f func(m map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(good, &m)
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"no closure", mutate(func(m map[string]any) { delete(m, "closure") }), nil},
		{"not json", []byte("{"), ErrMalformed},
		{"trailing data", append(append([]byte{}, good...), " {}"...), ErrMalformed},
		{"unknown field", mutate(func(m map[string]any) { m["priority"] = 1 }), ErrMalformed},
		{"wrong version", mutate(func(m map[string]any) { m["version"] = 2 }), ErrMalformed},
		{"tenant with a dot", mutate(func(m map[string]any) { m["tenant"] = "a.b" }), ErrMalformed},
		{"system wildcard", mutate(func(m map[string]any) { m["system"] = "*" }), ErrMalformed},
		{"drv not a drv", mutate(func(m map[string]any) { m["drvPath"] = "/nix/store/00000000000000000000000000000001-hello" }), ErrMalformed},
		{"drv outside the store", mutate(func(m map[string]any) { m["drvPath"] = "/tmp/00000000000000000000000000000001-hello.drv" }), ErrMalformed},
		{"drv with a bad hash", mutate(func(m map[string]any) { m["drvPath"] = "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-hello.drv" }), ErrMalformed},
		{"drv below a store path", mutate(func(m map[string]any) {
			m["drvPath"] = "/nix/store/00000000000000000000000000000001-hello/../x.drv"
		}), ErrMalformed},
		{"no outputs", mutate(func(m map[string]any) { m["outputs"] = []any{} }), ErrMalformed},
		{"output is a drv", mutate(func(m map[string]any) { m["outputs"] = []any{m["drvPath"]} }), ErrMalformed},
		{"output repeated", mutate(func(m map[string]any) { o := m["outputs"].([]any); m["outputs"] = append(o, o[0]) }), ErrMalformed},
		{"output relative", mutate(func(m map[string]any) { m["outputs"] = []any{"nix/store/00000000000000000000000000000002-hello"} }), ErrMalformed},
		{"closure not under closure/", mutate(func(m map[string]any) { m["closure"] = "nar/abc" }), ErrMalformed},
		{"closure with a slash", mutate(func(m map[string]any) { m["closure"] = "closure/a/b" }), ErrMalformed},
		{"closure dot dot", mutate(func(m map[string]any) { m["closure"] = "closure/.." }), ErrMalformed},
		{"closure with a space", mutate(func(m map[string]any) { m["closure"] = "closure/a b" }), ErrMalformed},
		{"no request time", mutate(func(m map[string]any) { delete(m, "requested") }), ErrMalformed},
		{"oversize", make([]byte, MaxRebuildSize+1), ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeRebuildRequest(tc.in)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("DecodeRebuildRequest = %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzDecodeRebuildRequest(f *testing.F) {
	good, _ := testRebuild(1, "x86_64-linux").Encode()
	f.Add(good)
	f.Add([]byte(`{"version":1,"closure":"closure/x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRebuildRequest(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error outside the sentinels: %v", err)
			}
			return
		}
		again, err := r.Encode()
		if err != nil {
			t.Fatalf("decoded request does not encode: %v", err)
		}
		if _, err := DecodeRebuildRequest(again); err != nil {
			t.Fatalf("round trip: %v", err)
		}
		if _, err := RebuildSubject(r.Tenant, r.System); err != nil {
			t.Fatalf("valid request without a subject: %v", err)
		}
	})
}

func TestRebuildConsumerNames(t *testing.T) {
	names := map[string]bool{}
	for _, ts := range [][2]string{{"a-b", "c"}, {"a", "b-c"}, {"t1", "x86_64-linux"}, {"t1", "aarch64-linux"}, {"t2", "x86_64-linux"}} {
		n := RebuildConsumer(ts[0], ts[1])
		if names[n] {
			t.Fatalf("%v: name %s taken", ts, n)
		}
		names[n] = true
		if !strings.HasPrefix(n, RebuildConsumerPrefix+ts[0]+"-"+ts[1]+"-") || strings.ContainsAny(n, ".*> /\\") {
			t.Errorf("%v: name %q", ts, n)
		}
	}
	long := RebuildConsumer(strings.Repeat("t", 128), strings.Repeat("s", 128))
	if len(long) > 255 {
		t.Errorf("name of %d bytes", len(long))
	}
}

func TestConsumeRebuildsOptions(t *testing.T) {
	c := &Conn{} // never reaches the server
	subj, _ := RebuildSubject("t1", "x86_64-linux")
	ok := func(context.Context, *Delivery) error { return nil }
	for _, tc := range []struct {
		name string
		o    ConsumerOptions
		h    Handler
	}{
		{"nil handler", ConsumerOptions{FilterSubject: subj}, nil},
		{"no filter", ConsumerOptions{}, ok},
		{"group set", ConsumerOptions{Group: "g", FilterSubject: subj}, ok},
		{"results filter", ConsumerOptions{FilterSubject: ResultsFilter("t1")}, ok},
		{"wildcard system", ConsumerOptions{FilterSubject: "rebuild.t1.*"}, ok},
		{"all tenants", ConsumerOptions{FilterSubject: "rebuild.>"}, ok},
		{"slash", ConsumerOptions{FilterSubject: "rebuild.t/1.x86_64-linux"}, ok},
		{"short ack wait", ConsumerOptions{FilterSubject: subj, AckWait: time.Millisecond}, ok},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.ConsumeRebuilds(context.Background(), tc.o, tc.h); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// consumeRebuilds starts a ConsumeRebuilds stopped at the end of the test.
func consumeRebuilds(t *testing.T, c *Conn, system string, h Handler) *Consumer {
	t.Helper()
	subj, err := RebuildSubject("t1", system)
	if err != nil {
		t.Fatal(err)
	}
	k, err := c.ConsumeRebuilds(testctx.New(t, 30*time.Second), ConsumerOptions{FilterSubject: subj, AckWait: 2 * time.Second}, h)
	if err != nil {
		t.Fatalf("ConsumeRebuilds: %v", err)
	}
	t.Cleanup(func() { stop(t, k) })
	return k
}

func streamMsgs(t *testing.T, c *Conn) uint64 {
	t.Helper()
	s, err := c.js.Stream(testctx.New(t, 30*time.Second), StreamRebuild)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(testctx.New(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Retention != jetstream.WorkQueuePolicy {
		t.Fatalf("REBUILD retention %v", info.Config.Retention)
	}
	return info.State.Msgs
}

// TestRebuildQueue: requests are deduplicated by derivation, go to the
// volunteers of their system only, each to one volunteer, and leave the
// work queue once acked or terminated; a failure is redelivered.
func TestRebuildQueue(t *testing.T) {
	_, c := setup(t)
	for i, sys := range []string{"x86_64-linux", "x86_64-linux", "x86_64-linux", "aarch64-linux"} {
		if dup, err := c.PublishRebuild(testctx.New(t, 30*time.Second), testRebuild(i, sys)); err != nil || dup {
			t.Fatalf("PublishRebuild %d: dup %v, %v", i, dup, err)
		}
	}
	again := testRebuild(0, "x86_64-linux")
	again.Requested = again.Requested.Add(time.Minute) // another pusher asking
	if dup, err := c.PublishRebuild(testctx.New(t, 30*time.Second), again); err != nil || !dup {
		t.Fatalf("same derivation again: dup %v, %v", dup, err)
	}
	if _, err := c.PublishRebuild(testctx.New(t, 30*time.Second), &RebuildRequest{Version: RebuildVersion}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("invalid request published: %v", err)
	}
	if n := streamMsgs(t, c); n != 4 {
		t.Fatalf("%d requests in the stream, want 4", n)
	}

	// Two volunteers share the x86_64-linux consumer: request 0 succeeds,
	// 1 fails permanently, 2 fails once and then succeeds.
	rec := newRecorder()
	h := func(_ context.Context, d *Delivery) error {
		rec.add(d)
		r, err := DecodeRebuildRequest(d.Data)
		if err != nil {
			return Permanent(err)
		}
		if d.Subject != "rebuild.t1.x86_64-linux" || r.System != "x86_64-linux" {
			return Permanent(fmt.Errorf("got %s on %s", r.System, d.Subject))
		}
		switch r.DrvPath {
		case testRebuild(1, "").DrvPath:
			return Permanent(errors.New("build failed"))
		case testRebuild(2, "").DrvPath:
			if d.NumDelivered == 1 {
				return errors.New("NATS hiccup")
			}
		}
		return nil
	}
	other := connect(t, c.nc.ConnectedUrl())
	consumeRebuilds(t, c, "x86_64-linux", h)
	consumeRebuilds(t, other, "x86_64-linux", h)
	waitFor(t, 10*time.Second, "four deliveries", func() bool { return rec.total() == 4 })
	waitFor(t, 5*time.Second, "the x86_64-linux requests to leave", func() bool { return streamMsgs(t, c) == 1 })
	time.Sleep(500 * time.Millisecond)
	seen, all := rec.snapshot()
	if len(all) != 4 || len(seen) != 3 {
		t.Fatalf("%d deliveries of %d requests, want 4 of 3", len(all), len(seen))
	}
	for _, d := range all {
		if d.MsgID == "" || !strings.HasPrefix(d.MsgID, "rebuild:t1:") {
			t.Errorf("delivery without the request's msg id: %q", d.MsgID)
		}
	}

	// The aarch64-linux volunteer gets the last one.
	got := make(chan string, 1)
	consumeRebuilds(t, other, "aarch64-linux", func(_ context.Context, d *Delivery) error {
		got <- d.Subject
		return nil
	})
	select {
	case s := <-got:
		if s != "rebuild.t1.aarch64-linux" {
			t.Fatalf("subject %s", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the aarch64-linux request was not delivered")
	}
	waitFor(t, 5*time.Second, "an empty work queue", func() bool { return streamMsgs(t, c) == 0 })
	checkConsumer := func(system string) {
		cons, err := c.js.Consumer(testctx.New(t, 30*time.Second), StreamRebuild, RebuildConsumer("t1", system))
		if err != nil {
			t.Fatalf("consumer for %s: %v", system, err)
		}
		if f := cons.CachedInfo().Config.FilterSubject; f != "rebuild.t1."+system {
			t.Errorf("filter %s", f)
		}
	}
	checkConsumer("x86_64-linux")
	checkConsumer("aarch64-linux")
}

func TestResultClosure(t *testing.T) {
	r := testResult(1)
	r.Closure = ClosureKey(r.DrvPath)
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeResult(b)
	if err != nil || got.Closure != "closure/"+strings.TrimPrefix(r.DrvPath, "/nix/store/") {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	if got.MsgID() != testResult(1).MsgID() {
		t.Error("the closure key changed the result's msg id")
	}
	for _, bad := range []string{"nar/x", "closure/", "closure/a/b", "closure/..", "closure/a b", "closure/" + strings.Repeat("x", maxKeyLen)} {
		r.Closure = bad
		if _, err := r.Encode(); !errors.Is(err, ErrMalformed) {
			t.Errorf("closure %q: %v", bad, err)
		}
	}
}

// TestProvideRepairsConsumer: a rebuild consumer made with settings that
// stall its requests (one pending at most, one delivery, headers only, a
// pause), as a runner could under an account.conf older than the
// publisher's providing it, is set back by the next publish, and the
// request reaches a volunteer whole.
func TestProvideRepairsConsumer(t *testing.T) {
	_, c := setup(t)
	ctx := testctx.New(t, 30*time.Second)
	subj, _ := RebuildSubject("t1", "riscv64-linux")
	far := time.Now().Add(24 * time.Hour)
	bad := jetstream.ConsumerConfig{Durable: RebuildConsumer("t1", "riscv64-linux"), FilterSubject: subj, AckPolicy: jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy, AckWait: 2 * time.Second, MaxAckPending: 1, MaxDeliver: 1, HeadersOnly: true, PauseUntil: &far}
	if _, err := c.js.CreateConsumer(ctx, StreamRebuild, bad); err != nil {
		t.Fatal(err)
	}
	req := testRebuild(40, "riscv64-linux")
	if _, err := c.PublishRebuild(ctx, req); err != nil {
		t.Fatal(err)
	}
	k, err := c.js.Consumer(ctx, StreamRebuild, bad.Durable)
	if err != nil {
		t.Fatal(err)
	}
	got := k.CachedInfo().Config
	if got.MaxAckPending < 2 || got.MaxDeliver != DefaultRebuildMaxDeliver || got.HeadersOnly || got.PauseUntil != nil && got.PauseUntil.After(time.Now()) {
		t.Fatalf("consumer after the publish: max ack pending %d, max deliver %d, headers only %v, paused until %v",
			got.MaxAckPending, got.MaxDeliver, got.HeadersOnly, got.PauseUntil)
	}
	data := make(chan []byte, 1)
	consumeRebuilds(t, c, "riscv64-linux", func(_ context.Context, d *Delivery) error {
		data <- d.Data
		return nil
	})
	select {
	case b := <-data:
		if _, err := DecodeRebuildRequest(b); err != nil {
			t.Fatalf("delivered: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request was not delivered")
	}
}
