package cacheclient_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
)

// TestWaitNarinfo: WaitNarinfo returns once the cache serves the narinfo,
// written while it polls; it gives up with the context, naming the last
// answer; an invalid path fails at once.
func TestWaitNarinfo(t *testing.T) {
	c := newTestCache(t)
	cl := c.client(t)
	p := randomStorePath("late")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		time.Sleep(300 * time.Millisecond)
		c.write(t, cachelayout.NarinfoKey(p), []byte("StorePath: "+p+"\n"))
	}()
	start := time.Now()
	if err := cl.WaitNarinfo(ctx, p); err != nil {
		t.Fatalf("narinfo written after 300ms: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("returned after %s, before the narinfo was written", d)
	}

	short, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	err := cl.WaitNarinfo(short, randomStorePath("never"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a narinfo that never comes: %v", err)
	}
	if !strings.Contains(err.Error(), "not in the cache") {
		t.Fatalf("the error does not say what the cache answered: %v", err)
	}

	if err := cl.WaitNarinfo(ctx, "/tmp/not-a-store-path"); !errors.Is(err, cacheclient.ErrInvalidPath) {
		t.Fatalf("invalid path: %v", err)
	}
}
