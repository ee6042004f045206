// Package cachepush publishes verified build results into a Nix binary
// cache. For each result it verifies the Sigstore bundle, applies the
// policy, streams the staged NAR while re-checking its hash and size,
// compresses it and writes it, then the provenance sidecar, then the signed
// narinfo, each atomically: a reader never sees a narinfo whose NAR or
// provenance is missing. A narinfo is written only once every path it
// refers to is visible (closure.go): until then the entry waits in
// JetStream. The message is acknowledged only after the narinfo or the
// waiting record is stored. Content-addressed paths (a result's sources,
// fixed-output derivations' outputs) are admitted without a quorum once
// their content address checks out (ca.go).
package cachepush

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"golang.org/x/sync/singleflight"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/ingest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/drvpath"
	"codeberg.org/provenix/provenix/metrics"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/vsa"
)

// Publication is the event published on events.<tenant>.published.
type Publication struct {
	Time      time.Time `json:"time"`
	MsgID     string    `json:"msgId,omitempty"`
	Tenant    string    `json:"tenant"`
	Builder   string    `json:"builder"`
	DrvPath   string    `json:"drvPath"`
	StorePath string    `json:"storePath"`
	NarSHA256 string    `json:"narSha256"`
	// Existing is true when the path was already in the cache with the
	// same NAR (a duplicate or a redelivery).
	Existing bool `json:"existing"`
}

// Staging reads staged NARs; *queue.Conn has it.
type Staging interface {
	OpenStaged(ctx context.Context, key string) (io.ReadCloser, queue.StagedInfo, error)
}

// Events records decisions; *queue.Conn has it.
type Events interface {
	PublishEvent(ctx context.Context, tenant, kind string, v any) error
}

// Rebuilds asks volunteers for verification builds; *queue.Conn has it.
type Rebuilds interface {
	PublishRebuild(ctx context.Context, r *queue.RebuildRequest) (bool, error)
}

// Config is what a Pusher needs. Store, Policy, CacheKey and Staging are
// required.
type Config struct {
	// KV holds votes, reputation and the entries waiting for their
	// references: results become votes and a path is published when the
	// policy's quorum agrees and its references are visible.
	KV       KV
	Store    store.Store
	Policy   *policy.Policy
	CacheKey signature.SecretKey
	Staging  Staging
	// Events, when set, receives a Rejection or Publication per result.
	Events Events
	// Verdicts, when set, hears of every path published, disputed or
	// left incomplete (forgestatus shows it on the forge); the pusher
	// closes it when it closes.
	Verdicts Verdicts
	// Rebuilds, when set, receives a rebuild request for a derivation
	// whose outputs need more votes, so volunteers can supply them.
	Rebuilds Rebuilds
	Logger   *slog.Logger
	Ingest   ingest.Options
	// Heartbeat is how often a long push tells the broker it is alive;
	// it must be well under the consumer's AckWait. Default 10s.
	Heartbeat time.Duration
	// Metrics, when set, counts results, rejections, votes and pushes;
	// nil records nothing.
	Metrics *metrics.Pusher
	// Upstreams are the binary caches the policy declares (in its
	// order), built by the caller from Policy.Upstreams: a reference
	// found in one counts as visible.
	Upstreams []Upstream
	// SweepEvery is how often the waiting entries are re-checked;
	// DefaultSweepEvery when 0.
	SweepEvery time.Duration
	// UpstreamFound and UpstreamMissing are how long an upstream's answer
	// is remembered when it has the path (DefaultUpstreamFound when 0)
	// and when it has not (DefaultUpstreamMissing when 0): a path an
	// upstream has stays there, one it lacks may arrive soon.
	UpstreamFound, UpstreamMissing time.Duration
	// MaxFailures is how many retryable failures of one result this
	// pusher accepts before it gives the result up, with a dead-letter
	// event (DefaultMaxFailures when 0). Outages that fail every result
	// alike (the store full, JetStream unreachable) are retried forever,
	// as is a result failing while no other result gets through.
	MaxFailures int
	// DeferDelay is how long a result waits when its builder already
	// occupies its share of the handlers (DefaultDeferDelay when 0).
	DeferDelay time.Duration
	// DrvCacheSize is how many derivations' computed output paths are
	// remembered (drvpath.DefaultCacheSize when 0); DrvLimits bound the
	// .drv files read from one closure export.
	DrvCacheSize int
	DrvLimits    nix.ExportDrvLimits
	// UncheckedOutputPathsUnsafe skips checking output paths against
	// their derivations (checkOutputPaths): for tests whose results name
	// made-up derivations, never for a cache anyone substitutes from.
	UncheckedOutputPathsUnsafe bool
	// VSA, when set, signs an SLSA verification summary of every path
	// the pusher publishes (cachelayout.VSAKey), stored before the
	// narinfo; on Open the pusher publishes the policy the summaries name
	// and who signs them (cachelayout.PolicyKey, VerifierKey).
	VSA *vsa.Signer
	// CacheURL is the cache's public base URL, which the summaries'
	// resource and policy URIs start with; without it they are relative
	// to the cache.
	CacheURL string
	// DiffTimeout bounds the comparison of a dispute's NARs whose summary
	// the disputed event carries (DefaultDiffTimeout when 0; negative: no
	// comparison).
	DiffTimeout time.Duration
	// ReputationFlush is how long the agreements counted while the
	// pusher is open may wait before they are stored, one update per
	// builder (DefaultReputationFlush when 0). A pusher killed loses
	// those not yet stored: see addAgreement for why that is safe.
	ReputationFlush time.Duration
}

