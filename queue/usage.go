package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Usage records (package usage): what each job, farm or volunteer build
// and each cache server cost, kept in one stream per tenant account.
// Names are here rather than in names.go to keep the feature in one
// file, as farm.go does.
const (
	// StreamUsage holds usage records: usage.<tenant>.<scope> from
	// builders (the scope of their builder id, StagingScope, so a
	// runner user can publish for its own builder id only) and
	// usage.<tenant>.serve from cache servers (the pusher role).
	StreamUsage = "USAGE"
	// DefaultUsageMaxAge is how long usage records are kept when
	// StreamOptions.UsageMaxAge is 0: long enough to bill a quarter.
	DefaultUsageMaxAge = 90 * 24 * time.Hour
	// MaxUsageSize bounds one encoded usage record.
	MaxUsageSize = 16 << 10
	// UsageServeToken is the last subject token of cache servers' records.
	UsageServeToken = "serve"

	subjectUsage = "usage"
	// usageDuplicates is USAGE's duplicate window: a record published
	// again (a retry after a lost ack) within it is stored once.
	usageDuplicates = 10 * time.Minute
)

// UsageSubject is the subject of tenant's usage records from builderID,
// or of its cache servers' records when builderID is empty.
func UsageSubject(tenant, builderID string) (string, error) {
	if err := ValidToken(tenant); err != nil {
		return "", fmt.Errorf("tenant: %w", err)
	}
	if builderID == "" {
		return subjectUsage + "." + tenant + "." + UsageServeToken, nil
	}
	return subjectUsage + "." + tenant + "." + StagingScope(builderID), nil
}

// UsageFilter matches every usage record of tenant, or of every tenant
// (in the account) when tenant is empty.
func UsageFilter(tenant string) string {
	if tenant == "" {
		return subjectUsage + ".>"
	}
	return subjectUsage + "." + tenant + ".>"
}

// ParseUsageSubject splits a usage subject into its tenant and its last
// token (a builder's scope, or UsageServeToken).
func ParseUsageSubject(subj string) (tenant, scope string, err error) {
	parts := strings.Split(subj, ".")
	if len(parts) != 3 || parts[0] != subjectUsage || ValidToken(parts[1]) != nil || ValidToken(parts[2]) != nil {
		return "", "", fmt.Errorf("%w: %q is not a usage subject", ErrInvalidName, subj)
	}
	return parts[1], parts[2], nil
}

func usageConfig(o StreamOptions) jetstream.StreamConfig {
	maxAge := o.UsageMaxAge
	if maxAge == 0 {
		maxAge = DefaultUsageMaxAge
	}
	c := messageStream(o, StreamUsage, "Provenix usage records: CPU, memory, bytes built, staged and served, per tenant", UsageFilter(""))
	c.MaxAge = maxAge
	c.Duplicates = min(usageDuplicates, maxAge)
	c.MaxMsgSize = MaxUsageSize + resultHeaderAllowance
	return c
}

// PublishUsage publishes an encoded usage record on subj (a UsageSubject)
// with msgID as its Nats-Msg-Id, retrying through leader elections as
// PublishResult does (a retry within the duplicate window is stored
// once). A ctx without deadline gets PublishTimeout.
func (c *Conn) PublishUsage(ctx context.Context, subj, msgID string, data []byte) error {
	if _, _, err := ParseUsageSubject(subj); err != nil {
		return fmt.Errorf("queue: publish usage: %w", err)
	}
	if msgID == "" {
		return errors.New("queue: publish usage: empty message id")
	}
	if len(data) > MaxUsageSize {
		return fmt.Errorf("queue: publish usage %s: %w: %d bytes, limit %d", subj, ErrTooLarge, len(data), MaxUsageSize)
	}
	if _, err := c.publishRetry(ctx, subj, data, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(StreamUsage)); err != nil {
		return fmt.Errorf("queue: publish usage %s: %w", subj, err)
	}
	return nil
}

// ReadUsage calls fn with the usage records on filter (UsageFilter, or
// one UsageSubject) stored since since, oldest first, and returns once it
// has seen those stored when it started. No USAGE stream (no pusher set
// the account up yet) is no records.
func (c *Conn) ReadUsage(ctx context.Context, filter string, since time.Time, fn func(subject string, data []byte) error) error {
	if filter != UsageFilter("") && !strings.HasPrefix(filter, subjectUsage+".") {
		return fmt.Errorf("queue: read usage: %w: %q is not a usage filter", ErrInvalidName, filter)
	}
	if filter == UsageFilter("") {
		filter = "" // the whole stream: its last sequence ends the read
	}
	err := c.readSince(ctx, StreamUsage, filter, since, fn)
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: read usage: %w", err)
	}
	return nil
}

// usagePermissions adds to a role's permissions what usage records need:
// a runner publishes on its own builder's subject and reads it back (its
// operator bills from it); a pusher (the cache server) publishes its
// tenant's serve records, creates the stream and reads the tenant's
// records (`provenix usage`).
func usagePermissions(tenant, builderID string, role Role, pub *[]string) {
	switch role {
	case RoleRunner:
		subj, _ := UsageSubject(tenant, builderID)
		*pub = append(*pub, subj)
		readFiltered(StreamUsage, subj, pub)
	case RolePusher:
		subj, _ := UsageSubject(tenant, "")
		*pub = append(*pub, subj, jsAPI+"STREAM.CREATE."+StreamUsage, jsAPI+"STREAM.UPDATE."+StreamUsage)
		readFiltered(StreamUsage, UsageFilter(tenant), pub)
	}
}

// DecodeUsage parses and validates a usage record as the other wire
// messages are: at most MaxUsageSize bytes, unknown fields and trailing
// data refused (ErrMalformed, ErrTooLarge), then P's Validate.
func DecodeUsage[T any, P interface {
	*T
	Validate() error
}](data []byte) (*T, error) {
	return decodeMessage[T, P](data, "usage record", MaxUsageSize)
}
