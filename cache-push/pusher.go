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
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/ingest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/contentaddr"
	"codeberg.org/provenix/provenix/drvpath"
	"codeberg.org/provenix/provenix/metrics"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/storepath"
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
}

// Pusher turns results into cache entries.
type Pusher struct {
	cfg      Config
	verifier *attest.Verifier
	drvs     *drvpath.Calculator
	log      *slog.Logger

	mu       sync.Mutex
	consumer *queue.Consumer

	repMu    sync.Mutex
	repCache map[string]repEntry

	// Agreements not yet stored, per builder (see addAgreement).
	agreeMu       sync.Mutex
	agreePending  map[string]int
	agreeFlushing map[string]bool

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
	v, err := cfg.Policy.Verifier()
	if err != nil {
		return nil, fmt.Errorf("cachepush: %w", err)
	}
	return &Pusher{cfg: cfg, verifier: v, log: cfg.Logger, drvs: drvpath.NewCalculator(cfg.DrvCacheSize)}, nil
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
	p.flood.mu.Lock()
	p.flood.share = builderShare(o.Concurrency)
	p.flood.mu.Unlock()
	k, err := c.ConsumeResults(ctx, o, p.Handle)
	if err != nil {
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
// cancels them; an unfinished push is redelivered later.
func (p *Pusher) Close(ctx context.Context) error {
	p.mu.Lock()
	k := p.consumer
	p.consumer = nil
	stop, done := p.sweepStop, p.sweepDone
	p.sweepStop, p.sweepDone = nil, nil
	p.mu.Unlock()
	if stop != nil {
		stop()
		<-done
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
	builder := routingBuilder(d.Data)
	if !p.flood.acquire(builder) {
		p.cfg.Metrics.Deferred()
		return queue.Defer(deferDelay(p.cfg.DeferDelay, d.NumDelivered))
	}
	defer p.flood.release(builder)
	defer d.KeepAlive(ctx, p.cfg.Heartbeat, func(err error) {
		p.log.Warn("heartbeat failed", "msgId", d.MsgID, "err", err)
	})()
	err := p.Process(ctx, d.Subject, d.Data, d.MsgID)
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

// Process pushes one result message. It returns nil when the result is in
// the cache (now or already), an error wrapping ErrRejected and
// queue.ErrPermanent when it must never be retried, and any other error
// when it may succeed later.
func (p *Pusher) Process(ctx context.Context, subject string, data []byte, msgID string) error {
	p.cfg.Metrics.Received()
	rej := Rejection{Tenant: tenantOf(subject), MsgID: msgID}
	r, err := queue.DecodeResult(data)
	if err != nil {
		reason := ReasonMalformed
		if errors.Is(err, queue.ErrTooLarge) {
			reason = ReasonTooLarge
		} else if b, serr := p.signedMalformed(data); b != "" {
			// Signed by a trusted builder: its fault, whoever relayed it.
			rej.Builder = b
			p.chargeMalformed(ctx, b, rawBundle(data))
			err = fmt.Errorf("%w; builder %s signed it: %w", err, b, serr)
		}
		return p.reject(ctx, rej, rejected(reason, err))
	}
	rej.Tenant, rej.Builder, rej.DrvPath, rej.System = r.Tenant, r.Builder, r.DrvPath, r.System
	if want, err := queue.ResultsSubject(r.Tenant, r.System); err != nil || want != subject {
		return p.reject(ctx, rej, rejected(ReasonInconsistent, fmt.Errorf("result for %s.%s arrived on subject %q", r.Tenant, r.System, subject)))
	}
	if err := p.cfg.Policy.Check(r); err != nil {
		return p.reject(ctx, rej, rejected(ReasonPolicy, err))
	}
	want := make([]attest.Subject, 0, len(r.Outputs))
	for _, o := range r.Outputs {
		// Validate (in DecodeResult) checked the hex shape.
		s := attest.Subject{Path: o.Path}
		hex.Decode(s.NarHash[:], []byte(o.NarHash))
		want = append(want, s)
	}
	v, err := p.verifier.Verify(r.Bundle, want)
	var sm *attest.SignedMalformedError
	if errors.As(err, &sm) {
		rej.Builder = sm.BuilderID
		p.chargeMalformed(ctx, sm.BuilderID, r.Bundle)
		return p.reject(ctx, rej, rejected(ReasonMalformed, err))
	}
	if err != nil {
		return p.reject(ctx, rej, rejected(ReasonVerification, err))
	}
	if err := statementErr(v); err != nil {
		// What the builder signed is malformed: its fault.
		rej.Builder = v.BuilderID
		p.chargeMalformed(ctx, v.BuilderID, r.Bundle)
		return p.reject(ctx, rej, rejected(ReasonMalformed, fmt.Errorf("builder %s signed a malformed statement: %w", v.BuilderID, err)))
	}
	if err := consistent(r, v); err != nil {
		return p.reject(ctx, rej, rejected(ReasonInconsistent, err))
	}
	if err := p.cfg.Policy.CheckSource(v.External); err != nil {
		return p.reject(ctx, rej, rejected(ReasonPolicy, err))
	}
	if err := p.cfg.Policy.CheckIsolation(v.External); err != nil {
		return p.reject(ctx, rej, rejected(ReasonPolicy, err))
	}
	if err := p.checkOutputPaths(ctx, r, v); err != nil {
		var re *RejectedError
		if errors.As(err, &re) {
			if errors.Is(re, ErrOutputPath) {
				// The signed statement names an output its own
				// derivation (content-addressed, so authentic) does not
				// compute: the builder's claim is false.
				p.chargeMalformed(ctx, v.BuilderID, r.Bundle)
			}
			return p.reject(ctx, rej, re)
		}
		return fmt.Errorf("output paths of %s: %w", v.DrvPath, err)
	}
	// From here on, paths referring to these may wait for this handler.
	for _, o := range r.Outputs {
		defer p.flying(o.Path)()
	}
	for _, o := range r.Sources {
		defer p.flying(o.Path)()
	}

	byPath := make(map[string]attest.Output, len(v.Outputs))
	for _, o := range v.Outputs {
		byPath[o.Path] = o
	}
	needMore := false
	defer func() {
		if needMore {
			p.requestRebuild(ctx, r)
		}
	}()
	fail := func(path string, err error) error {
		var re *RejectedError
		if errors.As(err, &re) {
			return p.reject(ctx, rej, re)
		}
		if unfixable(err) {
			// An invalid key or name, a value that does not decode: the
			// same again next time.
			return p.reject(ctx, rej, rejected(ReasonMalformed, fmt.Errorf("push %s: %w", path, err)))
		}
		return fmt.Errorf("push %s: %w", path, err)
	}
	// Sources first: the outputs usually refer to them, and find them
	// visible instead of waiting.
	for _, src := range r.Sources {
		out := attest.Output{Name: src.Name, Path: src.Path, NarSize: src.NarSize, References: src.References}
		hex.Decode(out.NarHash[:], []byte(src.NarHash)) // Validate checked the shape
		c, err := checkCAPathIn(src.CA, out)
		if err != nil {
			return p.reject(ctx, rej, rejected(ReasonContentAddress, err))
		}
		m := entryMeta{tenant: r.Tenant, builder: r.Builder, msgID: msgID, ca: &c}
		oc, err := p.writeEntry(ctx, m, out, src.StagingKey, nil, nil, nil)
		if err != nil {
			return fail(src.Path, err)
		}
		p.report(ctx, m, out, oc)
	}
	for _, o := range outputOrder(r.Outputs, byPath) {
		var oc outcome
		var err error
		out := byPath[o.Path]
		m := entryMeta{tenant: r.Tenant, builder: r.Builder, msgID: msgID, drv: v.DrvPath}
		if o.CA != "" {
			// A fixed-output derivation's output: its content is fixed by
			// the derivation, so one trusted builder's result suffices.
			c, cerr := checkCAPathIn(o.CA, out)
			if cerr != nil {
				return p.reject(ctx, rej, rejected(ReasonContentAddress, cerr))
			}
			m.ca = &c
			oc, err = p.writeEntry(ctx, m, out, o.StagingKey, []json.RawMessage{r.Bundle},
				nonEmpty(p.checkNixSig(v.BuilderID, o.NixSig, out)), nil)
		} else {
			var pending bool
			oc, pending, err = p.vote(ctx, r, v, out, o, msgID)
			needMore = needMore || pending
		}
		if err != nil {
			return fail(o.Path, err)
		}
		p.report(ctx, m, out, oc)
	}
	return nil
}

// outcome is what became of one output.
type outcome int

const (
	outPending   outcome = iota // more votes needed
	outWaiting                  // decided, waiting for its references
	outPublished                // made visible now
	outExisting                 // was visible already
	outReleased                 // made visible, and reported, by settle
)

// entryMeta is where an entry comes from.
type entryMeta struct {
	tenant, builder, msgID, drv string
	ca                          *contentaddr.CA // content-addressed paths only
}

// report records a visible entry (publication event, metric, log) and
// releases what waits for it.
func (p *Pusher) report(ctx context.Context, m entryMeta, out attest.Output, oc outcome) {
	if oc != outPublished && oc != outExisting {
		return
	}
	p.published(ctx, &Waiting{Tenant: m.tenant, StorePath: out.Path, DrvPath: m.drv, Builder: m.builder, MsgID: m.msgID,
		NarSHA256: out.NarHashHex()}, oc == outExisting)
	p.releaseWaiters(ctx, m.tenant, out.Path)
}

// checkCAPathIn is checkCAPath for a path that must be in storepath.Dir.
func checkCAPathIn(ca string, out attest.Output) (contentaddr.CA, error) {
	if err := storepath.Check(out.Path); err != nil {
		return contentaddr.CA{}, fmt.Errorf("%w: %w", ErrContentAddress, err)
	}
	return checkCAPath(ca, out)
}

// writeEntry publishes one output: NAR from staging (re-hashed while
// compressed, its content address checked when it has one), provenance
// sidecar with bundles, then the narinfo signed by the cache plus the
// builders' Nix signatures — or, while a reference is not visible, the
// waiting record. When the path is already published with the same NAR
// it only adds new bundles and signatures (outExisting). A different NAR
// already published is a conflict.
func (p *Pusher) writeEntry(ctx context.Context, m entryMeta, out attest.Output, stagingKey string, bundles []json.RawMessage, sigs []string, q *cachelayout.QuorumInfo) (outcome, error) {
	if prev, err := p.existing(ctx, out.Path); err != nil {
		return 0, err
	} else if prev != nil {
		return p.mergeEntry(ctx, prev, out, bundles, sigs, q)
	}
	if oc, ok, err := p.mergeWaiting(ctx, m, out, bundles, sigs, q); ok || err != nil {
		return oc, err
	}

	start := time.Now()
	rc, info, err := p.cfg.Staging.OpenStaged(ctx, stagingKey)
	if errors.Is(err, queue.ErrNotFound) {
		return 0, rejected(ReasonStaging, fmt.Errorf("staged NAR %s: %w", stagingKey, err))
	}
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	if info.Size != out.NarSize {
		return 0, rejected(narMismatchReason(stagingKey), fmt.Errorf("%w: staged NAR %s has %d bytes, attested %d", ingest.ErrNarSizeMismatch, stagingKey, info.Size, out.NarSize))
	}
	var src io.Reader = rc
	if m.ca != nil {
		cr := newCAReader(rc, *m.ca, out.Path)
		defer cr.Close()
		src = cr
	}
	ingestStart := time.Now()
	nar, err := ingest.NAR(ctx, p.cfg.Store, src, ingest.Expect{NarHash: out.NarHash, NarSize: out.NarSize}, p.cfg.Ingest)
	if errors.Is(err, ErrContentAddress) {
		return 0, rejected(ReasonContentAddress, err)
	}
	if errors.Is(err, ingest.ErrMismatch) {
		return 0, rejected(narMismatchReason(stagingKey), err)
	}
	if err != nil {
		return 0, err
	}
	p.cfg.Metrics.Ingest(nar.NarSize, time.Since(ingestStart))

	if err := p.writeProvenance(ctx, out, bundles, q); err != nil {
		return 0, err
	}
	ca := ""
	if m.ca != nil {
		ca = m.ca.String()
	}
	ni, err := newNarinfo(out, m.drv, nar, p.cfg.CacheKey, ca)
	if err != nil {
		return 0, rejected(ReasonInconsistent, err)
	}
	addSigs(ni, sigs, p.cfg.Policy)
	// Another member of the group may have published the path while this
	// one ingested it: a result is redelivered when its holder's
	// heartbeats are lost, as in a stream leader election. Merge into that
	// narinfo instead of replacing it, so the entry is written once.
	if prev, err := p.existing(ctx, out.Path); err != nil {
		return 0, err
	} else if prev != nil {
		return p.mergeEntry(ctx, prev, out, bundles, sigs, q)
	}
	refStart := time.Now()
	missing, err := p.missingRefs(ctx, out.Path, out.References)
	if err != nil {
		return 0, err
	}
	p.cfg.Metrics.RefCheck(time.Since(refStart))
	if len(missing) > 0 && p.awaitInFlight(ctx, missing) {
		if missing, err = p.missingRefs(ctx, out.Path, out.References); err != nil {
			return 0, err
		}
	}
	w := &Waiting{Tenant: m.tenant, StorePath: out.Path, DrvPath: m.drv, Builder: m.builder, MsgID: m.msgID,
		NarSHA256: out.NarHashHex(), Narinfo: ni.String(), References: out.References, Missing: missing}
	if len(missing) > 0 {
		return p.waitOutcome(p.wait(ctx, w))
	}
	// The narinfo goes last: once it is visible, its NAR, provenance and
	// references are.
	ok, err := p.makeVisible(ctx, w)
	if err != nil {
		return 0, err
	}
	if !ok {
		return outWaiting, nil
	}
	p.landed(out.Path)
	p.cfg.Metrics.Push(nar.FileSize, time.Since(start))
	return outPublished, nil
}

func (p *Pusher) waitOutcome(visible bool, err error) (outcome, error) {
	if err != nil {
		return 0, err
	}
	if visible {
		return outReleased, nil
	}
	return outWaiting, nil
}

// mergeWaiting handles a path that already waits: the same NAR (a
// redelivery, another builder's vote) adds its bundles and signatures to
// the waiting entry without ingesting the NAR again; a different NAR is a
// conflict. It reports false when nothing waits (or the waiting entry's
// NAR is gone), and the caller ingests.
func (p *Pusher) mergeWaiting(ctx context.Context, m entryMeta, out attest.Output, bundles []json.RawMessage, sigs []string, q *cachelayout.QuorumInfo) (outcome, bool, error) {
	w, err := GetWaiting(ctx, p.cfg.KV, m.tenant, out.Path)
	if errors.Is(err, queue.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if w.NarSHA256 != out.NarHashHex() {
		return 0, false, rejected(ReasonConflict, fmt.Errorf("%s already waits with NAR sha256 %s; this result says %s", out.Path, w.NarSHA256, out.NarHashHex()))
	}
	ni, err := narinfo.Parse(strings.NewReader(w.Narinfo))
	if err != nil {
		return 0, false, nil
	}
	if _, err := p.cfg.Store.Stat(ctx, ni.URL); err != nil {
		return 0, false, nil
	}
	if err := p.writeProvenance(ctx, out, bundles, q); err != nil {
		return 0, false, err
	}
	if addSigs(ni, sigs, p.cfg.Policy) {
		w.Narinfo = ni.String()
	}
	oc, err := p.waitOutcome(p.wait(ctx, w))
	return oc, true, err
}

// mergeEntry adds out's bundles and signatures to the entry prev already
// published for its path, and reports true; a different NAR there is a
// conflict.
func (p *Pusher) mergeEntry(ctx context.Context, prev *narinfo.NarInfo, out attest.Output, bundles []json.RawMessage, sigs []string, q *cachelayout.QuorumInfo) (outcome, error) {
	if prev.StorePath != out.Path {
		// The same hash part under another name: the narinfo key is the
		// hash part, so this would rewrite another path's sidecar.
		return 0, rejected(ReasonConflict, fmt.Errorf("%s: its hash part is already published as %s", out.Path, prev.StorePath))
	}
	h, err := narHashOf(prev)
	if err != nil {
		return 0, rejected(ReasonConflict, fmt.Errorf("existing %w", err))
	}
	if h != out.NarHash {
		return 0, rejected(ReasonConflict, fmt.Errorf("%s is already published with NAR sha256 %x; this result says %x", out.Path, h, out.NarHash))
	}
	if err := p.writeProvenance(ctx, out, bundles, q); err != nil {
		return 0, err
	}
	if added := addSigs(prev, sigs, p.cfg.Policy); added {
		if err := store.Put(ctx, p.cfg.Store, cachelayout.NarinfoKey(out.Path), strings.NewReader(prev.String())); err != nil {
			return 0, err
		}
	}
	return outExisting, nil
}

// addSigs adds the signatures ni lacks and reports whether it added any.
//
// A builder's signature goes in only when it verifies, with the key the
// policy gives that builder's key name, over this narinfo's fingerprint:
// it was checked against the builder's own vote, and a narinfo whose
// references or size differ from what the builder signed must not carry
// a signature clients would then reject (or, with another key set, trust).
func addSigs(ni *narinfo.NarInfo, sigs []string, pol *policy.Policy) bool {
	fp := ni.Fingerprint()
	return appendSigs(ni, sigs, func(sig signature.Signature) bool {
		k, ok := pol.NixKeyNamed(sig.Name)
		return ok && k.Verify(fp, sig)
	})
}

// appendSigs adds the signatures ni lacks that ok accepts (all, when ok
// is nil) and reports whether it added any.
func appendSigs(ni *narinfo.NarInfo, sigs []string, ok func(signature.Signature) bool) bool {
	added := false
	for _, s := range sigs {
		sig, err := signature.ParseSignature(s)
		if err != nil || (ok != nil && !ok(sig)) {
			continue
		}
		dup := false
		for _, have := range ni.Signatures {
			if have.String() == sig.String() {
				dup = true
			}
		}
		if !dup {
			ni.Signatures = append(ni.Signatures, sig)
			added = true
		}
	}
	return added
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// existing returns the narinfo already published for storePath, or nil.
func (p *Pusher) existing(ctx context.Context, storePath string) (*narinfo.NarInfo, error) {
	b, err := store.ReadAll(ctx, p.cfg.Store, cachelayout.NarinfoKey(storePath), maxNarinfoSize)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil {
		// Retrying cannot fix it, and overwriting could hide tampering:
		// refuse, and let the operator look.
		return nil, rejected(ReasonConflict, fmt.Errorf("existing narinfo for %s does not parse: %w", storePath, err))
	}
	return ni, nil
}

// writeProvenance stores the sidecar for out, keeping bundles already
// there for the same NAR (from other builders, or earlier runs).
func (p *Pusher) writeProvenance(ctx context.Context, out attest.Output, add []json.RawMessage, q *cachelayout.QuorumInfo) error {
	if len(add) == 0 {
		// A source: its content address is its proof, no bundle attests it.
		return nil
	}
	sc := &cachelayout.Provenance{Version: cachelayout.ProvenanceVersion, StorePath: out.Path, NarSHA256: out.NarHashHex(), Quorum: q}
	if b, err := store.ReadAll(ctx, p.cfg.Store, cachelayout.ProvenanceKey(out.Path), maxNarinfoSize*4); err == nil {
		prev, perr := cachelayout.ParseProvenance(b)
		if perr == nil && prev.StorePath != sc.StorePath {
			// Never rewrite another path's sidecar (same hash part, other
			// name, maybe the same NAR).
			return rejected(ReasonConflict, fmt.Errorf("%s: the provenance at its hash part is %s's", out.Path, prev.StorePath))
		}
		if perr == nil && prev.NarSHA256 == sc.NarSHA256 {
			sc.Bundles = prev.Bundles
			if sc.Quorum == nil {
				sc.Quorum = prev.Quorum
			}
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	for _, bundle := range add {
		dup := false
		for _, b := range sc.Bundles {
			if sameJSON(b, bundle) {
				dup = true
				break
			}
		}
		if !dup {
			sc.Bundles = append(sc.Bundles, bundle)
		}
	}
	b, err := json.MarshalIndent(sc, "", "  ")
	if err != nil {
		return fmt.Errorf("provenance sidecar: %w", err)
	}
	return store.Put(ctx, p.cfg.Store, cachelayout.ProvenanceKey(out.Path), bytes.NewReader(b))
}

// consistent checks that the unsigned fields of r say what the verified
// Statement says; the cache is written from the Statement alone.
func consistent(r *queue.Result, v *attest.Verified) error {
	if v.DrvPath != r.DrvPath || v.System != r.System || v.BuilderID != r.Builder {
		return fmt.Errorf("result says %s/%s by %s, its statement %s/%s by %s",
			r.DrvPath, r.System, r.Builder, v.DrvPath, v.System, v.BuilderID)
	}
	if len(v.Outputs) != len(r.Outputs) {
		return fmt.Errorf("result has %d outputs, its statement %d", len(r.Outputs), len(v.Outputs))
	}
	if err := storepath.Check(v.DrvPath); err != nil {
		return fmt.Errorf("derivation: %w", err)
	}
	byPath := make(map[string]attest.Output, len(v.Outputs))
	for _, o := range v.Outputs {
		byPath[o.Path] = o
	}
	for _, o := range r.Outputs {
		s := byPath[o.Path]
		if s.NarSize != o.NarSize || s.Name != o.Name {
			return fmt.Errorf("output %s: result says %s, %d bytes; statement %s, %d bytes", o.Path, o.Name, o.NarSize, s.Name, s.NarSize)
		}
		if err := storepath.Check(o.Path); err != nil {
			return fmt.Errorf("output: %w", err)
		}
		for _, ref := range s.References {
			if err := storepath.Check(ref); err != nil {
				return fmt.Errorf("output %s: reference: %w", o.Path, err)
			}
		}
	}
	return nil
}

func (p *Pusher) event(ctx context.Context, tenant, kind string, v any) {
	if p.cfg.Events == nil {
		return
	}
	if queue.ValidToken(tenant) != nil {
		tenant = "_unknown"
	}
	if err := p.cfg.Events.PublishEvent(ctx, tenant, kind, v); err != nil {
		// The decision stands and is logged; losing its event is not a
		// reason to redo a push.
		p.log.Warn("event not published", "kind", kind, "err", err)
	}
}

// tenantOf reads the tenant token of a results.<tenant>.<system> subject.
func tenantOf(subject string) string {
	parts := strings.Split(subject, ".")
	if len(parts) == 3 {
		return parts[1]
	}
	return ""
}

// sameJSON compares two JSON documents ignoring layout: the sidecar is
// written indented, bundles arrive compact.
func sameJSON(a, b []byte) bool {
	var ca, cb bytes.Buffer
	if json.Compact(&ca, a) != nil || json.Compact(&cb, b) != nil {
		return bytes.Equal(a, b)
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}

// requestRebuild asks volunteers to build r's derivation. The request is
// deduplicated per derivation by the stream, so every pending vote may ask.
func (p *Pusher) requestRebuild(ctx context.Context, r *queue.Result) {
	if p.cfg.Rebuilds == nil {
		return
	}
	req := &queue.RebuildRequest{Version: queue.RebuildVersion, Tenant: r.Tenant, System: r.System, DrvPath: r.DrvPath,
		Closure: r.Closure, Requested: time.Now().UTC()}
	for _, o := range r.Outputs {
		req.Outputs = append(req.Outputs, o.Path)
	}
	if _, err := p.cfg.Rebuilds.PublishRebuild(ctx, req); err != nil {
		p.log.Warn("rebuild request not published", "drv", r.DrvPath, "err", err)
		return
	}
	p.log.Info("rebuild requested", "drv", r.DrvPath, "system", r.System)
}
