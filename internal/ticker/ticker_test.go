package ticker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestEvery(t *testing.T) {
	var n atomic.Int32
	stop := Every(context.Background(), 5*time.Millisecond, func(context.Context) bool { return n.Add(1) < 3 })
	for deadline := time.Now().Add(10 * time.Second); n.Load() < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("f was not called three times")
		}
	}
	time.Sleep(30 * time.Millisecond)
	if got := n.Load(); got != 3 {
		t.Errorf("f called %d times after it returned false", got)
	}
	stop()
	stop() // twice is fine

	var m atomic.Int32
	stop = Every(context.Background(), time.Millisecond, func(context.Context) bool { m.Add(1); return true })
	time.Sleep(20 * time.Millisecond)
	stop()
	after := m.Load()
	if after == 0 {
		t.Error("f never called")
	}
	time.Sleep(20 * time.Millisecond)
	if m.Load() != after {
		t.Error("f called after stop returned")
	}
}
