package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PublishResult publishes r on ResultsSubject(r.Tenant, r.System) with
// r.MsgID() as its Nats-Msg-Id, and waits for the stream's ack. duplicate
// is true when the server already had a message with that id within the
// duplicate window: the result is stored once, and retrying a publish
// whose outcome is unknown is always safe.
//
// A ctx without deadline gets DefaultTimeout.
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
	ack, err := c.publish(ctx, subj, data, jetstream.WithMsgID(r.MsgID()), jetstream.WithExpectStream(StreamResults))
	if err != nil {
		return false, fmt.Errorf("queue: publish result %s: %w", r.DrvPath, err)
	}
	return ack.Duplicate, nil
}

// PublishEvent publishes v, encoded as JSON, on EventsSubject(tenant, kind).
// A ctx without deadline gets DefaultTimeout.
func (c *Conn) PublishEvent(ctx context.Context, tenant, kind string, v any) error {
	subj, err := EventsSubject(tenant, kind)
	if err != nil {
		return fmt.Errorf("queue: publish event: %w", err)
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("queue: publish event %s: encode: %w", subj, err)
	}
	if _, err := c.publish(ctx, subj, data, jetstream.WithExpectStream(StreamEvents)); err != nil {
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
		return nil, mapJSError(err)
	}
	return ack, nil
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
	if q := quotaError(err); q != nil {
		return q
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

// JetStream error codes of an account's limits (nats-server's
// errors.json), which a tenant's account hits.
const (
	jsErrAccountResourcesExceeded = 10002 // "resource limits exceeded for account"
	jsErrInsufficientResources    = 10023
	jsErrMaximumConsumersLimit    = 10026
	jsErrMaximumStreamsLimit      = 10027
	jsErrMemoryResourcesExceeded  = 10028
	jsErrStorageResourcesExceeded = 10047
)

// quotaError maps an account limit error onto ErrQuotaExceeded, naming the
// limit in the operator's terms (the account's jetstream block), or
// returns nil.
func quotaError(err error) error {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return nil
	}
	var limit string
	switch apiErr.ErrorCode {
	case jsErrAccountResourcesExceeded, jsErrStorageResourcesExceeded, jsErrInsufficientResources:
		limit = "storage (jetstream max_file)"
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
