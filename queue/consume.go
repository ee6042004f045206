package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/retry"
	"codeberg.org/provenix/provenix/internal/ticker"
)

const (
	// DefaultAckWait is how long a delivery may go without an ack or
	// InProgress before the server redelivers it.
	DefaultAckWait = 60 * time.Second
	// ConsumerPrefix prefixes a pusher group's durable consumer name.
	ConsumerPrefix = "pusher-"

	// redeliveryBase and redeliveryMax shape the delay before a failed
	// delivery is retried: 1 s, 2 s, 4 s, ... capped at 30 s.
	redeliveryBase = time.Second
	redeliveryMax  = 30 * time.Second
	// maxConcurrency bounds ConsumerOptions.Concurrency: each handler
	// holds one message (a result is at most MaxResultSize), so the
	// bound is on the memory of a Consumer. The handlers share one pull
	// request, so the server's limit on requests waiting at a consumer
	// (max_waiting, 512) no longer bounds them.
	maxConcurrency = 1024
	// pullExpiry is how long one pull request waits for a message.
	pullExpiry = 30 * time.Second
	// DefaultMaxAckPending is ConsumerOptions.MaxAckPending's default.
	// The server keeps a few dozen bytes per pending message.
	DefaultMaxAckPending = 100_000
	// consumerSetup bounds the retries of creating a consumer (when the
	// caller's ctx has no deadline).
	consumerSetup = 30 * time.Second
	// maxTermReason bounds the handler error text sent with a Term (it
	// ends up in an advisory).
	maxTermReason = 512
)

// Delivery is one delivery of a message (a result, a rebuild request) to a
// Handler.
type Delivery struct {
	Subject string
	Data    []byte
	// MsgID is the message's Nats-Msg-Id header (Result.MsgID when the
	// publisher used PublishResult).
	MsgID string
	// NumDelivered counts deliveries of this message to this group, 1 on
	// the first one.
	NumDelivered uint64
	// Stream is the message's sequence number in its stream (RESULTS, or
	// REBUILD for ConsumeRebuilds).
	Stream uint64
	// Stored is when the server stored the message (its clock, not the
	// publisher's word).
	Stored time.Time
	// AckWait is the consumer's: the message goes to another member once
	// it passes without an ack or InProgress. A member that could not
	// set it (a tenant's runner, on a consumer provided by the
	// publisher) learns it here.
	AckWait time.Duration

	inProgress func() error
}

// InProgress tells the server the handler is still working, which resets
// the AckWait timer. Long handlers (pushing a multi-GiB NAR) must call it
// more often than AckWait, or the message is redelivered to another
// member of the group while they still work on it.
func (d *Delivery) InProgress() error {
	if d.inProgress == nil {
		return errors.New("queue: in progress: delivery not from a consumer")
	}
	if err := d.inProgress(); err != nil {
		return fmt.Errorf("queue: in progress %d: %w", d.Stream, err)
	}
	return nil
}

// AckWaitWithin is the shorter of own (the AckWait a member asked for)
// and the consumer's: what a handler must heartbeat within. A member
// that may not set the consumer (a tenant's runner) uses it as its
// publisher provided it.
func (d *Delivery) AckWaitWithin(own time.Duration) time.Duration {
	return min(own, cmp.Or(d.AckWait, own))
}

// KeepAlive calls InProgress every interval until the returned stop is
// called (stop waits for the heartbeat goroutine to end). A failed
// heartbeat goes to onErr, when set: losing one only risks a redelivery.
func (d *Delivery) KeepAlive(ctx context.Context, interval time.Duration, onErr func(error)) (stop func()) {
	return ticker.Every(ctx, interval, func(context.Context) bool {
		if err := d.InProgress(); err != nil && onErr != nil {
			onErr(err)
		}
		return true
	})
}

// Handler processes one delivery. Its outcome decides the message's fate:
//   - nil: acked, and the ack confirmed by the server (a lost ack would
//     mean a redelivery, so handlers must be idempotent anyway);
//   - an error wrapping ErrPermanent (see Permanent): terminated, never
//     redelivered to this group;
//   - an error from Defer: released, redelivered after its delay, logged
//     as nothing (it is scheduling, not a failure);
//   - any other error: redelivered after a delay growing with
//     NumDelivered (1 s, 2 s, 4 s, ... capped at 30 s). When the handler's
//     ctx was cancelled by Stop, the message is released at once instead,
//     for another member of the group.
type Handler func(ctx context.Context, d *Delivery) error

