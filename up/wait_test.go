package up

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/queue"
)

// TestWaitPublished: WaitPublished returns once the narinfo is in the
// stack's cache; a result the pusher rejects ends it with the pusher's
// reason, also when the rejection came before the wait; a rejection older
// than since, or of another derivation, does not.
func TestWaitPublished(t *testing.T) {
	s, err := New(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())

	const (
		drv = "/nix/store/00000000000000000000000000000000-hello.drv"
		out = "/nix/store/11111111111111111111111111111111-hello"
	)
	// A result from a builder the policy does not know: rejected.
	before := time.Now()
	res := &queue.Result{Version: 1, Tenant: DefaultTenant, Builder: "stranger", DrvPath: drv, System: "x86_64-linux",
		Outputs: []queue.Output{{Name: "out", Path: out, NarHash: strings.Repeat("ab", 32), NarSize: 1, StagingKey: "x"}},
		Bundle:  []byte(`{}`)}
	if _, err := s.Conn().PublishResult(ctx, res); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	err = s.WaitPublished(wctx, drv, out, before)
	if !errors.Is(err, cachepush.ErrRejected) || !strings.Contains(err.Error(), "("+cachepush.ReasonPolicy+")") || !strings.Contains(err.Error(), `"stranger"`) {
		t.Fatalf("a rejected result: %v", err)
	}
	if re := (*cachepush.RejectedError)(nil); !errors.As(err, &re) || re.Reason != cachepush.ReasonPolicy {
		t.Fatalf("a rejected result: %#v, want a RejectedError for reason %s", err, cachepush.ReasonPolicy)
	}
	// Only rejections since the given time count, and only of drv.
	short, scancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer scancel()
	if err := s.WaitPublished(short, drv, out, time.Now()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("an old rejection: %v", err)
	}
	short2, scancel2 := context.WithTimeout(ctx, 500*time.Millisecond)
	defer scancel2()
	if err := s.WaitPublished(short2, "/nix/store/22222222222222222222222222222222-other.drv", out, before); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("another derivation's rejection: %v", err)
	}
	// The narinfo written while it waits.
	go func() {
		time.Sleep(200 * time.Millisecond)
		store.Put(ctx, s.Store(), cachelayout.NarinfoKey(out), strings.NewReader("StorePath: "+out+"\n"))
	}()
	if err := s.WaitPublished(wctx, "/nix/store/33333333333333333333333333333333-new.drv", out, time.Now()); err != nil {
		t.Fatalf("a published narinfo: %v", err)
	}
}
