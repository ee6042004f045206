package forgestatus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/forgeapi"
	"codeberg.org/provenix/provenix/internal/retry"
	"codeberg.org/provenix/provenix/queue"
)

// Defaults of Options.
const (
	DefaultWorkers   = 2
	DefaultQueueSize = 1024
)

// DefaultRetry is how a status is retried: a few attempts within two
// minutes, then it is dropped with a log (the next verdict on the same
// commit sends the whole record again).
var DefaultRetry = retry.Policy{Initial: time.Second, Max: 30 * time.Second, Jitter: 0.3, Attempts: 5, MaxElapsed: 2 * time.Minute}

// maxSidecar bounds the provenance sidecar read for a verdict.
const maxSidecar = 64 << 20

// resends bounds how often a worker sends again because the record
// changed while it sent.
const resends = 5

// Options are what Open needs; Forges, Store and KV are required.
type Options struct {
	Forges *Forges
	// Store is the pusher's cache store: the sidecars of published paths
	// are read from it.
	Store store.Store
	// KV holds the records per commit (BucketWaiting): the pusher's.
	KV     cachepush.KV
	Logger *slog.Logger
	// Workers send statuses at once (DefaultWorkers when 0); QueueSize
	// verdicts wait for them (DefaultQueueSize when 0), the rest are
	// dropped with a log.
	Workers, QueueSize int
	// Retry is how one status is retried (DefaultRetry unless it bounds
	// attempts or time).
	Retry retry.Policy
}

// Notifier sets commit statuses from the pusher's verdicts: a
// cachepush.Verdicts.
type Notifier struct {
	o      Options
	log    *slog.Logger
	http   *http.Client
	queue  chan cachepush.Verdict
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.RWMutex // guards closed against Verdict
	closed  bool
	dropped atomic.Uint64

	clientMu sync.Mutex
	clients  map[string]*forgeapi.Client // by forge URL; successes only
}

var _ cachepush.Verdicts = (*Notifier)(nil)

// Open checks o and starts the workers; Close stops them.
func Open(o Options) (*Notifier, error) {
	if o.Forges == nil || o.Store == nil || o.KV == nil {
		return nil, errors.New("forgestatus: forges, store and KV are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.Retry.Attempts <= 0 && o.Retry.MaxElapsed <= 0 {
		// Never unbounded: a dead forge must not hold a worker.
		o.Retry = DefaultRetry
	}
	n := &Notifier{o: o, log: o.Logger.With("part", "forgestatus"), queue: make(chan cachepush.Verdict, o.QueueSize),
		clients: map[string]*forgeapi.Client{},
		// A token goes to its own forge only: a redirect (to another
		// host, or one the forge was made to answer) is not followed.
		http: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	for range o.Workers {
		n.wg.Add(1)
		go n.work(ctx)
	}
	return n, nil
}

// Verdict queues v; it never blocks: with the queue full, v is dropped
// and logged.
func (n *Notifier) Verdict(v cachepush.Verdict) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.closed {
		return
	}
	select {
	case n.queue <- v:
	default:
		// Logged once per 1,000, not per verdict: a flood of results
		// must not become a flood of log lines.
		if d := n.dropped.Add(1); d%1000 == 1 {
			n.log.Warn("commit status dropped: too many waiting", "path", v.StorePath, "verdict", v.Kind, "dropped", d)
		}
	}
}

// DrainTimeout bounds how long Close lets the workers send what is
// queued: a forge that does not answer must not hold a pusher's shutdown.
const DrainTimeout = 10 * time.Second

// Close takes no more verdicts, lets the workers send what is queued
// until ctx ends (DrainTimeout at most), then cancels them.
func (n *Notifier) Close(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, DrainTimeout)
	defer cancel()
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		close(n.queue)
	}
	n.mu.Unlock()
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
		n.cancel()
		return nil
	case <-ctx.Done():
		n.cancel()
		<-done
		return fmt.Errorf("forgestatus: closed with statuses unsent: %w", ctx.Err())
	}
}

func (n *Notifier) work(ctx context.Context) {
	defer n.wg.Done()
	for v := range n.queue {
		n.handle(ctx, v)
	}
}

