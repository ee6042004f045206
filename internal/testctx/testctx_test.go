package testctx

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	ctx := New(t, time.Hour)
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) < 59*time.Minute {
		t.Fatalf("deadline %v, %v; want an hour from now", dl, ok)
	}
	short := New(t, 10*time.Millisecond)
	select {
	case <-short.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a 10 ms context still running after 5 s")
	}
	if !errors.Is(short.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v", short.Err())
	}
	var inner context.Context
	t.Run("ends with its test", func(t *testing.T) { inner = New(t, time.Hour) })
	if inner.Err() == nil {
		t.Fatal("context of a finished subtest still running")
	}
}