// Pusher turns results into cache entries.
type Pusher struct {
	cfg      Config
	verifier *attest.Verifier
	vsa      *vsaState // nil without Config.VSA
	drvs     *drvpath.Calculator
	// exports shares one read of a closure export among the results
	// that need it at once (computeOutputs).
	exports singleflight.Group
	log     *slog.Logger

	mu       sync.Mutex
	consumer *queue.Consumer

	repMu    sync.Mutex
	repCache map[string]repEntry

	// Agreements not yet stored, per builder (see addAgreement), and
	// the flusher that stores them while open.
	agree     agreements
	agreeStop func(ctx context.Context)

	// Upstream answers by store path (see upstreamHas).
	upMu    sync.Mutex
	upCache map[string]upAnswer

	// Paths this pusher is writing now, closed when done (see
	// awaitInFlight).
	flightMu sync.Mutex
	inFlight map[string]chan struct{}

	// The sweeper of waiting entries, while open.
	sweepStop context.CancelFunc
	sweepDone chan struct{}

	// Fairness per builder and bounded failures (flood.go).
	flood floodState

	// Dispute summaries running in the background (explainDispute).
	diffSlots chan struct{}
	bg        sync.WaitGroup
}

// New checks cfg and returns a Pusher.
func New(cfg Config) (*Pusher, error) {
	if cfg.Store == nil || cfg.Policy == nil || cfg.Staging == nil || cfg.KV == nil {
		return nil, errors.New("cachepush: store, policy, staging and KV are required")
	}
	if cfg.CacheKey.String() == "" {
		return nil, errors.New("cachepush: no cache signing key")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 10 * time.Second
	}
	if cfg.SweepEvery <= 0 {
		cfg.SweepEvery = DefaultSweepEvery
	}
	if cfg.UpstreamFound <= 0 {
		cfg.UpstreamFound = DefaultUpstreamFound
	}
	if cfg.UpstreamMissing <= 0 {
		cfg.UpstreamMissing = DefaultUpstreamMissing
	}
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = DefaultMaxFailures
	}
	if cfg.DeferDelay <= 0 {
		cfg.DeferDelay = DefaultDeferDelay
	}
	if cfg.DiffTimeout == 0 {
		cfg.DiffTimeout = DefaultDiffTimeout
	}
	if cfg.ReputationFlush <= 0 {
		cfg.ReputationFlush = DefaultReputationFlush
	}
	v, err := cfg.Policy.Verifier()
	if err != nil {
		return nil, fmt.Errorf("cachepush: %w", err)
	}
	vs, err := newVSAState(&cfg)
	if err != nil {
		return nil, err
	}
	return &Pusher{cfg: cfg, verifier: v, vsa: vs, log: cfg.Logger, drvs: drvpath.NewCalculator(cfg.DrvCacheSize),
		diffSlots: make(chan struct{}, maxSummaryDiffs)}, nil
}

// Open starts consuming results as a member of the consumer group in o.
func (p *Pusher) Open(ctx context.Context, c *queue.Conn, o queue.ConsumerOptions) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.consumer != nil {
		return errors.New("cachepush: already open")
	}
	if err := ensureCacheInfo(ctx, p.cfg.Store); err != nil {
		return err
	}
	if err := p.publishVerifier(ctx); err != nil {
		return err
	}
	p.flood.mu.Lock()
	p.flood.share = builderShare(o.Concurrency)
	p.flood.mu.Unlock()
	p.agreeStop = p.startAgreements(p.cfg.ReputationFlush)
	k, err := c.ConsumeResults(ctx, o, p.Handle)
	if err != nil {
		p.agreeStop(ctx)
		p.agreeStop = nil
		return fmt.Errorf("cachepush: %w", err)
	}
	p.consumer = k
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.sweepStop, p.sweepDone = cancel, make(chan struct{})
	go p.sweeper(sctx, p.sweepDone)
	return nil
}