// target is one commit a verdict is reported on.
type target struct {
	forge       *Forge
	owner, repo string
	sha, system string
}

// handle reports v on every commit it concerns; failures are logged.
func (n *Notifier) handle(ctx context.Context, v cachepush.Verdict) {
	ts, note, err := n.targets(ctx, v)
	if err != nil {
		n.log.Warn("commit status not set", "path", v.StorePath, "verdict", v.Kind, "err", err)
		return
	}
	for _, t := range ts {
		if err := n.report(ctx, t, v.StorePath, pathVerdict{Kind: v.Kind, Note: note}); err != nil {
			n.log.Warn("commit status not set", "path", v.StorePath, "verdict", v.Kind,
				"forge", t.forge.URL, "repo", t.owner+"/"+t.repo, "sha", t.sha, "err", err)
		}
	}
}

// targets are the commits v concerns, from the signed forge jobs of its
// bundles (a dispute's) or of its sidecar's (a published or incomplete
// path's), keeping only those the forges file lets their builder name;
// and what to say of the path.
func (n *Notifier) targets(ctx context.Context, v cachepush.Verdict) ([]target, string, error) {
	bundles := v.Bundles
	var q *cachelayout.QuorumInfo
	if v.Kind != queue.EventDisputed {
		b, err := store.ReadAll(ctx, n.o.Store, cachelayout.ProvenanceKey(v.StorePath), maxSidecar)
		if err != nil {
			return nil, "", fmt.Errorf("provenance sidecar: %w", err)
		}
		side, err := cachelayout.ParseProvenance(b)
		if err != nil {
			return nil, "", err
		}
		bundles, q = side.Bundles, side.Quorum
	}
	var ts []target
	builders, answers := map[string]bool{}, map[string]bool{}
	for _, b := range bundles {
		// Every bundle here was verified before it became a vote or
		// went into the sidecar: its builder id is the signer's.
		prov, err := attest.InspectUnverified(b)
		if err != nil {
			continue
		}
		builders[prov.BuilderID] = true
		for _, o := range prov.Outputs {
			if o.Path == v.StorePath {
				// Answers differ in the NAR or in the references
				// (cachepush.Vote.Answer).
				refs := slices.Sorted(slices.Values(o.References))
				answers[o.NarHashHex()+" "+strings.Join(refs, ",")] = true
			}
		}
		if t, ok := n.target(prov, v.StorePath); ok && !slices.Contains(ts, t) {
			ts = append(ts, t)
		}
	}
	return ts, note(v, q, len(builders), len(answers)), nil
}

// shaRE is a git commit id (SHA-1 or SHA-256).
var shaRE = regexp.MustCompile(`^(?:[0-9a-f]{40}|[0-9a-f]{64})$`)

// nameRE is an owner or repository name a forge accepts.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// target is the commit prov's signed forge job names, if the forges file
// lets prov's builder report there; logged when refused.
func (n *Notifier) target(prov *attest.Provenance, storePath string) (target, bool) {
	w := prov.External.Workflow
	if w == nil || w.Server == "" || w.Repository == "" || w.Sha == "" {
		return target{}, false // not built in a forge job
	}
	refuse := func(why string) (target, bool) {
		n.log.Warn("commit status not set: "+why, "path", storePath, "builder", prov.BuilderID,
			"forge", w.Server, "repo", w.Repository, "sha", w.Sha)
		return target{}, false
	}
	u, err := NormalizeURL(w.Server)
	if err != nil {
		return refuse("malformed forge URL")
	}
	f := n.o.Forges.find(u)
	if f == nil {
		return refuse("forge not in the forges file")
	}
	owner, repo, err := forgeapi.SplitRepo(w.Repository)
	if err != nil || !nameRE.MatchString(owner) || !nameRE.MatchString(repo) || owner == "." || owner == ".." || repo == "." || repo == ".." {
		return refuse("malformed repository")
	}
	if !shaRE.MatchString(w.Sha) {
		return refuse("malformed commit")
	}
	if !f.allows(prov.BuilderID, owner+"/"+repo) {
		return refuse("builder or repository not allowed for the forge")
	}
	return target{forge: f, owner: owner, repo: repo, sha: w.Sha, system: prov.System}, true
}

