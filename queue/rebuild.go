package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/storepath"
)

// Rebuild requests: a cache pusher that needs more votes on a derivation
// asks volunteers to rebuild it. Names are here rather than in names.go
// to keep this feature in one file.
const (
	// StreamRebuild holds rebuild requests, one work queue shared by the
	// volunteers: each request goes to one volunteer of its system, and
	// leaves the stream when that volunteer acks or terminates it.
	StreamRebuild = "REBUILD"
	// RebuildConsumerPrefix prefixes the durable consumer of one tenant
	// and system (RebuildConsumer).
	RebuildConsumerPrefix = "rebuild-"

	subjectRebuild = "rebuild"

	// RebuildVersion is the version of the RebuildRequest wire format.
	RebuildVersion = 1
	// MaxRebuildSize bounds one encoded rebuild request: a few store
	// paths and a key.
	MaxRebuildSize = 64 << 10

	// rebuildDuplicates is REBUILD's duplicate window: the same request
	// (tenant and derivation) published again within it, by this pusher
	// or another, is one message.
	rebuildDuplicates = 10 * time.Minute
)

// RebuildSubject is the subject of rebuild requests for tenant and system.
func RebuildSubject(tenant, system string) (string, error) {
	if err := ValidToken(tenant); err != nil {
		return "", fmt.Errorf("tenant: %w", err)
	}
	if err := ValidToken(system); err != nil {
		return "", fmt.Errorf("system: %w", err)
	}
	return subjectRebuild + "." + tenant + "." + system, nil
}

// RebuildConsumer is the name of the durable consumer shared by the
// volunteers that rebuild tenant's derivations for system. A work queue
// allows one consumer per subject, so the name follows from the subject:
// readable, with a digest because tenant and system may hold '-'.
func RebuildConsumer(tenant, system string) string {
	sum := sha256.Sum256([]byte(tenant + "\x00" + system))
	readable := tenant + "-" + system
	if len(readable) > 200 {
		readable = readable[:200]
	}
	return RebuildConsumerPrefix + readable + "-" + hex.EncodeToString(sum[:4])
}

// RebuildRequest asks for a rebuild of a derivation. Nothing in it is
// signed: a volunteer builds what DrvPath names in its own store (after
// importing the closure, whose paths are checked against their contents)
// and attests what it got; a lying request can waste its time, not make
// it vouch for something it did not build.
type RebuildRequest struct {
	Version int    `json:"version"`
	Tenant  string `json:"tenant"`
	System  string `json:"system"`
	DrvPath string `json:"drvPath"`
	// Outputs are the derivation's output store paths.
	Outputs []string `json:"outputs"`
	// Closure is the staging key of the derivation's closure export
	// (ClosureKey), or empty: then the volunteer must have the .drv.
	Closure   string    `json:"closure,omitempty"`
	Requested time.Time `json:"requested"`
}

// MsgID identifies a request for JetStream's duplicate window: one per
// tenant and derivation, whoever asks.
func (r *RebuildRequest) MsgID() string {
	return "rebuild:" + r.Tenant + ":" + path.Base(r.DrvPath)
}

// Validate checks the fields' shapes.
func (r *RebuildRequest) Validate() error {
	if r.Version != RebuildVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrMalformed, r.Version, RebuildVersion)
	}
	if err := ValidToken(r.Tenant); err != nil {
		return fmt.Errorf("%w: tenant: %w", ErrMalformed, err)
	}
	if err := ValidToken(r.System); err != nil {
		return fmt.Errorf("%w: system: %w", ErrMalformed, err)
	}
	if err := storepath.Check(r.DrvPath); err != nil || !strings.HasSuffix(r.DrvPath, ".drv") {
		return fmt.Errorf("%w: drvPath %q is not a .drv under %s", ErrMalformed, r.DrvPath, storepath.Dir)
	}
	if len(r.Outputs) == 0 {
		return fmt.Errorf("%w: no outputs", ErrMalformed)
	}
	seen := make(map[string]bool, len(r.Outputs))
	for _, o := range r.Outputs {
		if err := storepath.Check(o); err != nil || strings.HasSuffix(o, ".drv") {
			return fmt.Errorf("%w: output %q is not an output path under %s", ErrMalformed, o, storepath.Dir)
		}
		if seen[o] {
			return fmt.Errorf("%w: output %q repeated", ErrMalformed, o)
		}
		seen[o] = true
	}
	if r.Closure != "" {
		if err := validClosureKey(r.Closure); err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
	}
	if r.Requested.IsZero() {
		return fmt.Errorf("%w: no request time", ErrMalformed)
	}
	return nil
}

// Encode validates r and returns its wire form.
func (r *RebuildRequest) Encode() ([]byte, error) {
	return encodeMessage(r, "rebuild request", MaxRebuildSize)
}

// DecodeRebuildRequest parses and validates a rebuild request, refusing
// unknown fields and trailing data as DecodeResult does.
func DecodeRebuildRequest(data []byte) (*RebuildRequest, error) {
	return decodeMessage[RebuildRequest](data, "rebuild request", MaxRebuildSize)
}

