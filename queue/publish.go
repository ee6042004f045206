package queue

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/retry"
)

// PublishResult publishes r on ResultsSubject(r.Tenant, r.System) with
// r.MsgID() as its Nats-Msg-Id, and waits for the stream's ack. duplicate
// is true when the server already had a message with that id within the
// duplicate window: the result is stored once, and retrying a publish
// whose outcome is unknown is always safe.
//
// So PublishResult retries such a publish itself, with the same id, until
// ctx ends: no ack in time (the broker was killed or restarted while it
// had the message), the connection lost, no stream answering (a cluster
// electing a stream leader after a server loss or in a rolling restart).
// A build may have taken hours; a broker restart must not lose its
// result. Definite refusals (permissions, storage full, no such stream,
// malformed) are returned at once.
//
// A ctx without deadline gets PublishTimeout.
func (c *Conn) PublishResult(ctx context.Context, r *Result) (duplicate bool, err error) {
	if r == nil {
		return false, errors.New("queue: publish result: nil result")
	}
	data, err := r.Encode()
	if err != nil {
		return false, fmt.Errorf("queue: publish result %s: %w", r.DrvPath, err)
	}
	subj, err := ResultsSubject(r.Tenant, r.System)
	if err != nil {
		return false, fmt.Errorf("queue: publish result %s: %w", r.DrvPath, err)
	}
	ack, err := c.publishRetry(ctx, subj, data, jetstream.WithMsgID(r.MsgID()), jetstream.WithExpectStream(StreamResults))
	if err != nil {
		return false, fmt.Errorf("queue: publish result %s: %w", r.DrvPath, err)
	}
	return ack.Duplicate, nil
}

// PublishEvent publishes v, encoded as JSON, on EventsSubject(tenant, kind).
// Like PublishResult it retries through leader elections, under a
// Nats-Msg-Id of its own so that a retry is not stored twice; a ctx
// without deadline gets PublishTimeout.
func (c *Conn) PublishEvent(ctx context.Context, tenant, kind string, v any) error {
	subj, err := EventsSubject(tenant, kind)
	if err != nil {
		return fmt.Errorf("queue: publish event: %w", err)
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("queue: publish event %s: encode: %w", subj, err)
	}
	if _, err := c.publishRetry(ctx, subj, data, jetstream.WithMsgID("event-"+rand.Text()), jetstream.WithExpectStream(StreamEvents)); err != nil {
		return fmt.Errorf("queue: publish event %s: %w", subj, err)
	}
	return nil
}

// publish sends data to subj and waits for the stream's ack.
//
// A publish the server's permissions deny gets no answer at all: the
// client only sees a timeout, while the reason arrives separately as an
// asynchronous -ERR. So for the time of the publish we watch for a
// permission violation naming subj and, if one comes, cancel the wait and
// return ErrPermissionDenied at once instead of a timeout.
func (c *Conn) publish(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ctx, cancel := withDefaultTimeout(ctx, DefaultTimeout)
	defer cancel()
	pctx, pcancel := context.WithCancelCause(ctx)
	defer pcancel(nil)
	defer c.watchDenied(subj, pcancel)()

	msg := nats.NewMsg(subj)
	msg.Data = data
	ack, err := c.js.PublishMsg(pctx, msg, opts...)
	if err != nil {
		if cause := context.Cause(pctx); errors.Is(cause, ErrPermissionDenied) {
			return nil, cause
		}
		if errors.Is(err, context.DeadlineExceeded) {
			// A server that cannot write its storage (disk full) does not
			// answer at all; neither does one that is down or has no
			// stream leader. Say where to look.
			return nil, fmt.Errorf("no ack from JetStream (server unreachable, stream without leader, or the server cannot write its storage: see its log): %w", err)
		}
		return nil, mapJSError(err)
	}
	return ack, nil
}

const (
	// PublishTimeout bounds PublishResult (and the other retried calls)
	// when its ctx has no deadline: long enough to ride out a broker
	// restart or a stream leader election (5–7 s in our cluster tests).
	PublishTimeout = time.Minute
)

// publishAttempts bounds each attempt's wait for an ack: 2 s, each retry
// twice as long, up to 10 s, so a slow link still gets an answer while a
// message sent to a leader that just died (it gets no answer at all) is
// resent soon.
var publishAttempts = retry.Policy{Initial: 2 * time.Second, Max: 10 * time.Second}

