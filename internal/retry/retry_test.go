package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: time.Second}
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 50: time.Second, 1 << 40: time.Second} {
		if d := p.Delay(n); d != want {
			t.Errorf("Delay(%d) = %v, want %v", n, d, want)
		}
	}
	// Without a cap the doubling stops short of overflowing.
	if d := (Policy{Initial: time.Second}).Delay(200); d <= 0 {
		t.Errorf("uncapped Delay(200) = %v", d)
	}
	if d := (Policy{}).Delay(1 << 40); d != 0 {
		t.Errorf("zero policy: Delay = %v", d)
	}
	p.Jitter = 0.5
	seen := map[time.Duration]bool{}
	for range 200 {
		d := p.Delay(3)
		if d < 200*time.Millisecond || d > 400*time.Millisecond {
			t.Fatalf("Delay(3) with jitter 0.5 = %v, want in [200ms, 400ms]", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Errorf("jitter drew only %d distinct waits in 200", len(seen))
	}
	p.Jitter = 7 // clamped to 1: never negative, never above the wait
	for range 100 {
		if d := p.Delay(5); d < 0 || d > time.Second {
			t.Fatalf("Delay(5) with jitter > 1 = %v", d)
		}
	}
}

var errFlaky = errors.New("flaky")

func TestDoSucceeds(t *testing.T) {
	var retries []int
	p := Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond, OnRetry: func(attempt int, d time.Duration, err error) {
		if !errors.Is(err, errFlaky) || d > 2*time.Millisecond {
			t.Errorf("OnRetry(%d, %v, %v)", attempt, d, err)
		}
		retries = append(retries, attempt)
	}}
	calls := 0
	err := Do(t.Context(), p, func(attempt int) error {
		calls++
		if attempt != calls {
			t.Errorf("attempt %d on call %d", attempt, calls)
		}
		if attempt < 4 {
			return errFlaky
		}
		return nil
	})
	if err != nil || calls != 4 || len(retries) != 3 || retries[2] != 3 {
		t.Fatalf("Do = %v after %d calls, retries %v; want nil after 4 calls, retries [1 2 3]", err, calls, retries)
	}
}

func TestDoStop(t *testing.T) {
	calls := 0
	err := Do(t.Context(), Policy{Initial: time.Millisecond}, func(int) error {
		calls++
		return Stop(errFlaky)
	})
	var s *stopError
	if err != errFlaky || errors.As(err, &s) || calls != 1 {
		t.Fatalf("Do = %#v after %d calls; want errFlaky itself after 1", err, calls)
	}
	if Stop(nil) != nil {
		t.Fatal("Stop(nil) is not nil")
	}
}

func TestDoAttempts(t *testing.T) {
	calls := 0
	err := Do(t.Context(), Policy{Initial: time.Millisecond, Attempts: 3}, func(int) error {
		calls++
		return errFlaky
	})
	if err != errFlaky || calls != 3 {
		t.Fatalf("Do = %v after %d calls; want errFlaky after 3", err, calls)
	}
}

func TestDoMaxElapsed(t *testing.T) {
	start := time.Now()
	calls := 0
	err := Do(t.Context(), Policy{Initial: 20 * time.Millisecond, MaxElapsed: 50 * time.Millisecond}, func(int) error {
		calls++
		return errFlaky
	})
	// Waits of 20 and 40 ms: the second would end past 50 ms.
	if err != errFlaky || calls != 2 {
		t.Fatalf("Do = %v after %d calls; want errFlaky after 2", err, calls)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Do took %v", d)
	}
}

func TestDoContext(t *testing.T) {
	cause := errors.New("shutting down")
	ctx, cancel := context.WithCancelCause(t.Context())
	time.AfterFunc(50*time.Millisecond, func() { cancel(cause) })
	start := time.Now()
	err := Do(ctx, Policy{Initial: time.Hour}, func(int) error { return errFlaky })
	if !errors.Is(err, cause) || !errors.Is(err, errFlaky) {
		t.Fatalf("Do = %v; want both the cause and the last error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Do kept waiting %v after ctx ended", d)
	}
	// A ctx that ended during the attempt wins over a Stop.
	ctx, cancel2 := context.WithTimeout(t.Context(), time.Millisecond)
	defer cancel2()
	err = Do(ctx, Policy{}, func(int) error {
		<-ctx.Done()
		return Stop(errFlaky)
	})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errFlaky) {
		t.Fatalf("Do with ctx ended during the attempt = %v", err)
	}
}

func TestSleep(t *testing.T) {
	if err := Sleep(t.Context(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep on a cancelled ctx = %v", err)
	}
}
