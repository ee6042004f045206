package queue

import (
	"context"
	"errors"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testnats"
)

// TestPermanentTerminatesOnOldServer: Debian 12's nats-server 2.9.10
// takes a Term with a reason for no outcome, so every rejected result
// stayed pending and was rejected again after each AckWait. On it the
// consumer terminates without the reason.
func TestPermanentTerminatesOnOldServer(t *testing.T) {
	srv := testnats.Start(t, t.TempDir(), "", false)
	c := connect(t, srv.URL)
	if err := c.EnsureStreams(context.Background(), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	publishN(t, c, 1)
	rec := newRecorder()
	consume(t, c, ConsumerOptions{Group: "old", AckWait: time.Second}, func(_ context.Context, d *Delivery) error {
		rec.add(d)
		return Permanent(errors.New("bad signature"))
	})
	waitFor(t, 5*time.Second, "the delivery", func() bool { return rec.total() >= 1 })
	time.Sleep(2500 * time.Millisecond) // past AckWait
	if n := rec.total(); n != 1 {
		t.Errorf("a terminated message was delivered %d times (server %s)", n, c.nc.ConnectedServerVersion())
	}
	if info := consumerInfo(t, c, "old"); info.NumAckPending != 0 {
		t.Errorf("%d ack pending after a Term", info.NumAckPending)
	}
}

func TestTermTakesReason(t *testing.T) {
	for v, want := range map[string]bool{"2.9.10": false, "2.10.3": false, "2.10.4": true, "2.15.2": true, "3.0.0": true, "": true, "dev": true} {
		if got := termTakesReason(v); got != want {
			t.Errorf("termTakesReason(%q) = %v, want %v", v, got, want)
		}
	}
}
