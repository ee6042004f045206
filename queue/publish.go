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
)

// PublishResult publishes r on ResultsSubject(r.Tenant, r.System) with
// r.MsgID() as its Nats-Msg-Id, and waits for the stream's ack. duplicate
// is true when the server already had a message with that id within the
// duplicate window: the result is stored once, and retrying a publish
// whose outcome is unknown is always safe.
//
// Because of that, PublishResult itself retries, with the same id, what a
// cluster answers while it elects a stream leader (a server lost, a
// rolling restart): no responders, and attempts without an answer within
// publishAttempt. It gives up when ctx ends; a ctx without deadline gets
// PublishTimeout, longer than an election takes (5–7 s in our tests).
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
		return nil, mapJSError(err)
	}
	return ack, nil
}

const (
	// PublishTimeout bounds PublishResult when its ctx has no deadline.
	PublishTimeout = 30 * time.Second
	// publishAttempt bounds one attempt of publishRetry: an ack normally
	// takes milliseconds; a request sent to a leader that just died gets
	// none at all.
	publishAttempt = 3 * time.Second
)

// publishRetry is publish, repeated with backoff while the error is one a
// leader election causes (see retryable), until ctx ends. Only for
// messages with a Nats-Msg-Id: an attempt that timed out may have been
// stored, and the stream's duplicate window drops the repeat.
func (c *Conn) publishRetry(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ctx, cancel := withDefaultTimeout(ctx, PublishTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, publishAttempt)
		ack, err := c.publish(actx, subj, data, opts...)
		acancel()
		if err == nil || ctx.Err() != nil || !retryable(err) {
			return ack, err
		}
		c.log.Debug("queue: publish failed, retrying", logKeySubject, subj, logKeyErr, err)
		sleepCtx(ctx, backoff(attempt))
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		}
	}
}

// retryable reports whether a publish error is what a cluster answers
// while it has no leader for the stream, or while we reconnect: no
// responders, no answer in time, "JetStream not available" (503).
func retryable(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, ErrPermissionDenied):
		return false
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, nats.ErrConnectionReconnecting):
		return true
	case errors.As(err, &apiErr):
		return apiErr.Code == 503
	}
	return false
}

type deniedWatch struct {
	subject string
	cancel  context.CancelCauseFunc
}

// watchDenied registers a publish to subj; the returned func unregisters it.
func (c *Conn) watchDenied(subj string, cancel context.CancelCauseFunc) func() {
	w := &deniedWatch{subject: subj, cancel: cancel}
	c.mu.Lock()
	c.denied[w] = struct{}{}
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.denied, w)
		c.mu.Unlock()
	}
}

// notifyDenied cancels the publishes whose subject a permission violation
// names. The server's text is `Permissions Violation for Publish to "subj"`.
// Two concurrent publishes to the same subject are both cancelled by one
// violation, which is right: the permission is per subject.
func (c *Conn) notifyDenied(err error) {
	text := err.Error()
	if !strings.Contains(strings.ToLower(text), "publish to") {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for w := range c.denied {
		if strings.Contains(text, `"`+w.subject+`"`) {
			w.cancel(fmt.Errorf("%w: %s", ErrPermissionDenied, err))
		}
	}
}

// mapJSError maps broker errors onto this package's sentinels, keeping the
// original in the chain.
func mapJSError(err error) error {
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
