package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/testctx"
)

// recorder collects what a handler saw, safely across workers.
type recorder struct {
	mu   sync.Mutex
	seen map[uint64]int // stream sequence → times handled
	all  []*Delivery
}

func newRecorder() *recorder { return &recorder{seen: make(map[uint64]int)} }

func (r *recorder) add(d *Delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen[d.Stream]++
	r.all = append(r.all, d)
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.all)
}

func (r *recorder) snapshot() (map[uint64]int, []*Delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[uint64]int, len(r.seen))
	for k, v := range r.seen {
		m[k] = v
	}
	return m, append([]*Delivery(nil), r.all...)
}

func consume(t *testing.T, c *Conn, o ConsumerOptions, h Handler) *Consumer {
	t.Helper()
	k, err := c.ConsumeResults(testctx.New(t, 30*time.Second), o, h)
	if err != nil {
		t.Fatalf("ConsumeResults: %v", err)
	}
	t.Cleanup(func() {
		k.Stop()
		<-k.Closed()
	})
	return k
}

func consumerInfo(t *testing.T, c *Conn, group string) *jetstream.ConsumerInfo {
	t.Helper()
	cons, err := c.js.Consumer(testctx.New(t, 30*time.Second), StreamResults, ConsumerPrefix+group)
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(testctx.New(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func stop(t *testing.T, k *Consumer) {
	t.Helper()
	k.Stop()
	select {
	case <-k.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("consumer not closed 5 s after Stop")
	}
}

func TestConsumeAck(t *testing.T) {
	_, c := setup(t)
	r := testResult(1)
	if _, err := c.PublishResult(testctx.New(t, 30*time.Second), r); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	k := consume(t, c, ConsumerOptions{Group: "g1"}, func(ctx context.Context, d *Delivery) error {
		if err := d.InProgress(); err != nil {
			return err
		}
		rec.add(d)
		return nil
	})
	waitFor(t, 5*time.Second, "the delivery", func() bool { return rec.total() == 1 })
	_, all := rec.snapshot()
	d := all[0]
	if d.Subject != "results.t1.x86_64-linux" || d.MsgID != r.MsgID() || d.NumDelivered != 1 || d.Stream != 1 {
		t.Errorf("delivery = %+v", d)
	}
	got, err := DecodeResult(d.Data)
	if err != nil || got.DrvPath != r.DrvPath {
		t.Errorf("data decodes to %+v, %v", got, err)
	}
	// DoubleAck: the ack is confirmed by the time the handler's outcome
	// is sent, so the consumer shows it without waiting.
	waitFor(t, 2*time.Second, "the ack", func() bool {
		info := consumerInfo(t, c, "g1")
		return info.NumAckPending == 0 && info.NumPending == 0 && info.AckFloor.Stream == 1
	})
	stop(t, k)
}

func TestConsumeDuplicateDeliveredOnce(t *testing.T) {
	_, c := setup(t)
	for i, wantDup := range []bool{false, true, true} {
		dup, err := c.PublishResult(testctx.New(t, 30*time.Second), testResult(7))
		if err != nil {
			t.Fatal(err)
		}
		if dup != wantDup {
			t.Errorf("publish %d: duplicate = %v, want %v", i, dup, wantDup)
		}
	}
	publishN(t, c, 1) // a different result after it, as a marker
	rec := newRecorder()
	consume(t, c, ConsumerOptions{Group: "g"}, func(_ context.Context, d *Delivery) error {
		rec.add(d)
		return nil
	})
	waitFor(t, 5*time.Second, "both results", func() bool { return rec.total() >= 2 })
	time.Sleep(200 * time.Millisecond)
	if n := rec.total(); n != 2 {
		t.Errorf("%d deliveries, want 2 (the duplicate must not be stored)", n)
	}
}

// TestConsumeGroups: every group sees every result; within a group, the
// members (here in two connections, as two processes would be) share
// them and none is handled twice.
func TestConsumeGroups(t *testing.T) {
	s, c := setup(t)
	const n = 40
	publishN(t, c, n)
	c2 := connect(t, s.ClientURL())

	groupA, groupB := newRecorder(), newRecorder()
	var perMember [2]atomic.Int32
	member := func(i int) Handler {
		return func(_ context.Context, d *Delivery) error {
			perMember[i].Add(1)
			groupA.add(d)
			time.Sleep(5 * time.Millisecond) // let the other member pull too
			return nil
		}
	}
	consume(t, c, ConsumerOptions{Group: "a"}, member(0))
	consume(t, c2, ConsumerOptions{Group: "a"}, member(1))
	consume(t, c2, ConsumerOptions{Group: "b", Concurrency: 4}, func(_ context.Context, d *Delivery) error {
		groupB.add(d)
		return nil
	})
	waitFor(t, 10*time.Second, "every message in both groups", func() bool {
		return groupA.total() >= n && groupB.total() >= n
	})
	time.Sleep(300 * time.Millisecond) // would-be extra deliveries
	for name, rec := range map[string]*recorder{"a": groupA, "b": groupB} {
		seen, _ := rec.snapshot()
		if len(seen) != n {
			t.Errorf("group %s saw %d distinct messages, want %d", name, len(seen), n)
		}
		for seq, times := range seen {
			if times != 1 {
				t.Errorf("group %s handled message %d %d times", name, seq, times)
			}
		}
	}
	if perMember[0].Load() == 0 || perMember[1].Load() == 0 {
		t.Errorf("members of group a handled %d and %d: the work was not shared", perMember[0].Load(), perMember[1].Load())
	}
}

func TestConsumeOutcomes(t *testing.T) {
	tests := []struct {
		name string
		// fail is the handler's error on the first delivery.
		fail           error
		wantDeliveries int
	}{
		{"success", nil, 1},
		{"permanent", Permanent(errors.New("bad signature")), 1},
		{"permanent wrapped", fmt.Errorf("verify: %w", Permanent(errors.New("bad"))), 1},
		{"transient", errors.New("cache store down"), 2},
		{"deferred", Defer(100 * time.Millisecond), 2},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each waits for redeliveries that must not come
			_, c := setup(t)
			publishN(t, c, 1)
			rec := newRecorder()
			group := fmt.Sprintf("g%d", i)
			// A short AckWait: a message neither acked nor terminated
			// would come back within it.
			consume(t, c, ConsumerOptions{Group: group, AckWait: time.Second}, func(_ context.Context, d *Delivery) error {
				rec.add(d)
				if d.NumDelivered == 1 {
					return tt.fail
				}
				return nil
			})
			waitFor(t, 5*time.Second, "the deliveries", func() bool { return rec.total() >= tt.wantDeliveries })
			time.Sleep(2 * time.Second) // past AckWait and the first redelivery delay
			_, all := rec.snapshot()
			if len(all) != tt.wantDeliveries {
				t.Fatalf("%d deliveries, want %d", len(all), tt.wantDeliveries)
			}
			if last := all[len(all)-1]; last.NumDelivered != uint64(tt.wantDeliveries) {
				t.Errorf("last NumDelivered = %d", last.NumDelivered)
			}
			if info := consumerInfo(t, c, group); info.NumAckPending != 0 || info.NumPending != 0 {
				t.Errorf("consumer: %d ack pending, %d pending", info.NumAckPending, info.NumPending)
			}
		})
	}
}

func TestConsumeConcurrencyLimit(t *testing.T) {
	_, c := setup(t)
	const n, limit = 24, 3
	publishN(t, c, n)
	var running, peak atomic.Int32
	rec := newRecorder()
	consume(t, c, ConsumerOptions{Group: "g", Concurrency: limit}, func(_ context.Context, d *Delivery) error {
		now := running.Add(1)
		defer running.Add(-1)
		for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
		}
		time.Sleep(20 * time.Millisecond)
		rec.add(d)
		return nil
	})
	waitFor(t, 10*time.Second, "all messages", func() bool { return rec.total() == n })
	if p := peak.Load(); p > limit {
		t.Errorf("%d handlers ran at once, limit %d", p, limit)
	} else if p < limit {
		t.Logf("peak concurrency %d (limit %d)", p, limit)
	}
	// Nothing prefetched: the consumer holds no message beyond those
	// being handled.
	if info := consumerInfo(t, c, "g"); info.NumAckPending != 0 {
		t.Errorf("%d messages still unacked", info.NumAckPending)
	}
}