// note is what the status says of one path.
func note(v cachepush.Verdict, q *cachelayout.QuorumInfo, builders, answers int) string {
	switch v.Kind {
	case queue.EventDisputed:
		// A dispute has two answers at least, whatever bundles came.
		return fmt.Sprintf("%d builders gave %d different answers", builders, max(answers, 2))
	case queue.EventPublished:
		switch {
		case q == nil:
			return fmt.Sprintf("published; %d builders attest it", builders)
		case q.UnverifiedByQuorum:
			return "published from the trusted builder; builders disagree"
		}
		return fmt.Sprintf("%d of %d independent builders agree", len(q.Agreeing), max(q.Min, len(q.Agreeing)))
	}
	return v.Why
}

// report records the verdict on storePath in t's record and sets the
// status the record amounts to, again while the record changed meanwhile
// (another pusher's verdict on the same commit).
func (n *Notifier) report(ctx context.Context, t target, storePath string, v pathVerdict) error {
	key := queue.ForgeStatusKey(t.forge.URL, t.owner+"/"+t.repo, t.sha, t.system)
	var rec record
	err := n.o.KV.KVUpdate(ctx, queue.BucketWaiting, key, func(old []byte) ([]byte, error) {
		rec = record{}
		if old != nil {
			if err := json.Unmarshal(old, &rec); err != nil {
				rec = record{} // unreadable: start again
			}
		}
		if !rec.merge(storePath, v) {
			return nil, nil // unchanged: KVUpdate leaves the key alone
		}
		return json.Marshal(rec)
	})
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}
	for range resends {
		if err := retry.Do(ctx, n.o.Retry, func(int) error { return n.send(ctx, t, &rec) }); err != nil {
			return err
		}
		b, err := n.o.KV.KVGet(ctx, queue.BucketWaiting, key)
		if err != nil {
			return fmt.Errorf("record: %w", err)
		}
		var cur record
		if err := json.Unmarshal(b, &cur); err != nil || cur.Gen == rec.Gen {
			return nil
		}
		rec = cur
	}
	return nil
}

// send sets the status rec amounts to unless the forge shows it already.
func (n *Notifier) send(ctx context.Context, t target, rec *record) error {
	c, err := n.client(ctx, t.forge)
	if err != nil {
		return permanent(err)
	}
	want := rec.status(t.system, n.o.Forges.CacheURL)
	cur, ok, err := c.CurrentStatus(ctx, t.owner, t.repo, t.sha, t.system)
	if err != nil {
		return permanent(err)
	}
	if ok && cur == want {
		return nil
	}
	if err := c.SetStatus(ctx, t.owner, t.repo, t.sha, want); err != nil {
		return permanent(err)
	}
	n.log.Info("commit status set", "forge", t.forge.URL, "repo", t.owner+"/"+t.repo, "sha", t.sha,
		"context", want.Context(), "state", want.State, "description", want.Description)
	return nil
}

// permanent marks the errors no retry fixes: a refused token, a missing
// repository or commit, a bad argument.
func permanent(err error) error {
	if errors.Is(err, forgeapi.ErrUnauthorized) || errors.Is(err, forgeapi.ErrNotFound) || errors.Is(err, forgeapi.ErrInvalid) {
		return retry.Stop(err)
	}
	return err
}

// client is the API client of f, made on first use (a failure is not
// remembered).
func (n *Notifier) client(ctx context.Context, f *Forge) (*forgeapi.Client, error) {
	n.clientMu.Lock()
	c := n.clients[f.URL]
	n.clientMu.Unlock()
	if c != nil {
		return c, nil
	}
	// Not under the lock: a forge that does not answer must not hold the
	// workers reporting to the others. Two workers may both connect; the
	// first client stored is kept.
	c, err := forgeapi.New(ctx, f.URL, f.token, forgeapi.WithHTTPClient(n.http))
	if err != nil {
		return nil, err
	}
	n.clientMu.Lock()
	defer n.clientMu.Unlock()
	if prev := n.clients[f.URL]; prev != nil {
		return prev, nil
	}
	n.clients[f.URL] = c
	return c, nil
}