// PublishRebuild publishes r on RebuildSubject(r.Tenant, r.System) with
// r.MsgID() as its Nats-Msg-Id and waits for the stream's ack. duplicate
// is true when the same request (tenant and derivation) was already
// published within the duplicate window (10 min): it is stored once. A
// ctx without deadline gets DefaultTimeout.
func (c *Conn) PublishRebuild(ctx context.Context, r *RebuildRequest) (duplicate bool, err error) {
	if r == nil {
		return false, errors.New("queue: publish rebuild: nil request")
	}
	data, err := r.Encode()
	if err != nil {
		return false, fmt.Errorf("queue: publish rebuild %s: %w", r.DrvPath, err)
	}
	subj, err := RebuildSubject(r.Tenant, r.System)
	if err != nil {
		return false, fmt.Errorf("queue: publish rebuild %s: %w", r.DrvPath, err)
	}
	// A tenant's volunteers may not create the consumer they take
	// requests from: the publisher provides it.
	want, err := rebuildConsumerConfig(&ConsumerOptions{FilterSubject: subj})
	if err != nil {
		return false, err
	}
	if err := c.provideForPublish(ctx, StreamRebuild, want); err != nil {
		return false, fmt.Errorf("queue: publish rebuild %s: %w", r.DrvPath, err)
	}
	ack, err := c.publish(ctx, subj, data, jetstream.WithMsgID(r.MsgID()), jetstream.WithExpectStream(StreamRebuild))
	if err != nil {
		return false, fmt.Errorf("queue: publish rebuild %s: %w", r.DrvPath, err)
	}
	return ack.Duplicate, nil
}

// ConsumeRebuilds runs h on the rebuild requests of one tenant and system
// through their durable consumer, RebuildConsumer(tenant, system), which
// every volunteer of that tenant and system shares; it is created (or
// updated) on REBUILD with explicit acks, or, for a tenant's runner,
// which may not, used as PublishRebuild provided it (ErrNoConsumer
// before then; AwaitConsumer waits for it). o works as for ConsumeResults,
// except:
//   - FilterSubject is required and must be a RebuildSubject: a work
//     queue allows one consumer per subject, so a volunteer serving
//     several systems runs one ConsumeRebuilds per system;
//   - Group must be empty: the consumer is named after the subject.
//
// Outcomes are ConsumeResults': nil acks, Permanent terminates, other
// errors are redelivered with a growing delay. On a work queue an ack or a
// term removes the request for every volunteer sharing the consumer.
func (c *Conn) ConsumeRebuilds(ctx context.Context, o ConsumerOptions, h Handler) (*Consumer, error) {
	if h == nil {
		return nil, errors.New("queue: consume rebuilds: nil handler")
	}
	if o.Group != "" {
		return nil, fmt.Errorf("queue: consume rebuilds: Group %q: must be empty, the consumer is named after the subject", o.Group)
	}
	want, err := rebuildConsumerConfig(&o)
	if err != nil {
		return nil, err
	}
	k, err := c.consume(ctx, StreamRebuild, want, o.Concurrency, c.log.With(logKeySubject, o.FilterSubject), h, true)
	if err != nil {
		return nil, fmt.Errorf("queue: consume rebuilds: %w", err)
	}
	return k, nil
}

// DefaultRebuildMaxDeliver bounds the deliveries of one rebuild request
// (ConsumeRebuilds' MaxDeliver when 0): a request every volunteer fails
// does not go round them for ever.
const DefaultRebuildMaxDeliver = 10

// rebuildConsumerConfig is the shared consumer of o.FilterSubject; it validates
// o and sets its defaults.
func rebuildConsumerConfig(o *ConsumerOptions) (jetstream.ConsumerConfig, error) {
	if o.MaxDeliver == 0 {
		o.MaxDeliver = DefaultRebuildMaxDeliver
	}
	tenant, system, err := parseRebuildSubject(o.FilterSubject)
	if err != nil {
		return jetstream.ConsumerConfig{}, fmt.Errorf("queue: consume rebuilds: %w", err)
	}
	if err := o.validateLimits(); err != nil {
		return jetstream.ConsumerConfig{}, fmt.Errorf("queue: consume rebuilds: %w", err)
	}
	return o.consumerConfig(RebuildConsumer(tenant, system), "Provenix volunteers rebuilding tenant "+tenant+" for "+system), nil
}

// parseRebuildSubject splits rebuild.<tenant>.<system>.
func parseRebuildSubject(subj string) (tenant, system string, err error) {
	parts := strings.Split(subj, ".")
	if len(parts) != 3 || parts[0] != subjectRebuild {
		return "", "", fmt.Errorf("%w: filter subject %q is not %s.<tenant>.<system>", ErrInvalidName, subj, subjectRebuild)
	}
	if err := ValidToken(parts[1]); err != nil {
		return "", "", fmt.Errorf("filter subject tenant: %w", err)
	}
	if err := ValidToken(parts[2]); err != nil {
		return "", "", fmt.Errorf("filter subject system: %w", err)
	}
	if strings.ContainsAny(subj, `/\`) {
		// The server stores a durable consumer under its name on disk.
		return "", "", fmt.Errorf("%w: filter subject %q contains a path separator", ErrInvalidName, subj)
	}
	return parts[1], parts[2], nil
}

func rebuildConfig(o StreamOptions) jetstream.StreamConfig {
	c := messageStream(o, StreamRebuild, "Provenix rebuild requests for volunteers, one work queue per tenant and system", subjectRebuild+".>")
	// WorkQueue: a request is work for one volunteer, done once acked.
	c.Retention = jetstream.WorkQueuePolicy
	c.Duplicates = min(rebuildDuplicates, o.MaxAge)
	c.MaxMsgSize = MaxRebuildSize + resultHeaderAllowance
	return c
}