// publishRetry is publish, repeated with backoff while the error comes
// without a definite answer (see Retryable), until ctx ends. Only for
// messages with a Nats-Msg-Id: an attempt that timed out may have been
// stored, and the stream's duplicate window drops the repeat.
func (c *Conn) publishRetry(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ctx, cancel := withDefaultTimeout(ctx, PublishTimeout)
	defer cancel()
	retries := connectRetry
	retries.Max = time.Second
	retries.OnRetry = func(attempt int, _ time.Duration, err error) {
		c.log.Debug("queue: publish failed, retrying", logKeySubject, subj, "attempt", attempt, logKeyErr, err)
	}
	var ack *jetstream.PubAck
	attempts := 0
	err := retry.Do(ctx, retries, func(attempt int) error {
		attempts = attempt
		actx, acancel := context.WithTimeout(ctx, publishAttempts.Delay(attempt))
		defer acancel()
		var err error
		ack, err = c.publish(actx, subj, data, opts...)
		if err != nil && !retryable(err) {
			return retry.Stop(err)
		}
		return err
	})
	if err != nil {
		if ctx.Err() == nil && attempts > 1 {
			err = fmt.Errorf("after %d attempts: %w", attempts, err)
		}
		return nil, err
	}
	return ack, nil
}

// Retryable reports whether an error from PublishResult or Stage came
// without a definite answer from the broker (no ack in time, the
// connection lost, no stream answering, "JetStream not available"), so
// that the same call (same result, same key) may succeed when repeated.
// Refusals (permissions, storage full, invalid names, missing streams) and
// cancellations are not.
func Retryable(err error) bool { return retryable(err) }

func retryable(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, ErrPermissionDenied), errors.Is(err, ErrStorageFull), errors.Is(err, ErrQuotaExceeded),
		errors.Is(err, ErrNotFound), errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout), errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting):
		return true
	case errors.As(err, &apiErr):
		return apiErr.Code == 503
	}
	return false
}

type deniedWatch struct {
	match  func(subject string) bool
	cancel context.CancelCauseFunc
}

// watchDenied registers a publish to subj; the returned func unregisters it.
func (c *Conn) watchDenied(subj string, cancel context.CancelCauseFunc) func() {
	return c.watchDeniedFunc(func(s string) bool { return s == subj }, cancel)
}

// watchDeniedFunc registers a call whose requests go to the subjects match
// accepts (a JetStream API call, whose subject nats.go builds); the
// returned func unregisters it.
func (c *Conn) watchDeniedFunc(match func(subject string) bool, cancel context.CancelCauseFunc) func() {
	w := &deniedWatch{match: match, cancel: cancel}
	c.mu.Lock()
	c.denied[w] = struct{}{}
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.denied, w)
		c.mu.Unlock()
	}
}

// notifyDenied cancels the calls whose subject a permission violation
// names. The server's text is `Permissions Violation for Publish to "subj"`.
// Two concurrent publishes to the same subject are both cancelled by one
// violation, which is right: the permission is per subject.
func (c *Conn) notifyDenied(err error) {
	subj, ok := deniedSubject(err.Error())
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for w := range c.denied {
		if w.match(subj) {
			w.cancel(fmt.Errorf("%w: %s", ErrPermissionDenied, err))
		}
	}
}

// deniedSubject extracts the subject of a publish permission violation.
func deniedSubject(text string) (string, bool) {
	i := strings.Index(strings.ToLower(text), "publish to ")
	if i < 0 {
		return "", false
	}
	rest := strings.TrimSpace(text[i+len("publish to "):])
	if len(rest) < 2 || rest[0] != '"' {
		return "", false
	}
	subj, _, ok := strings.Cut(rest[1:], `"`)
	if !ok {
		return "", false
	}
	return subj, true
}

// denyAware runs f, a JetStream API call whose request subjects match
// accepts, and returns ErrPermissionDenied at once when the server's
// permissions drop one of them: the server does not answer a denied
// request, and the call would otherwise wait for its timeout.
func (c *Conn) denyAware(ctx context.Context, match func(subject string) bool, f func(ctx context.Context) error) error {
	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer c.watchDeniedFunc(match, cancel)()
	err := f(dctx)
	if err != nil {
		if cause := context.Cause(dctx); errors.Is(cause, ErrPermissionDenied) {
			return cause
		}
	}
	return err
}

