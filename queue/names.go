package queue

import (
	"fmt"
	"strings"
	"time"
)

// Stream, bucket and subject names in one place, so a NATS operator can
// read off what Provenix creates and grant permissions accordingly.
const (
	// StreamResults holds every builder's result message (Limits retention:
	// each pusher group gets its own durable consumer and sees every result).
	StreamResults = "RESULTS"
	// StreamEvents holds what pushers decided (rejections, publications).
	StreamEvents = "EVENTS"
	// BucketStaging is the Object Store bucket that holds NARs between the
	// builder that produced them and the pushers that publish them.
	BucketStaging = "STAGING"

	subjectResults = "results"
	subjectEvents  = "events"

	// DefaultTimeout bounds a call whose context has no deadline.
	DefaultTimeout = 10 * time.Second
	// DefaultMaxAge is how long results and events stay in their streams.
	DefaultMaxAge = 7 * 24 * time.Hour
	// MaxResultSize bounds one encoded result message. Bundles are a few KiB;
	// anything near this is hostile or broken, and NATS' own max_payload
	// (1 MiB by default) must stay above it so the pusher, not the broker,
	// says why a message is refused.
	MaxResultSize = 256 << 10
)

// Event kinds published on events.<tenant>.<kind>.
const (
	EventRejected  = "rejected"
	EventPublished = "published"
	// EventDisputed: the builders of a path disagree (no quorum yet;
	// cachepush.Dispute).
	EventDisputed = "disputed"
)

// ResultsSubject is the subject a result for tenant and system goes to.
func ResultsSubject(tenant, system string) (string, error) {
	if err := ValidToken(tenant); err != nil {
		return "", fmt.Errorf("tenant: %w", err)
	}
	if err := ValidToken(system); err != nil {
		return "", fmt.Errorf("system: %w", err)
	}
	return subjectResults + "." + tenant + "." + system, nil
}

// ResultsFilter matches every result of tenant, or of all tenants when
// tenant is empty.
func ResultsFilter(tenant string) string {
	if tenant == "" {
		return subjectResults + ".>"
	}
	return subjectResults + "." + tenant + ".>"
}

// EventsSubject is the subject of an event of kind for tenant.
func EventsSubject(tenant, kind string) (string, error) {
	if err := ValidToken(tenant); err != nil {
		return "", fmt.Errorf("tenant: %w", err)
	}
	if err := ValidToken(kind); err != nil {
		return "", fmt.Errorf("event kind: %w", err)
	}
	return subjectEvents + "." + tenant + "." + kind, nil
}

// ValidToken reports whether s can stand as one token of a NATS subject:
// non-empty, printable ASCII, and none of '.', '*', '>' or white space,
// which would change the subject's meaning.
func ValidToken(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrInvalidName)
	}
	if len(s) > 128 {
		return fmt.Errorf("%w: longer than 128 bytes", ErrInvalidName)
	}
	if i := strings.IndexFunc(s, func(r rune) bool {
		return r <= ' ' || r > '~' || r == '.' || r == '*' || r == '>'
	}); i >= 0 {
		return fmt.Errorf("%w: %q has a forbidden character at %d", ErrInvalidName, s, i)
	}
	return nil
}