// TestConsumeOnePullForIdleHandlers: the Consumer asks for a message for
// every idle handler in one request, and for no more: while every handler
// is busy, no message waits in the Consumer and no request is made.
func TestConsumeOnePullForIdleHandlers(t *testing.T) {
	_, c := setup(t)
	const n, limit = 20, 8
	publishN(t, c, n)
	var requests atomic.Int32
	sub, err := c.nc.Subscribe("$JS.API.CONSUMER.MSG.NEXT."+StreamResults+"."+ConsumerPrefix+"g", func(*nats.Msg) {
		requests.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	var running atomic.Int32
	release := make(chan struct{})
	rec := newRecorder()
	consume(t, c, ConsumerOptions{Group: "g", Concurrency: limit}, func(_ context.Context, d *Delivery) error {
		running.Add(1)
		<-release
		rec.add(d)
		return nil
	})
	waitFor(t, 10*time.Second, "every handler busy", func() bool { return running.Load() == limit })
	time.Sleep(200 * time.Millisecond) // would-be further requests
	if got := requests.Load(); got != 1 {
		t.Errorf("%d pull requests for %d idle handlers, want 1", got, limit)
	}
	if info := consumerInfo(t, c, "g"); info.NumAckPending != limit {
		t.Errorf("%d messages delivered to %d busy handlers", info.NumAckPending, limit)
	}
	close(release)
	waitFor(t, 10*time.Second, "all messages", func() bool { return rec.total() == n })
	if got := requests.Load(); got >= n {
		t.Errorf("%d pull requests for %d messages", got, n)
	}
}

// TestConsumeStop: Stop cancels running handlers, releases their message
// for another member at once, and leaves no goroutine behind.
func TestConsumeStop(t *testing.T) {
	_, c := setup(t)
	publishN(t, c, 1)
	started := make(chan struct{})
	var handlerErr atomic.Value
	k, err := c.ConsumeResults(context.Background(), ConsumerOptions{Group: "g", Concurrency: 2}, func(ctx context.Context, d *Delivery) error {
		close(started)
		<-ctx.Done()
		handlerErr.Store(ctx.Err())
		return ctx.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	// Control: the leak check below sees a running Consumer.
	if n := len(consumerGoroutines()); n < 3 {
		t.Fatalf("%d consumer goroutines found while running, want workers and watchers", n)
	}
	start := time.Now()
	stop(t, k)
	if got, _ := handlerErr.Load().(error); !errors.Is(got, context.Canceled) {
		t.Errorf("handler ctx: %v, want cancelled", got)
	}
	checkGoroutines(t)

	// The message is available again long before the 60 s AckWait.
	rec := newRecorder()
	consume(t, c, ConsumerOptions{Group: "g"}, func(_ context.Context, d *Delivery) error {
		rec.add(d)
		return nil
	})
	waitFor(t, 5*time.Second, "the redelivery", func() bool { return rec.total() == 1 })
	if _, all := rec.snapshot(); all[0].NumDelivered != 2 {
		t.Errorf("NumDelivered = %d, want 2", all[0].NumDelivered)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("redelivered after %s", d)
	}
}

// TestConsumeDrain: Drain stops pulling but lets the running handler
// finish with a live ctx, and its outcome is acked.
func TestConsumeDrain(t *testing.T) {
	_, c := setup(t)
	publishN(t, c, 3)
	started := make(chan struct{}, 3)
	release := make(chan struct{})
	var handled atomic.Int32
	var ctxErr atomic.Value
	k, err := c.ConsumeResults(context.Background(), ConsumerOptions{Group: "g"}, func(ctx context.Context, d *Delivery) error {
		started <- struct{}{}
		<-release
		if ctx.Err() != nil {
			ctxErr.Store(ctx.Err())
		}
		handled.Add(1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	k.Drain()
	select {
	case <-k.Closed():
		t.Fatal("closed while a handler runs")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case <-k.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("not closed after the handler returned")
	}
	if got := ctxErr.Load(); got != nil {
		t.Errorf("handler ctx cancelled by Drain: %v", got)
	}
	if n := handled.Load(); n != 1 {
		t.Errorf("%d handled, want 1 (no pulling after Drain)", n)
	}
	info := consumerInfo(t, c, "g")
	if info.NumAckPending != 0 || info.NumPending != 2 || info.AckFloor.Stream != 1 {
		t.Errorf("consumer: ack floor %d, %d ack pending, %d pending", info.AckFloor.Stream, info.NumAckPending, info.NumPending)
	}
	checkGoroutines(t)
}

func TestConsumeEnds(t *testing.T) {
	tests := []struct {
		name string
		end  func(cancel context.CancelFunc, c *Conn)
	}{
		{"ctx cancelled", func(cancel context.CancelFunc, _ *Conn) { cancel() }},
		{"connection closed", func(_ context.CancelFunc, c *Conn) { c.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, c := setup(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			k, err := c.ConsumeResults(ctx, ConsumerOptions{Group: "g", Concurrency: 3}, func(context.Context, *Delivery) error { return nil })
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // let the workers pull
			tt.end(cancel, c)
			select {
			case <-k.Closed():
			case <-time.After(5 * time.Second):
				t.Fatal("consumer still running")
			}
			checkGoroutines(t)
		})
	}
}

func TestConsumerOptions(t *testing.T) {
	tests := []struct {
		name    string
		o       ConsumerOptions
		wantErr error
	}{
		{"no group", ConsumerOptions{}, ErrInvalidName},
		{"dotted group", ConsumerOptions{Group: "a.b"}, ErrInvalidName},
		{"wildcard group", ConsumerOptions{Group: "a*"}, ErrInvalidName},
		{"slash group", ConsumerOptions{Group: "a/b"}, ErrInvalidName},
		{"short ack wait", ConsumerOptions{Group: "g", AckWait: time.Millisecond}, nil},
		{"bad max deliver", ConsumerOptions{Group: "g", MaxDeliver: -2}, nil},
		{"negative concurrency", ConsumerOptions{Group: "g", Concurrency: -1}, nil},
		{"negative max ack pending", ConsumerOptions{Group: "g", MaxAckPending: -1}, nil},
		{"huge concurrency", ConsumerOptions{Group: "g", Concurrency: maxConcurrency + 1}, nil},
	}
	c := &Conn{} // never reaches the server
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.ConsumeResults(context.Background(), tt.o, func(context.Context, *Delivery) error { return nil })
			if err == nil {
				t.Fatal("accepted")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
	o := ConsumerOptions{Group: "g"}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	want := ConsumerOptions{Group: "g", FilterSubject: "results.>", AckWait: DefaultAckWait, MaxDeliver: -1, MaxAckPending: DefaultMaxAckPending, Concurrency: 1}
	if o != want {
		t.Errorf("defaults = %+v, want %+v", o, want)
	}
	if _, err := c.ConsumeResults(context.Background(), o, nil); err == nil {
		t.Error("nil handler accepted")
	}
}

func TestConsumeFilterAndMaxDeliver(t *testing.T) {
	_, c := setup(t)
	r := testResult(1)
	r.Tenant = "t2"
	if _, err := c.PublishResult(testctx.New(t, 30*time.Second), r); err != nil {
		t.Fatal(err)
	}
	publishN(t, c, 2) // tenant t1
	rec := newRecorder()
	consume(t, c, ConsumerOptions{Group: "only-t2", FilterSubject: ResultsFilter("t2"), MaxDeliver: 2, AckWait: time.Second},
		func(_ context.Context, d *Delivery) error {
			rec.add(d)
			return errors.New("always failing")
		})
	waitFor(t, 5*time.Second, "two deliveries", func() bool { return rec.total() == 2 })
	time.Sleep(2500 * time.Millisecond)
	seen, all := rec.snapshot()
	if len(all) != 2 || len(seen) != 1 {
		t.Fatalf("%d deliveries of %d messages, want 2 of 1 (MaxDeliver 2, tenant t2 only)", len(all), len(seen))
	}
	if all[0].Subject != "results.t2.x86_64-linux" {
		t.Errorf("subject %s", all[0].Subject)
	}
}

func TestRedeliveryDelay(t *testing.T) {
	tests := []struct {
		n    uint64
		want time.Duration
	}{
		{0, time.Second}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second},
		{5, 16 * time.Second}, {6, 30 * time.Second}, {7, 30 * time.Second}, {1 << 40, 30 * time.Second},
	}
	for _, tt := range tests {
		if got := redeliveryDelay(tt.n); got != tt.want {
			t.Errorf("redeliveryDelay(%d) = %s, want %s", tt.n, got, tt.want)
		}
	}
}

func TestPermanent(t *testing.T) {
	base := errors.New("bad bundle")
	tests := []struct {
		name string
		err  error
		perm bool
		base bool
	}{
		{"nil", Permanent(nil), false, false},
		{"wrapped", Permanent(base), true, true},
		{"wrapped twice", Permanent(Permanent(base)), true, true},
		{"inside context", fmt.Errorf("verify: %w", Permanent(base)), true, true},
		{"plain", base, false, true},
		{"sentinel itself", fmt.Errorf("x: %w", ErrPermanent), true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := errors.Is(tt.err, ErrPermanent); got != tt.perm {
				t.Errorf("Is ErrPermanent = %v", got)
			}
			if got := errors.Is(tt.err, base); got != tt.base {
				t.Errorf("Is base = %v", got)
			}
		})
	}
	if Permanent(base).Error() != "bad bundle" {
		t.Errorf("message = %q", Permanent(base).Error())
	}
}

func TestDeliveryInProgressOutsideConsumer(t *testing.T) {
	if err := (&Delivery{}).InProgress(); err == nil {
		t.Error("InProgress on a bare Delivery succeeded")
	}
}

// TestReleaseDeliveries: deliveries a dead member took and never acked
// are handed out again at once after ReleaseDeliveries, not after the
// minute of AckWait.
func TestReleaseDeliveries(t *testing.T) {
	_, c := setup(t)
	ctx := testctx.New(t, 30*time.Second)
	if n, err := c.ReleaseDeliveries(ctx, "nobody"); n != 0 || err != nil {
		t.Fatalf("ReleaseDeliveries of a group without consumer = %d, %v", n, err)
	}
	if _, err := c.ReleaseDeliveries(ctx, "a.b"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("ReleaseDeliveries of an invalid group: %v", err)
	}
	// Create the group's consumer, idle.
	stop(t, consume(t, c, ConsumerOptions{Group: "g"}, func(context.Context, *Delivery) error { return nil }))
	if n, err := c.ReleaseDeliveries(ctx, "g"); n != 0 || err != nil {
		t.Fatalf("ReleaseDeliveries with nothing pending = %d, %v", n, err)
	}
	publishN(t, c, 3)
	// A member takes two results and dies without a word.
	cons, err := c.js.Consumer(ctx, StreamResults, ConsumerPrefix+"g")
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(10*time.Second)) // not NoWait: under load the consumer may not have them yet
	if err != nil {
		t.Fatal(err)
	}
	taken := 0
	for range batch.Messages() {
		taken++
	}
	if taken != 2 || consumerInfo(t, c, "g").NumAckPending != 2 {
		t.Fatalf("took %d deliveries, %d pending", taken, consumerInfo(t, c, "g").NumAckPending)
	}

	if n, err := c.ReleaseDeliveries(ctx, "g"); n != 2 || err != nil {
		t.Fatalf("ReleaseDeliveries = %d, %v; want 2", n, err)
	}
	rec := newRecorder()
	start := time.Now()
	k := consume(t, c, ConsumerOptions{Group: "g"}, func(_ context.Context, d *Delivery) error {
		rec.add(d)
		return nil
	})
	waitFor(t, DefaultAckWait/4, "all three results", func() bool {
		seen, _ := rec.snapshot()
		return len(seen) == 3
	})
	if d := time.Since(start); d > DefaultAckWait/4 {
		t.Fatalf("released deliveries came back after %s", d)
	}
	waitFor(t, 5*time.Second, "the acks", func() bool {
		info := consumerInfo(t, c, "g")
		return info.NumAckPending == 0 && info.NumPending == 0
	})
	stop(t, k)
}

// TestConsumeDefer: a deferred message comes back after the deferral's
// delay, not the failure backoff (1 s), and the consumer's window of
// messages awaiting an ack is DefaultMaxAckPending, not the server's
// 1,000 that a thousand deferred or failing messages would fill.
func TestConsumeDefer(t *testing.T) {
	_, c := setup(t)
	publishN(t, c, 1)
	var mu sync.Mutex
	var times []time.Time
	consume(t, c, ConsumerOptions{Group: "d"}, func(_ context.Context, d *Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		times = append(times, time.Now())
		if d.NumDelivered == 1 {
			return Defer(50 * time.Millisecond)
		}
		return nil
	})
	waitFor(t, 5*time.Second, "the redelivery", func() bool { mu.Lock(); defer mu.Unlock(); return len(times) == 2 })
	if gap := times[1].Sub(times[0]); gap > 700*time.Millisecond {
		t.Errorf("deferred for 50ms, redelivered after %s", gap)
	}
	if got := consumerInfo(t, c, "d").Config.MaxAckPending; got != DefaultMaxAckPending {
		t.Errorf("MaxAckPending %d, want %d", got, DefaultMaxAckPending)
	}
}