// ConsumerOptions configures ConsumeResults (and ConsumeRebuilds, whose
// differences its doc lists).
type ConsumerOptions struct {
	// Group names the pusher group: its durable consumer is
	// ConsumerPrefix+Group. Every group sees every result; the members
	// (Consumers with the same Group, in any process) share them, each
	// result going to one member. Required; must pass ValidToken.
	Group string
	// FilterSubject selects the results; ResultsFilter("") (all tenants)
	// when empty. All members of a group must use the same filter: it is
	// a property of the group's consumer, and the last one set wins.
	FilterSubject string
	// AckWait is how long a delivery may go without an ack or InProgress;
	// DefaultAckWait when 0.
	AckWait time.Duration
	// MaxDeliver caps deliveries per message; 0 or -1 means unlimited,
	// the default. A cache that gave up on a result after a few failures
	// during an outage of its store would silently miss it (messages past
	// MaxDeliver stay in the stream but are never delivered again to this
	// group); a result that can never succeed should fail with Permanent.
	MaxDeliver int
	// MaxAckPending bounds the messages of the group delivered and not
	// yet acked or terminated, including those released for a later
	// redelivery (a failure's backoff, a Defer); DefaultMaxAckPending
	// when 0. The server stops delivering when it is reached, so it must
	// be far above what one sender can make wait: with the server's
	// default of 1,000, a thousand results retried with backoff stopped
	// every other result.
	MaxAckPending int
	// Concurrency is how many handlers run at once in this Consumer; 1
	// when 0. Each running handler holds exactly one message: a pull
	// asks for one message per idle handler and nothing more, so no
	// message waits in a client buffer while its AckWait runs, and idle
	// members of the group get the work.
	Concurrency int
}