// jsAPIFor matches the JetStream API requests about stream (and, when
// non-empty, its consumer): "$JS.API.<VERB...>.<stream>[.<consumer>...]".
func jsAPIFor(stream, consumer string) func(string) bool {
	return func(s string) bool {
		rest, ok := strings.CutPrefix(s, "$JS.API.")
		if !ok {
			return false
		}
		want := "." + stream
		if consumer != "" {
			want += "." + consumer
		}
		return strings.Contains(rest, want+".") || strings.HasSuffix(rest, want)
	}
}

// mapJSError maps broker errors onto this package's sentinels, keeping the
// original in the chain.
func mapJSError(err error) error {
	if l := limitError(err); l != nil {
		return l
	}
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound), errors.Is(err, jetstream.ErrConsumerNotFound),
		errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrObjectNotFound):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, nats.ErrNoResponders):
		// Not mapped to ErrNotFound: during a leader election a stream
		// that exists does not answer either, and callers treat
		// ErrNotFound as final.
		return fmt.Errorf("no stream answered (EnsureStreams not run, or no leader yet): %w", err)
	}
	return err
}

// JetStream error codes (nats-server's errors.json) of the limits a write
// or a new stream or consumer can hit; nats.go does not name them.
const (
	jsErrAccountResourcesExceeded jetstream.ErrorCode = 10002 // "resource limits exceeded for account"
	jsErrInsufficientResources    jetstream.ErrorCode = 10023
	jsErrMaximumConsumersLimit    jetstream.ErrorCode = 10026
	jsErrMaximumStreamsLimit      jetstream.ErrorCode = 10027
	jsErrMemoryResourcesExceeded  jetstream.ErrorCode = 10028
	jsErrStorageResourcesExceeded jetstream.ErrorCode = 10047
	jsErrStreamStoreFailed        jetstream.ErrorCode = 10077
)

// limitError maps the server refusing for a limit onto our sentinels, or
// returns nil. Out of storage matches ErrStorageFull and also
// ErrQuotaExceeded: the server's codes do not tell a tenant account's
// max_file from the server's own max_store, and either way the cure is
// space freed or the limit raised. The other account limits (memory,
// streams, consumers) are ErrQuotaExceeded, named in the operator's terms
// (the account's jetstream block).
func limitError(err error) error {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return nil
	}
	var limit string
	switch apiErr.ErrorCode {
	case jsErrAccountResourcesExceeded, jsErrStorageResourcesExceeded, jsErrInsufficientResources:
		return fmt.Errorf("%w: storage (the account's jetstream max_file, or the server's max_store) (%w): %w", ErrStorageFull, ErrQuotaExceeded, err)
	case jsErrStreamStoreFailed:
		// A stream's MaxBytes with DiscardNew ("maximum bytes exceeded"),
		// or the store itself out of room.
		d := strings.ToLower(apiErr.Description)
		if strings.Contains(d, "maximum bytes") || strings.Contains(d, "resources") || strings.Contains(d, "no space") {
			return fmt.Errorf("%w: %w", ErrStorageFull, err)
		}
		return nil
	case jsErrMemoryResourcesExceeded:
		limit = "memory (jetstream max_mem)"
	case jsErrMaximumStreamsLimit:
		limit = "streams (jetstream max_streams)"
	case jsErrMaximumConsumersLimit:
		limit = "consumers per stream (jetstream max_consumers)"
	default:
		return nil
	}
	return fmt.Errorf("%w: %s: %w", ErrQuotaExceeded, limit, err)
}

// EventSub is a subscription to events; Stop ends it.
type EventSub struct{ sub *nats.Subscription }

// Stop unsubscribes; no callback runs after it returns.
func (s *EventSub) Stop() error { return s.sub.Drain() }

// SubscribeEvents calls f with the JSON of each event of kind published
// for tenant from now on (a core NATS subscription: events missed while
// not subscribed are not replayed). RoleRunner may subscribe to
// EventDisputed only, so a volunteer learns of disputes on its builds.
func (c *Conn) SubscribeEvents(tenant, kind string, f func(data []byte)) (*EventSub, error) {
	subj, err := EventsSubject(tenant, kind)
	if err != nil {
		return nil, fmt.Errorf("queue: subscribe events: %w", err)
	}
	sub, err := c.nc.Subscribe(subj, func(m *nats.Msg) { f(m.Data) })
	if err != nil {
		return nil, fmt.Errorf("queue: subscribe %s: %w", subj, err)
	}
	return &EventSub{sub: sub}, nil
}
