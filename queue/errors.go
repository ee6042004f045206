package queue

import (
	"errors"
	"time"
)

// Errors callers can match with errors.Is. Broker errors are mapped onto
// these once, at the edge of this package.
var (
	// ErrInvalidName: a tenant, system or key is not usable as a NATS name.
	ErrInvalidName = errors.New("queue: invalid name")
	// ErrMalformed: a message does not decode into a valid Result.
	ErrMalformed = errors.New("queue: malformed message")
	// ErrTooLarge: a message is over MaxResultSize.
	ErrTooLarge = errors.New("queue: message too large")
	// ErrNotFound: a staged object or stream does not exist.
	ErrNotFound = errors.New("queue: not found")
)

// Errors added with the client.
var (
	// ErrPermanent marks a handler error that retrying cannot fix (a
	// malformed result, a failed signature check): the message is
	// terminated instead of redelivered. Wrap with Permanent.
	ErrPermanent = errors.New("queue: permanent failure")
	// ErrPermissionDenied: the server's permissions refused a publish.
	ErrPermissionDenied = errors.New("queue: permission denied")
	// ErrQuotaExceeded: the account's JetStream limits (a tenant's quota:
	// storage, streams, consumers) refused a write or a new stream or
	// consumer. The message names the limit.
	ErrQuotaExceeded = errors.New("queue: JetStream quota exceeded")
	// ErrCorrupt: a staged object's content does not match its digest.
	ErrCorrupt = errors.New("queue: staged object corrupt")
	// ErrStorageFull: the server refused to store a message because
	// JetStream's storage is full: the account's or server's limit
	// (max_store, by default 75 % of the disk's free space when the server
	// started) or a stream's MaxBytes. Retry once space is freed (staged
	// objects deleted, messages aged out, the limit raised). A server whose
	// disk itself ran out gives no answer at all, only timeouts: see
	// server.Server.StorageError (package queue/server).
	ErrStorageFull = errors.New("queue: JetStream storage full")
	// ErrUntrustedCert: the server's TLS certificate failed verification
	// (unknown CA, wrong host name, expired); Connect gives up at once.
	ErrUntrustedCert = errors.New("server certificate not trusted")
	// ErrNoConsumer: the shared consumer of a work queue's subject,
	// which this account may not create (a tenant's runner), does not
	// exist yet; whoever publishes on the subject provides it
	// (PublishFarm, PublishRebuild). AwaitConsumer retries.
	ErrNoConsumer = errors.New("queue: the subject's consumer does not exist yet")
	// ErrConfigDropped: the server did not keep a stream setting we set;
	// older servers silently drop fields they do not know.
	ErrConfigDropped = errors.New("queue: server did not keep the stream configuration (nats-server too old?)")
)

// Permanent wraps err so that errors.Is(err, ErrPermanent) holds while err
// stays in the chain (errors.Is and errors.As see both). Permanent(nil)
// is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrPermanent) {
		return err
	}
	return &permanentError{err: err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string   { return e.err.Error() }
func (e *permanentError) Unwrap() []error { return []error{e.err, ErrPermanent} }

// ErrDeferred marks a handler's "not now" (see Defer): the message is
// released for redelivery after a delay, without counting as a failure.
var ErrDeferred = errors.New("queue: deferred")

// Defer is a handler's outcome for a message it will not handle now, for
// a reason that says nothing about the message (its sender already
// occupies its share of the handlers): the message is released and
// redelivered after delay. The server counts the delivery all the same
// (NumDelivered grows): handlers that bound their retries must count
// their own failures.
func Defer(delay time.Duration) error { return &deferError{delay: delay} }

type deferError struct{ delay time.Duration }

func (e *deferError) Error() string { return "queue: deferred for " + e.delay.String() }
func (e *deferError) Unwrap() error { return ErrDeferred }