func (o *ConsumerOptions) validate() error {
	if err := ValidToken(o.Group); err != nil {
		return fmt.Errorf("group: %w", err)
	}
	if strings.ContainsAny(o.Group, `/\`) {
		// The server stores a durable consumer under its name on disk.
		return fmt.Errorf("group: %w: %q contains a path separator", ErrInvalidName, o.Group)
	}
	if o.FilterSubject == "" {
		o.FilterSubject = ResultsFilter("")
	}
	return o.validateLimits()
}

// validateLimits checks and defaults what every kind of consumer has.
func (o *ConsumerOptions) validateLimits() error {
	if o.AckWait == 0 {
		o.AckWait = DefaultAckWait
	}
	if o.AckWait < time.Second {
		return fmt.Errorf("AckWait %s below 1s", o.AckWait)
	}
	if o.MaxDeliver == 0 {
		o.MaxDeliver = -1
	}
	if o.MaxDeliver < -1 {
		return fmt.Errorf("MaxDeliver %d: want -1 (unlimited) or a positive count", o.MaxDeliver)
	}
	if o.MaxAckPending == 0 {
		o.MaxAckPending = DefaultMaxAckPending
	}
	if o.MaxAckPending < 0 {
		return fmt.Errorf("MaxAckPending %d: want a positive count", o.MaxAckPending)
	}
	if o.Concurrency == 0 {
		o.Concurrency = 1
	}
	if o.Concurrency < 0 || o.Concurrency > maxConcurrency {
		return fmt.Errorf("Concurrency %d not in 1..%d", o.Concurrency, maxConcurrency)
	}
	return nil
}

// consumerConfig is the durable consumer durable of o (validated): on
// FilterSubject from the stream's first message, with explicit acks and
// o's limits.
func (o *ConsumerOptions) consumerConfig(durable, description string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   description,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: o.FilterSubject,
		AckWait:       o.AckWait,
		MaxDeliver:    o.MaxDeliver,
		MaxAckPending: o.MaxAckPending,
	}
}

// Consumer is a running ConsumeResults or ConsumeRebuilds. Stop or Drain
// end it; Closed reports when it has.
type Consumer struct {
	stop   context.CancelFunc // cancels the handlers' ctx, and pulling
	drain  context.CancelFunc // cancels pulling only
	closed chan struct{}
}

// Stop stops pulling and cancels the running handlers' ctx. It does not
// wait: receive from Closed for that. Messages whose handler returned an
// error because of the cancellation are released for redelivery at once.
func (k *Consumer) Stop() { k.stop() }

// Drain stops pulling and lets the running handlers finish; their outcome
// is acked as usual. It does not wait: receive from Closed for that.
func (k *Consumer) Drain() { k.drain() }

// Closed is closed once pulling has stopped and every handler returned and
// had its outcome sent to the server. A Consumer also ends by itself when
// the ctx given to ConsumeResults ends or the connection is closed.
func (k *Consumer) Closed() <-chan struct{} { return k.closed }

// ConsumeResults creates or updates the group's durable pull consumer on
// RESULTS (explicit acks, from the first message kept) and runs h on its
// messages with o.Concurrency workers. h gets a ctx derived from ctx and
// cancelled by Stop.
//
// The Consumer asks the server, in one request at a time, for as many
// messages as it has idle handlers, so it never holds more than
// Concurrency messages. A message received in the instant Stop or Drain
// is called is released (nak) unhandled; one in flight on the wire at
// that moment is redelivered after AckWait.
func (c *Conn) ConsumeResults(ctx context.Context, o ConsumerOptions, h Handler) (*Consumer, error) {
	if h == nil {
		return nil, errors.New("queue: consume results: nil handler")
	}
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("queue: consume results: %w", err)
	}
	want := o.consumerConfig(ConsumerPrefix+o.Group, "Provenix pusher group "+o.Group)
	k, err := c.consume(ctx, StreamResults, want, o.Concurrency, c.log.With(logKeyGroup, o.Group), h, false)
	if err != nil {
		return nil, fmt.Errorf("queue: consume results: %w", err)
	}
	return k, nil
}

// consume creates or updates the durable pull consumer want on stream,
// checks the server kept its settings, and runs h on its messages with
// concurrency workers.
//
// With bind, an account that may not create or update the consumer (a
// tenant's runner, on a work queue's shared consumer: one that could
// would set it to stall every request of its subject for everyone) uses
// it as it is, settings included, once it checks that it is the one
// want names; ErrNoConsumer when it does not exist yet (its publisher provides it:
// provideForPublish).
func (c *Conn) consume(ctx context.Context, stream string, want jetstream.ConsumerConfig, concurrency int, log *slog.Logger, h Handler, bind bool) (*Consumer, error) {
	name := want.Durable
	// A consumer the account's permissions do not allow (another
	// tenant's filter, a role that may not consume) fails at once. One
	// that gets no answer is asked again for up to consumerSetup: a
	// member restarted just after a cluster election meets a meta leader
	// that leaves the first requests unanswered, and must not exit for it.
	sctx, scancel := withDefaultTimeout(ctx, consumerSetup)
	defer scancel()
	var cons jetstream.Consumer
	retries := connectRetry
	retries.OnRetry = func(_ int, _ time.Duration, err error) {
		log.Warn("queue: consumer not set up yet, retrying", logKeyErr, err)
	}
	err := retry.Do(sctx, retries, func(int) error {
		cctx, cancel := context.WithTimeout(sctx, DefaultTimeout)
		defer cancel()
		err := c.denyAware(cctx, jsAPIFor(stream, name), func(ctx context.Context) (err error) {
			cons, err = c.js.CreateOrUpdateConsumer(ctx, stream, want)
			return err
		})
		if err != nil && !retryable(err) {
			return retry.Stop(err)
		}
		return err
	})
	switch {
	case bind && errors.Is(err, ErrPermissionDenied):
		if cons, err = c.existingConsumer(sctx, stream, name); err != nil {
			return nil, fmt.Errorf("consumer %s: %w", name, err)
		}
		if got := cons.CachedInfo().Config; got.AckPolicy != want.AckPolicy || got.FilterSubject != want.FilterSubject {
			return nil, fmt.Errorf("consumer %s: ack %v, filter %q: not the consumer of %q", name, got.AckPolicy, got.FilterSubject, want.FilterSubject)
		}
	case err != nil:
		return nil, fmt.Errorf("consumer %s: %w", name, mapJSError(err))
	default:
		if got := cons.CachedInfo().Config; got.AckPolicy != want.AckPolicy || got.FilterSubject != want.FilterSubject ||
			got.AckWait != want.AckWait || got.MaxDeliver != want.MaxDeliver ||
			(want.MaxAckPending != 0 && got.MaxAckPending != want.MaxAckPending) {
			return nil, fmt.Errorf("consumer %s: %w: ack %v/%v, filter %q, ack wait %s, max deliver %d, max ack pending %d",
				name, ErrConfigDropped, got.AckPolicy, want.AckPolicy, got.FilterSubject, got.AckWait, got.MaxDeliver, got.MaxAckPending)
		}
	}

	handlerCtx, stop := context.WithCancel(ctx)
	pullCtx, drain := context.WithCancel(handlerCtx)
	k := &Consumer{stop: stop, drain: drain, closed: make(chan struct{})}
	w := &worker{cons: cons, h: h, log: log, termReason: termTakesReason(c.nc.ConnectedServerVersion()),
		ackWait: cons.CachedInfo().Config.AckWait}
	go func() {
		w.run(pullCtx, handlerCtx, concurrency)
		stop() // release the contexts
		close(k.closed)
	}()
	// A pull in progress does not notice a closed connection before its
	// 30 s expiry; stop at once instead.
	go func() {
		select {
		case <-c.done:
			stop()
		case <-k.closed:
		}
	}()
	return k, nil
}

type worker struct {
	cons jetstream.Consumer
	h    Handler
	log  *slog.Logger
	// termReason: the server understands a Term with a reason. Older
	// ones (Debian 12's nats-server 2.9.10) take "+TERM reason" for no
	// outcome at all: the message stays pending and comes back after
	// AckWait, to be rejected again, forever.
	termReason bool
	// pulls is 1 while the Consumer's pull request is in flight.
	pulls atomic.Int32
	// ackWait is the consumer's (Delivery.AckWait).
	ackWait time.Duration
}

// release naks a message we are not going to handle because we stop. It
// first waits (briefly) for the Consumer's pull to end: its request stays
// registered on the server until its inbox is unsubscribed, and a message
// released before that would be delivered to a dead inbox and wait out
// its AckWait instead of going to another member now.
func (w *worker) release(msg jetstream.Msg) error {
	for i := 0; i < 200 && w.pulls.Load() > 0; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	return msg.Nak()
}

// run runs concurrency handlers and pulls their messages until pullCtx
// ends, then waits for the handlers to return.
func (w *worker) run(pullCtx, handlerCtx context.Context, concurrency int) {
	// idle holds a token for each handler without a message: a pull asks
	// for as many messages as it takes tokens, so each message it gets
	// has a handler waiting for it.
	idle := make(chan struct{}, concurrency)
	work := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range concurrency {
		idle <- struct{}{}
		wg.Go(func() {
			for msg := range work {
				w.handle(handlerCtx, msg)
				idle <- struct{}{}
			}
		})
	}
	w.pull(pullCtx, idle, work)
	close(work)
	wg.Wait()
}

// pull asks the server for a message for every idle handler, in one
// request, and hands out what arrives, until ctx ends. One request per
// round instead of one per handler: fewer requests for the server to
// serve, and no bound on the handlers from the server's limit on the
// requests waiting at a consumer (max_waiting).
func (w *worker) pull(ctx context.Context, idle chan struct{}, work chan<- jetstream.Msg) {
	failures := 0
	for {
		select {
		case <-idle:
		case <-ctx.Done():
			return
		}
		if ctx.Err() != nil {
			// Both were ready and select took the token: a pull now
			// would go out on a cancelled context, and what the server
			// sent it would wait out its AckWait at a dead inbox.
			return
		}
		n := 1
	take:
		for {
			select {
			case <-idle:
				n++
			default:
				break take
			}
		}
		// A long poll: the server holds the request up to pullExpiry and
		// heartbeats it, so a lost connection shows up as an error. The
		// expiry is bounded even when ctx has a far deadline: an
		// abandoned request must not linger on the server. The request
		// ends once n messages came.
		fctx, cancel := context.WithTimeout(ctx, pullExpiry)
		w.pulls.Add(1)
		got := 0
		var late []jetstream.Msg
		batch, err := w.cons.Fetch(n, jetstream.FetchContext(fctx))
		if err == nil {
			for msg := range batch.Messages() {
				got++
				if ctx.Err() != nil {
					late = append(late, msg) // stopping: let another member have it now
					continue
				}
				work <- msg
			}
			err = batch.Error()
		}
		w.pulls.Add(-1)
		cancel()
		for range n - got {
			idle <- struct{}{}
		}
		for _, msg := range late {
			_ = w.release(msg)
		}
		if err == nil {
			failures = 0
			continue
		}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
			failures = 0 // the poll expired
			continue
		case errors.Is(err, nats.ErrConnectionClosed):
			w.log.Warn("queue: consumer stops: connection closed")
			return
		}
		w.log.Warn("queue: pull failed, retrying", logKeyErr, err)
		_ = retry.Sleep(ctx, backoff(failures))
		failures++
	}
}

func (w *worker) handle(ctx context.Context, msg jetstream.Msg) {
	md, err := msg.Metadata()
	if err != nil {
		// Not a JetStream delivery: nothing to ack.
		w.log.Warn("queue: delivery without metadata", logKeySubject, msg.Subject(), logKeyErr, err)
		return
	}
	d := &Delivery{
		Subject:      msg.Subject(),
		Data:         msg.Data(),
		MsgID:        msg.Headers().Get(jetstream.MsgIDHeader),
		NumDelivered: md.NumDelivered,
		Stream:       md.Sequence.Stream,
		Stored:       md.Timestamp,
		AckWait:      w.ackWait,
		inProgress:   msg.InProgress,
	}
	herr := w.h(ctx, d)

	// The outcome must reach the server even when ctx was cancelled.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultTimeout)
	defer cancel()
	var aerr error
	var deferred *deferError
	switch {
	case herr == nil:
		aerr = msg.DoubleAck(actx)
	case errors.As(herr, &deferred):
		aerr = msg.NakWithDelay(deferred.delay)
	case errors.Is(herr, ErrPermanent):
		if w.termReason {
			aerr = msg.TermWithReason(truncate(herr.Error(), maxTermReason))
		} else {
			aerr = msg.Term()
		}
	case ctx.Err() != nil:
		aerr = w.release(msg)
	default:
		w.log.Debug("queue: handler failed, will retry", logKeySubject, d.Subject, logKeyErr, herr)
		aerr = msg.NakWithDelay(redeliveryDelay(md.NumDelivered))
	}
	if aerr != nil {
		// Without the ack the server redelivers after AckWait.
		w.log.Warn("queue: sending the handler's outcome failed", logKeySubject, d.Subject, logKeyErr, aerr)
	}
}

// redeliveryDelay is the delay before redelivering a message that failed
// on its n-th delivery.
func redeliveryDelay(n uint64) time.Duration {
	if n < 1 {
		n = 1
	}
	if n > 6 {
		return redeliveryMax
	}
	return min(redeliveryBase<<(n-1), redeliveryMax)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// ReleaseDeliveries makes the deliveries of group's consumer that still
// await an ack available again at once, instead of after their AckWait, by
// resetting the consumer to its ack floor. It returns how many were
// waiting; with none it changes nothing. An absent consumer is not an
// error (0, nil): a group that never consumed has nothing to release.
//
// Why: a pusher killed mid-push leaves its delivery pending on the server,
// and the server redelivers it only once AckWait (a minute by default) has
// passed since it was handed out, even across a server restart. An
// embedded server restarted with its process knows that no member of the
// group from before the restart can still be working, so it can release
// them now.
//
// Use it only when no member of the group can be working: one still
// working would see its message delivered a second time. Messages acked
// out of order above the ack floor are delivered again too. Both are safe
// for idempotent handlers, which every Handler must be. Needs a server
// with the consumer reset API (nats-server 2.14 or later).
func (c *Conn) ReleaseDeliveries(ctx context.Context, group string) (int, error) {
	if err := ValidToken(group); err != nil {
		return 0, fmt.Errorf("queue: release deliveries: group: %w", err)
	}
	ctx, cancel := withDefaultTimeout(ctx, DefaultTimeout)
	defer cancel()
	name := ConsumerPrefix + group
	cons, err := c.js.Consumer(ctx, StreamResults, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("queue: release deliveries of %s: %w", name, mapJSError(err))
	}
	info := cons.CachedInfo()
	if info.NumAckPending == 0 {
		return 0, nil
	}
	if _, err := c.js.ResetConsumer(ctx, StreamResults, name); err != nil {
		return 0, fmt.Errorf("queue: release deliveries of %s: %w", name, mapJSError(err))
	}
	return info.NumAckPending, nil
}

// termTakesReason reports whether a server of version v (as it says in
// its INFO, "2.9.10") understands a Term with a reason: nats-server
// 2.10.4 and later. An unparsable version is taken as a new server.
func termTakesReason(v string) bool {
	var major, minor, patch int
	if _, err := fmt.Sscanf(v, "%d.%d.%d", &major, &minor, &patch); err != nil {
		return true
	}
	switch {
	case major != 2:
		return major > 2
	case minor != 10:
		return minor > 10
	default:
		return patch >= 4
	}
}

// existingConsumer looks up stream's consumer name; ErrNoConsumer when
// there is none.
func (c *Conn) existingConsumer(ctx context.Context, stream, name string) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	defer cancel()
	var cons jetstream.Consumer
	err := c.denyAware(ctx, jsAPIFor(stream, name), func(ctx context.Context) (err error) {
		cons, err = c.js.Consumer(ctx, stream, name)
		return err
	})
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, ErrNoConsumer
	}
	if err != nil {
		return nil, mapJSError(err)
	}
	return cons, nil
}

// provideEvery is how often a publisher makes sure again that a
// consumer it provided is there (someone may have deleted it).
const provideEvery = 10 * time.Minute

// errCodeConsumerNotUnique is the server's "filtered consumer not unique
// on workqueue stream" (JSConsumerWQConsumerNotUniqueErr): another
// consumer takes the subject.
const errCodeConsumerNotUnique jetstream.ErrorCode = 10100

// provideConsumer creates stream's consumer want unless it exists (then
// repairConsumer), and then trusts it is there for provideEvery.
func (c *Conn) provideConsumer(ctx context.Context, stream string, want jetstream.ConsumerConfig) error {
	if at, ok := c.provided.Load(want.Durable); ok && time.Since(at.(time.Time)) < provideEvery {
		return nil
	}
	ctx, cancel := withDefaultTimeout(ctx, DefaultTimeout)
	defer cancel()
	err := c.denyAware(ctx, jsAPIFor(stream, want.Durable), func(ctx context.Context) error {
		_, err := c.js.CreateConsumer(ctx, stream, want)
		return err
	})
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
	case errors.Is(err, jetstream.ErrConsumerExists):
		// Made by a member that may set it (an account.conf older than
		// this rule let runners): what could stall its messages goes.
		if err := c.repairConsumer(ctx, stream, want); err != nil {
			return err
		}
	case errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeConsumerNotUnique:
		return fmt.Errorf("queue: consumer %s: another consumer of stream %s takes %s (one not made by Provenix: list them with 'nats consumer ls %s' and remove it): %w",
			want.Durable, stream, want.FilterSubject, stream, err)
	default:
		return fmt.Errorf("queue: consumer %s: %w", want.Durable, mapJSError(err))
	}
	c.provided.Store(want.Durable, time.Now())
	return nil
}

// repairConsumer sets back, on stream's existing consumer want.Durable,
// the settings with which whoever made it could stall its messages for
// everyone: fewer pending or deliveries than want's, back-offs, headers
// only, limits on pull requests, an inactivity threshold (it would be
// deleted), a pause. Its AckWait stays: members that may set it chose it,
// and each member heartbeats by the shorter of its own and the
// consumer's. A consumer whose filter or ack policy is not want's is not
// one Provenix made: an error says to remove it.
func (c *Conn) repairConsumer(ctx context.Context, stream string, want jetstream.ConsumerConfig) error {
	cons, err := c.existingConsumer(ctx, stream, want.Durable)
	if err != nil {
		return fmt.Errorf("queue: consumer %s: %w", want.Durable, err)
	}
	got := cons.CachedInfo().Config
	if got.FilterSubject != want.FilterSubject || got.AckPolicy != want.AckPolicy || got.DeliverPolicy != want.DeliverPolicy {
		return fmt.Errorf("queue: consumer %s of stream %s: filter %q, ack %v, deliver %v: not one Provenix makes for %q (remove it: 'nats consumer rm %s %s')",
			want.Durable, stream, got.FilterSubject, got.AckPolicy, got.DeliverPolicy, want.FilterSubject, stream, want.Durable)
	}
	fixed := got
	if want.MaxAckPending > 0 && got.MaxAckPending < want.MaxAckPending {
		fixed.MaxAckPending = want.MaxAckPending
	}
	if got.MaxDeliver != -1 && (want.MaxDeliver == -1 || got.MaxDeliver < want.MaxDeliver) {
		fixed.MaxDeliver = want.MaxDeliver
	}
	fixed.BackOff, fixed.HeadersOnly, fixed.PauseUntil = nil, false, got.PauseUntil
	fixed.MaxRequestBatch, fixed.MaxRequestExpires, fixed.MaxRequestMaxBytes, fixed.InactiveThreshold = 0, 0, 0, 0
	paused := got.PauseUntil != nil && got.PauseUntil.After(time.Now())
	if reflect.DeepEqual(fixed, got) && !paused {
		return nil
	}
	c.log.Warn("queue: consumer settings that could stall its messages set back", "consumer", want.Durable, "stream", stream,
		"maxAckPending", got.MaxAckPending, "maxDeliver", got.MaxDeliver, "paused", paused)
	err = c.denyAware(ctx, jsAPIFor(stream, want.Durable), func(ctx context.Context) error {
		_, err := c.js.UpdateConsumer(ctx, stream, fixed)
		return err
	})
	if err == nil && paused {
		err = c.denyAware(ctx, jsAPIFor(stream, want.Durable), func(ctx context.Context) error {
			_, err := c.js.ResumeConsumer(ctx, stream, want.Durable)
			return err
		})
	}
	if err != nil {
		return fmt.Errorf("queue: consumer %s: set back: %w", want.Durable, mapJSError(err))
	}
	return nil
}

// provideForPublish provides want (provideConsumer) before a publish on
// its subject. A tenant's runner may not create or change the consumer
// it takes work from: one that could would stall every message of the
// subject for everyone (MaxAckPending 1 and one message kept, or a
// consumer of its own taking the subject). So its publisher provides it,
// with ConsumerOptions' defaults, and the runners use it as it is. An
// account that may not provide it (an account.conf older than this rule,
// whose runners still create their consumers) publishes all the same,
// and says once per stream to upgrade it.
func (c *Conn) provideForPublish(ctx context.Context, stream string, want jetstream.ConsumerConfig) error {
	err := c.provideConsumer(ctx, stream, want)
	if errors.Is(err, ErrPermissionDenied) {
		if _, told := c.deniedProvide.LoadOrStore(stream, true); !told {
			c.log.Warn("queue: may not create the consumers of "+stream+", so its runners must: run provenix tenant upgrade", logKeyErr, err)
		}
		return nil
	}
	return err
}

// AwaitConsumer calls open (a ConsumeFarm or ConsumeRebuilds) until it
// does not fail with ErrNoConsumer, waiting between calls (a second,
// doubling up to 10 s), and returns what it returned; ctx's error once
// ctx is done. what names the consumer in the log, said once.
func AwaitConsumer(ctx context.Context, log *slog.Logger, what string, open func(context.Context) (*Consumer, error)) (*Consumer, error) {
	wait := time.Second
	for told := false; ; told = true {
		k, err := open(ctx)
		if !errors.Is(err, ErrNoConsumer) {
			return k, err
		}
		if !told {
			log.Info("queue: waiting for the publisher to provide the consumer", "of", what)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}
