package usage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"codeberg.org/provenix/provenix/internal/ticker"
)

// DefaultServeInterval is how often a ServeMeter records what was served.
const DefaultServeInterval = time.Minute

// ServeOptions configure a ServeMeter.
type ServeOptions struct {
	// Tenant whose cache is served (one cache server per tenant).
	Tenant string
	// Recorder receives the records (a *Publisher).
	Recorder Recorder
	// Interval between records; DefaultServeInterval when 0.
	Interval time.Duration
	Logger   *slog.Logger
}

// ServeMeter counts what a cache server serves each reader (the
// server's ServedObserver) and records it as serve records, one per
// reader that was served, every Interval and on Close: never one NATS
// message per request. A record that cannot be published is kept and
// sent with the next one, so nothing served goes uncounted while the
// broker is away. Memory grows with the readers, which the cache's
// readers file bounds (plus Anonymous).
type ServeMeter struct {
	o ServeOptions

	mu     sync.Mutex
	start  time.Time // of the window counts covers
	counts map[string]*served
	stop   func()
}

type served struct{ bytes, requests int64 }

// NewServeMeter checks o.
func NewServeMeter(o ServeOptions) (*ServeMeter, error) {
	if o.Tenant == "" || o.Recorder == nil {
		return nil, errors.New("usage: serve meter needs a tenant and a recorder")
	}
	if o.Interval < 0 {
		return nil, fmt.Errorf("usage: serve meter: negative interval %s", o.Interval)
	}
	if o.Interval == 0 {
		o.Interval = DefaultServeInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &ServeMeter{o: o, start: time.Now(), counts: map[string]*served{}}, nil
}

// Start records every Interval until Close.
func (m *ServeMeter) Start(ctx context.Context) {
	m.stop = ticker.Every(ctx, m.o.Interval, func(ctx context.Context) bool {
		if err := m.Flush(ctx); err != nil {
			m.o.Logger.Warn("recording what the cache served; kept for the next try", "err", err)
		}
		return true
	})
}

// ObserveServed counts one request of reader ("" without credentials)
// and its body bytes.
func (m *ServeMeter) ObserveServed(reader string, bytes int64) {
	if reader == "" {
		reader = Anonymous
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.counts[reader]
	if c == nil {
		c = &served{}
		m.counts[reader] = c
	}
	c.bytes += bytes
	c.requests++
}

// Flush records what was served since the last flush, one record per
// reader. What it could not record is counted again in the next window,
// but for a record Validate refuses (a reader name longer than a record
// holds): kept, it would fail every window and grow for ever.
func (m *ServeMeter) Flush(ctx context.Context) error {
	m.mu.Lock()
	counts, start := m.counts, m.start
	m.counts, m.start = map[string]*served{}, time.Now()
	end := m.start
	m.mu.Unlock()
	var errs []error
	for _, reader := range slices.Sorted(maps.Keys(counts)) {
		c := counts[reader]
		r := &Record{Kind: KindServe, Tenant: m.o.Tenant, Reader: reader, Start: start.UTC(), End: end.UTC(),
			BytesServed: c.bytes, Requests: c.requests}
		if err := m.o.Recorder.Record(ctx, r); err != nil {
			errs = append(errs, err)
			if !errors.Is(err, ErrInvalid) { // an invalid record never goes
				m.keep(reader, c, start)
			}
		}
	}
	return errors.Join(errs...)
}

// keep puts counts that were not recorded back, their window's start
// with them.
func (m *ServeMeter) keep(reader string, c *served, start time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if start.Before(m.start) {
		m.start = start
	}
	if old := m.counts[reader]; old != nil {
		c.bytes += old.bytes
		c.requests += old.requests
	}
	m.counts[reader] = c
}

// Close stops the periodic records and records what is left.
func (m *ServeMeter) Close(ctx context.Context) error {
	if m.stop != nil {
		m.stop()
	}
	return m.Flush(ctx)
}
