package usage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"codeberg.org/provenix/provenix/queue"
)

// Recorder takes one record per unit of work; runner, volunteer and the
// cache server are given one. *Publisher is the one that counts.
type Recorder interface {
	Record(ctx context.Context, r *Record) error
}

// Conn is the part of *queue.Conn a Publisher and Read use.
type Conn interface {
	PublishUsage(ctx context.Context, subj, msgID string, data []byte) error
	ReadUsage(ctx context.Context, filter string, since time.Time, fn func(subject string, data []byte) error) error
}

// Publisher publishes records on their tenant's usage subject: a
// builder's under its builder id's scope, a cache server's under serve.
type Publisher struct {
	conn Conn
}

// NewPublisher publishes through conn.
func NewPublisher(conn Conn) (*Publisher, error) {
	if conn == nil {
		return nil, errors.New("usage: publisher without a NATS connection")
	}
	return &Publisher{conn: conn}, nil
}

// Record fills in r's version and id when unset, validates it and
// publishes it (retried through broker restarts until ctx ends; a retry
// is stored once).
func (p *Publisher) Record(ctx context.Context, r *Record) error {
	if r.Version == 0 {
		r.Version = Version
	}
	if r.ID == "" {
		r.ID = NewID()
	}
	data, err := Encode(r)
	if err != nil {
		return err
	}
	subj, err := queue.UsageSubject(r.Tenant, r.Builder)
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	if err := p.conn.PublishUsage(ctx, subj, "usage-"+r.ID, data); err != nil {
		return fmt.Errorf("usage: record %s: %w", r.ID, err)
	}
	return nil
}

// Encode validates r and returns its wire form.
func Encode(r *Record) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("usage: encode: %w", err)
	}
	if len(b) > queue.MaxUsageSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrInvalid, len(b), queue.MaxUsageSize)
	}
	return b, nil
}

// Decode parses and validates a record as it arrived on subject: unknown
// fields and trailing data are refused, and so is a record whose subject
// does not match it (another tenant, a builder id whose scope is not the
// subject's, a serve record outside serve): the publisher's NATS user may
// publish on its own subject only, so a record may claim only what that
// user is.
func Decode(subject string, data []byte) (*Record, error) {
	r, err := queue.DecodeUsage[Record](data)
	if err != nil {
		if errors.Is(err, ErrInvalid) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	want, err := queue.UsageSubject(r.Tenant, r.Builder)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if subject != want {
		return nil, fmt.Errorf("%w: a record of tenant %q and builder %q arrived on %s, not on %s", ErrInvalid, r.Tenant, r.Builder, subject, want)
	}
	return r, nil
}

// Filter is the subject Read reads: every record of tenant ("": of
// every tenant in the account), or, with builder, that builder's only
// (all a runner's NATS user may read).
func Filter(tenant, builder string) (string, error) {
	if builder == "" {
		return queue.UsageFilter(tenant), nil
	}
	if tenant == "" {
		return "", fmt.Errorf("usage: builder %q without a tenant", builder)
	}
	subj, err := queue.UsageSubject(tenant, builder)
	if err != nil {
		return "", fmt.Errorf("usage: %w", err)
	}
	return subj, nil
}

// Read calls fn with every valid record on filter (see Filter) stored
// since since, oldest first. Records Decode refuses are skipped and
// counted in refused: one bad publisher does not stop the bill.
func Read(ctx context.Context, conn Conn, filter string, since time.Time, fn func(*Record) error) (refused int, err error) {
	err = conn.ReadUsage(ctx, filter, since, func(subject string, data []byte) error {
		r, err := Decode(subject, data)
		if err != nil {
			refused++
			return nil
		}
		return fn(r)
	})
	return refused, err
}
