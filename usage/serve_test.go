package usage

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
)

// flaky is a Recorder that fails while down is set.
type flaky struct {
	next Recorder
	mu   sync.Mutex
	down bool
}

func (f *flaky) set(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

func (f *flaky) Record(ctx context.Context, r *Record) error {
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down {
		return errors.New("broker away")
	}
	return f.next.Record(ctx, r)
}

// TestServeMeter: what a cache served is recorded on NATS per reader,
// batched (one record per reader and window, not per request), on Close
// too, and what could not be recorded is sent with the next window.
func TestServeMeter(t *testing.T) {
	_, conn := testqueue.Embedded(t, natsserver.Config{})
	pub, err := NewPublisher(conn)
	if err != nil {
		t.Fatal(err)
	}
	rec := &flaky{next: pub}
	m, err := NewServeMeter(ServeOptions{Tenant: "default", Recorder: rec, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testctx.New(t, time.Minute)
	since := time.Now().Add(-time.Second)
	m.Start(ctx)
	for range 100 {
		m.ObserveServed("alice", 1000)
	}
	m.ObserveServed("", 7)
	// The broker is away for the first flush: nothing is lost.
	rec.set(true)
	if err := m.Flush(ctx); err == nil {
		t.Fatal("flush with the broker away succeeded")
	}
	rec.set(false)
	m.ObserveServed("alice", 24)
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var recs []*Record
	refused, err := Read(ctx, conn, queue.UsageFilter(""), since, func(r *Record) error {
		recs = append(recs, r)
		return nil
	})
	if err != nil || refused != 0 {
		t.Fatalf("read: %v (%d refused)", err, refused)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records, want one per reader: %+v", len(recs), recs)
	}
	rows := sum(recs, ByReader)
	if rows[0].Key != "alice" || rows[0].BytesServed != 100024 || rows[0].Requests != 101 ||
		rows[1].Key != Anonymous || rows[1].BytesServed != 7 || rows[1].Requests != 1 {
		t.Errorf("served: %+v", rows)
	}
	for _, r := range recs {
		if r.Kind != KindServe || r.Tenant != "default" || r.Start.Before(since) || r.End.Before(r.Start) {
			t.Errorf("record %+v", r)
		}
	}
}

// TestServeMeterDropsInvalid: a record Validate refuses (a reader name
// longer than a record holds) is reported once, not kept to fail every
// window after; the other readers' records go.
func TestServeMeterDropsInvalid(t *testing.T) {
	var got []*Record
	rec := recorderFunc(func(_ context.Context, r *Record) error {
		r.Version, r.ID = Version, NewID()
		if err := r.Validate(); err != nil {
			return err
		}
		got = append(got, r)
		return nil
	})
	m, err := NewServeMeter(ServeOptions{Tenant: "default", Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testctx.New(t, time.Minute)
	m.ObserveServed(strings.Repeat("r", maxText+1), 10)
	m.ObserveServed("alice", 5)
	if err := m.Flush(ctx); !errors.Is(err, ErrInvalid) {
		t.Fatalf("flush with an overlong reader: %v", err)
	}
	if err := m.Flush(ctx); err != nil {
		t.Fatalf("the invalid record was kept: %v", err)
	}
	if len(got) != 1 || got[0].Reader != "alice" || got[0].BytesServed != 5 {
		t.Errorf("recorded %+v, want alice's only", got)
	}
}

type recorderFunc func(context.Context, *Record) error

func (f recorderFunc) Record(ctx context.Context, r *Record) error { return f(ctx, r) }
