package wire

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/forgestatus"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/metrics"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/vsa"
)

// PusherOptions are what StartPusher wires together. Conn, Store, Policy,
// CacheKey, VSA, Tenant and Group are required.
type PusherOptions struct {
	// Conn is the pusher's NATS connection: its results consumer, the
	// staged NARs, the votes and builder records, events and rebuild
	// requests all go through it. Its streams must exist
	// (queue.Conn.EnsureStreams).
	Conn     *queue.Conn
	Store    store.Store
	Policy   *policy.Policy
	CacheKey signature.SecretKey
	// Logger and Metrics may be nil.
	Logger  *slog.Logger
	Metrics *metrics.Pusher
	// Tenant is whose results the pusher consumes, as a member of the
	// durable consumer Group.
	Tenant string
	Group  string
	// Concurrency is how many results it handles at once; 1 when 0 (the
	// queue's default): Store.DefaultConcurrency is the store's.
	Concurrency int
	// AckWait is how long a result may go unacknowledged before another
	// member of the group gets it (queue.DefaultAckWait when 0); a long
	// push heartbeats every third of it.
	AckWait time.Duration
	// MaxFailures is cachepush.Config.MaxFailures.
	MaxFailures int
	// VSA signs the verification summary of every path published
	// (cachepush.Config.VSA); required. CacheURL is the cache's public
	// base URL the summaries name, when known.
	VSA      *vsa.Signer
	CacheURL string
	// Forges, when set, are the forges the pusher shows its verdicts on
	// as commit statuses (forgestatus); the pusher closes its notifier.
	Forges *forgestatus.Forges
}

// StartPusher builds a pusher from o (the policy's upstream caches
// included) and starts it consuming o.Tenant's results. The caller
// closes it with Pusher.Close.
func StartPusher(ctx context.Context, o PusherOptions) (*cachepush.Pusher, error) {
	var errs []error
	if o.Conn == nil || o.Store == nil || o.Policy == nil || o.VSA == nil {
		errs = append(errs, errors.New("a NATS connection, a store, a policy and a VSA signer are required"))
	}
	if o.Tenant == "" || o.Group == "" {
		errs = append(errs, errors.New("tenant and group are required"))
	}
	if o.AckWait != 0 && o.AckWait < 3*time.Second {
		errs = append(errs, fmt.Errorf("ack wait %s: at least 3s (a push heartbeats every third of it)", o.AckWait))
	}
	if o.MaxFailures < 0 {
		errs = append(errs, fmt.Errorf("max failures %d is negative", o.MaxFailures))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: pusher: %w", ErrOptions, errors.Join(errs...))
	}
	ups, err := cachepush.UpstreamsFor(o.Policy, nil)
	if err != nil {
		return nil, err
	}
	cfg := cachepush.Config{
		KV: o.Conn, Rebuilds: o.Conn, Staging: o.Conn, Events: o.Conn,
		Store: o.Store, Policy: o.Policy, CacheKey: o.CacheKey, Logger: o.Logger, Metrics: o.Metrics,
		Upstreams: ups, MaxFailures: o.MaxFailures, VSA: o.VSA, CacheURL: o.CacheURL,
	}
	if o.AckWait > 0 {
		// Well under AckWait, so a slow push keeps its message.
		cfg.Heartbeat = o.AckWait / 3
	}
	if o.Forges != nil {
		n, err := forgestatus.Open(forgestatus.Options{Forges: o.Forges, Store: o.Store, KV: o.Conn, Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		cfg.Verdicts = n
	}
	pu, err := cachepush.New(cfg)
	if err != nil {
		if cfg.Verdicts != nil {
			cfg.Verdicts.Close(ctx)
		}
		return nil, err
	}
	co := queue.ConsumerOptions{Group: o.Group, FilterSubject: queue.ResultsFilter(o.Tenant), Concurrency: o.Concurrency, AckWait: o.AckWait}
	if err := pu.Open(ctx, o.Conn, co); err != nil {
		if cfg.Verdicts != nil {
			cfg.Verdicts.Close(ctx)
		}
		return nil, err
	}
	return pu, nil
}