// ensureCacheInfo stores a nix-cache-info unless the cache has one. The
// cache server makes one up when it is missing, but with it stored the
// cache is complete as it lies: any HTTP front of the directory or bucket
// (a web server, a CDN, a public-read bucket) serves stock nix, not only
// `provenix cache serve`. An operator's own nix-cache-info is kept.
func ensureCacheInfo(ctx context.Context, st store.Store) error {
	const key = cachelayout.CacheInfoKey
	_, err := st.Stat(ctx, key)
	if err == nil {
		return nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("cachepush: %s: %w", key, err)
	}
	if err := store.Put(ctx, st, key, strings.NewReader(cachelayout.CacheInfo(0))); err != nil {
		return fmt.Errorf("cachepush: write %s: %w", key, err)
	}
	return nil
}

// Close stops pulling, lets in-flight pushes finish until ctx is done, then
// cancels them; an unfinished push is redelivered later. Last it stores
// the agreements not stored yet (see addAgreement), within
// queue.DefaultTimeout even when ctx is done.
func (p *Pusher) Close(ctx context.Context) error {
	p.mu.Lock()
	k := p.consumer
	p.consumer = nil
	stop, done := p.sweepStop, p.sweepDone
	p.sweepStop, p.sweepDone = nil, nil
	agreeStop := p.agreeStop
	p.agreeStop = nil
	p.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	// Dispute summaries end within DiffTimeout; their events are the
	// last a closing pusher publishes. The verdicts' sink closes after
	// the last verdict.
	if p.cfg.Verdicts != nil {
		defer func() {
			if err := p.cfg.Verdicts.Close(ctx); err != nil {
				p.log.Warn("verdicts not all reported", "err", err)
			}
		}()
	}
	defer p.bg.Wait()
	if agreeStop != nil {
		// Runs once the handlers are done: their agreements are all
		// pending by then.
		defer agreeStop(ctx)
	}
	if k == nil {
		return nil
	}
	k.Drain()
	select {
	case <-k.Closed():
		return nil
	case <-ctx.Done():
		k.Stop()
		<-k.Closed()
		return ctx.Err()
	}
}

// Handle is the queue.Handler: it pushes one delivery, keeping it alive
// with heartbeats while it works.
//
// No builder and no message can hold the consumer: a builder (as the
// message names it, unverified: this is scheduling, not trust) whose
// results lately failed or were rejected occupies at most half the
// handlers, its further results being deferred; and a
// result failing with a retryable error MaxFailures times is given up,
// with a dead-letter event, unless the failures look like an outage.
func (p *Pusher) Handle(ctx context.Context, d *queue.Delivery) error {
	r, derr := queue.DecodeResult(d.Data)
	builder := routingBuilderOf(r, d.Data)
	if !p.flood.acquire(builder) {
		p.cfg.Metrics.Deferred()
		return queue.Defer(deferDelay(p.cfg.DeferDelay, d.NumDelivered))
	}
	defer p.flood.release(builder)
	defer d.KeepAlive(ctx, p.cfg.Heartbeat, func(err error) {
		p.log.Warn("heartbeat failed", "msgId", d.MsgID, "err", err)
	})()
	err := p.process(ctx, d.Subject, d.Data, d.MsgID, r, derr)
	if err == nil || errors.Is(err, queue.ErrPermanent) {
		// Only a success shows that what every result needs works: junk
		// is rejected during an outage too.
		p.flood.done(d.Stream, err == nil)
		if err != nil {
			p.flood.distrust(builder)
		}
		return err
	}
	if ctx.Err() != nil {
		return err
	}
	if !outage(err) {
		p.flood.distrust(builder)
	}
	// Rejections were logged by reject. This is a failure a retry may
	// fix (the cache store full or unreachable, a broker hiccup): the
	// result comes back after a delay, and the operator must hear of
	// it, the more so when it needs them (a full disk).
	n := p.flood.failed(d.Stream)
	if n >= p.cfg.MaxFailures && !outage(err) && p.flood.progressing() {
		p.flood.done(d.Stream, false)
		p.deadLetter(ctx, d, builder, n, err)
		return queue.Permanent(fmt.Errorf("%w after %d failures: %w", ErrDeadLettered, n, err))
	}
	attrs := []any{"msgId", d.MsgID, "delivery", d.NumDelivered, "failures", n, "err", err}
	if errors.Is(err, store.ErrNoSpace) {
		p.log.Error("cache store full: result not pushed, will retry once space is freed", attrs...)
	} else {
		p.log.Warn("push failed, will retry", attrs...)
	}
	return err
}
