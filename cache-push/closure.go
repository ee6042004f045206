package cachepush

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/queue"
)

// A narinfo is written only once every path it refers to is visible: in
// this cache, or in an upstream the policy declares. This is the rule of
// Nix's own binary-cache store (it refuses a narinfo whose reference is
// not valid in the cache), and what makes a closure substitutable: a
// client that finds a path can find its whole closure.
//
// A decided entry whose references are not all visible yet waits: its NAR
// and sidecar are in the store (invisible without a narinfo) and the
// signed narinfo waits in the PROVENIX_WAITING bucket, and is added to
// the list of waiters of each missing reference (WaitersKey), so that
// publishing that reference finds it. The result is acknowledged once the record is stored. Publishing a
// path releases the entries waiting for it whose references are all
// visible, then those waiting for them, so a closure appears in
// dependency order. A sweeper re-checks every waiting entry when the
// pusher opens and every SweepEvery (a pusher killed between a publish and
// a release loses nothing) and reports entries waiting longer than the
// policy's closure timeout in an "incomplete" event, once.

// Event kinds of the closure rule.
const (
	EventIncomplete = "incomplete"
)

// WaitingVersion is the format version of a Waiting record.
const WaitingVersion = 1

// Waiting is an entry decided and ingested, invisible until its
// references are: the record stored under queue.WaitingKey.
type Waiting struct {
	Version   int    `json:"version"`
	Tenant    string `json:"tenant"`
	StorePath string `json:"storePath"`
	DrvPath   string `json:"drvPath,omitempty"`
	Builder   string `json:"builder,omitempty"`
	MsgID     string `json:"msgId,omitempty"`
	NarSHA256 string `json:"narSha256"`
	// Narinfo is the signed narinfo to publish, as text.
	Narinfo    string   `json:"narinfo"`
	References []string `json:"references,omitempty"`
	// Missing are the references not visible at the last check.
	Missing []string  `json:"missing"`
	Since   time.Time `json:"since"`
	Checked time.Time `json:"checked"`
	// Incomplete is when the incomplete event was sent (once).
	Incomplete *time.Time `json:"incomplete,omitempty"`
}

// Incomplete is the event published on events.<tenant>.incomplete when an
// entry has waited longer than the policy's closure timeout.
type Incomplete struct {
	Time      time.Time `json:"time"`
	Tenant    string    `json:"tenant"`
	StorePath string    `json:"storePath"`
	DrvPath   string    `json:"drvPath,omitempty"`
	Builder   string    `json:"builder,omitempty"`
	Since     time.Time `json:"since"`
	Missing   []string  `json:"missing"`
}

// Upstream is another binary cache whose paths count as present: Narinfo
// returns the path's narinfo there, its signature verified against the
// keys the policy gives, or an error (not found, untrusted, unreachable).
type Upstream interface {
	Narinfo(ctx context.Context, storePath string) (*narinfo.NarInfo, error)
}

// upstreamTimeout bounds each request to an upstream when UpstreamsFor
// makes the HTTP client.
const upstreamTimeout = 10 * time.Second

// UpstreamsFor builds a cacheclient per upstream the policy declares, in
// its order, for Config.Upstreams; hc nil means a default client with a
// timeout.
func UpstreamsFor(p *policy.Policy, hc *http.Client) ([]Upstream, error) {
	out := make([]Upstream, 0, len(p.Upstreams))
	for _, u := range p.Upstreams {
		if len(u.PublicKeys) == 0 {
			// A cacheclient without keys checks no signature at all.
			return nil, fmt.Errorf("cachepush: upstream %s: no public keys", u.URL)
		}
		c, err := cacheclient.New(cacheclient.Options{URL: u.URL, PublicKeys: u.PublicKeys, HTTP: hc, RequestTimeout: upstreamTimeout})
		if err != nil {
			return nil, fmt.Errorf("cachepush: upstream: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

// Defaults of how long upstream answers are remembered.
const (
	DefaultUpstreamFound   = time.Hour
	DefaultUpstreamMissing = time.Minute
)

// DefaultSweepEvery is how often waiting entries are re-checked.
const DefaultSweepEvery = time.Minute

type upAnswer struct {
	ok bool
	at time.Time
}

// GetWaiting reads the waiting record of storePath; queue.ErrNotFound
// when it does not wait (published, never seen, or expired).
func GetWaiting(ctx context.Context, kv KV, tenant, storePath string) (*Waiting, error) {
	b, err := kv.KVGet(ctx, queue.BucketWaiting, queue.WaitingKey(tenant, storePath))
	if err != nil {
		return nil, err
	}
	return parseWaiting(b)
}

// ListWaiting returns every waiting record, by store path.
func ListWaiting(ctx context.Context, kv KV) ([]*Waiting, error) {
	m, err := kv.KVList(ctx, queue.BucketWaiting, queue.WaitingPrefix)
	if err != nil {
		return nil, err
	}
	out := make([]*Waiting, 0, len(m))
	for k, b := range m {
		w, err := parseWaiting(b)
		if err != nil {
			return nil, fmt.Errorf("waiting entry %s: %w", k, err)
		}
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b *Waiting) int { return strings.Compare(a.StorePath, b.StorePath) })
	return out, nil
}

func parseWaiting(b []byte) (*Waiting, error) {
	var w Waiting
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("waiting record: %w", err)
	}
	if w.Version != WaitingVersion {
		return nil, fmt.Errorf("waiting record: version %d, want %d", w.Version, WaitingVersion)
	}
	return &w, nil
}

// missingRefs returns the references of self that are not visible: not
// self, not in this cache, not in an upstream.
func (p *Pusher) missingRefs(ctx context.Context, self string, refs []string) ([]string, error) {
	var missing []string
	for _, ref := range refs {
		if ref == self {
			continue
		}
		ok, err := p.visible(ctx, ref)
		if err != nil {
			return nil, err
		}
		if !ok {
			missing = append(missing, ref)
		}
	}
	return missing, nil
}

// visible reports whether storePath's narinfo is in this cache or, when
// not, in an upstream. The narinfo found under storePath's hash part
// must name storePath itself: a reference with a published path's hash
// and another name is not there (a client would find the narinfo of
// another path under it, and refuse it).
func (p *Pusher) visible(ctx context.Context, storePath string) (bool, error) {
	ni, err := p.existing(ctx, storePath)
	var re *RejectedError
	switch {
	case errors.As(err, &re):
		return false, nil // a narinfo that does not parse names no path
	case err != nil:
		return false, fmt.Errorf("reference %s: %w", storePath, err)
	case ni != nil:
		return ni.StorePath == storePath, nil
	}
	return p.upstreamHas(ctx, storePath), nil
}

// upstreamHas asks the upstreams, remembering their answers.
func (p *Pusher) upstreamHas(ctx context.Context, storePath string) bool {
	if len(p.cfg.Upstreams) == 0 {
		return false
	}
	p.upMu.Lock()
	a, ok := p.upCache[storePath]
	p.upMu.Unlock()
	if ok {
		ttl := p.cfg.UpstreamMissing
		if a.ok {
			ttl = p.cfg.UpstreamFound
		}
		if time.Since(a.at) < ttl {
			return a.ok
		}
	}
	found := false
	for i, u := range p.cfg.Upstreams {
		ni, err := u.Narinfo(ctx, storePath)
		if err == nil && ni != nil && ni.StorePath == storePath {
			found = true
			break
		}
		if ctx.Err() != nil {
			return false // not an answer: do not remember it
		}
		p.log.Debug("not in upstream", "path", storePath, "upstream", i, "err", err)
	}
	p.upMu.Lock()
	if p.upCache == nil || len(p.upCache) > 100000 {
		p.upCache = map[string]upAnswer{}
	}
	p.upCache[storePath] = upAnswer{ok: found, at: time.Now()}
	p.upMu.Unlock()
	return found
}

// makeVisible commits sidecars (written for w and not yet committed: its
// NAR and provenance), then stores w's verification summary (with
// Config.VSA; it names the sidecar's bundles, so it is signed once they
// are committed) and w's narinfo, the summary before the narinfo (in one
// group, see store.CommitGroup; without Config.VSA the sidecars are the
// first stage of that group), then checks its references are still
// there: a concurrent `cache gc` may have collected one between the check
// and the write, and then the narinfo is withdrawn and w waits again. It
// reports whether the entry is visible. Releasing the entries waiting
// for it is the caller's next step (releaseWaiters).
func (p *Pusher) makeVisible(ctx context.Context, w *Waiting, sidecars []store.Object) (bool, error) {
	if p.vsa != nil {
		// The summary is signed over the committed sidecar.
		if err := store.CommitGroup(ctx, p.cfg.Store, sidecars); err != nil {
			return false, err
		}
		sidecars = nil
	}
	summary, err := p.vsaObject(ctx, w)
	if err != nil {
		return false, err
	}
	ni, err := store.Write(ctx, p.cfg.Store, cachelayout.NarinfoKey(w.StorePath), strings.NewReader(w.Narinfo))
	if err != nil {
		_ = store.AbortAll(summary)
		return false, err
	}
	// Without a summary, one group: the sidecars, then the narinfo.
	if err := store.CommitGroup(ctx, p.cfg.Store, sidecars, summary, []store.Object{ni}); err != nil {
		return false, err
	}
	missing, err := p.missingRefs(ctx, w.StorePath, w.References)
	if err != nil {
		return false, err
	}
	if len(missing) == 0 {
		return true, nil
	}
	if err := p.cfg.Store.Delete(ctx, cachelayout.NarinfoKey(w.StorePath)); err != nil {
		return false, err
	}
	p.log.Warn("a reference vanished while publishing; the entry waits again", "path", w.StorePath, "missing", missing)
	w.Missing = missing
	return false, p.storeWaiting(ctx, w)
}

// storeWaiting stores w and indexes it under each missing reference. The
// caller then checks them again (settle): a reference published between
// the first check and the index would otherwise leave w waiting for what
// is already there.
func (p *Pusher) storeWaiting(ctx context.Context, w *Waiting) error {
	key := queue.WaitingKey(w.Tenant, w.StorePath)
	now := time.Now().UTC()
	err := p.cfg.KV.KVUpdate(ctx, queue.BucketWaiting, key, func(old []byte) ([]byte, error) {
		rec := *w
		rec.Version, rec.Checked = WaitingVersion, now
		if rec.Since.IsZero() {
			rec.Since = now
		}
		if old != nil {
			if prev, err := parseWaiting(old); err == nil {
				if prev.NarSHA256 == rec.NarSHA256 {
					rec.Narinfo = mergeNarinfoSigs(rec.Narinfo, prev.Narinfo)
				}
				if !prev.Since.IsZero() && prev.Since.Before(rec.Since) {
					rec.Since = prev.Since
				}
				if rec.Incomplete == nil {
					rec.Incomplete = prev.Incomplete
				}
			}
		}
		*w = rec
		return json.Marshal(rec)
	})
	if err != nil {
		return fmt.Errorf("store waiting entry %s: %w", w.StorePath, err)
	}
	for _, m := range w.Missing {
		full := false
		err := p.cfg.KV.KVUpdate(ctx, queue.BucketWaiting, queue.WaitersKey(w.Tenant, m), func(old []byte) ([]byte, error) {
			var ws []string
			if old != nil {
				json.Unmarshal(old, &ws) // unreadable: start again
			}
			if full = len(ws) >= maxWaiters; full || slices.Contains(ws, w.StorePath) {
				return nil, nil
			}
			return json.Marshal(append(ws, w.StorePath))
		})
		if err != nil {
			return fmt.Errorf("index waiting entry %s: %w", w.StorePath, err)
		}
		if full {
			p.log.Warn("waiting entry not indexed under a reference that has too many already; the sweeper releases it", "path", w.StorePath,
				"reference", m, "waiters", maxWaiters)
		}
	}
	return nil
}

// maxWaiters bounds the list of entries waiting for one reference (one
// KV value, rewritten at each addition). Anyone who may publish results
// can make entries wait for a path not yet published: one staged text
// NAR under thousands of names. Past the bound a waiter is not indexed,
// and the sweeper (every SweepEvery) releases it instead of the
// reference's publication; without it, the value outgrew the server's
// message size and every later waiter of that reference, an honest one
// included, failed.
var maxWaiters = 1000

// wait stores a decided entry that cannot be visible yet, then settles it
// (its references may have arrived meanwhile). It reports whether the
// entry is visible after all.
func (p *Pusher) wait(ctx context.Context, w *Waiting) (bool, error) {
	if err := p.storeWaiting(ctx, w); err != nil {
		return false, err
	}
	p.cfg.Metrics.Waiting()
	p.log.Info("waiting for references", "path", w.StorePath, "missing", w.Missing, "builder", w.Builder)
	return p.settleRecord(ctx, w)
}

// settle publishes the waiting entry of storePath if its references are
// all visible now, and reports whether it is visible. An entry published
// by another pusher meanwhile gets this record's signatures and goes.
func (p *Pusher) settle(ctx context.Context, tenant, storePath string) (bool, error) {
	key := queue.WaitingKey(tenant, storePath)
	b, err := p.cfg.KV.KVGet(ctx, queue.BucketWaiting, key)
	if errors.Is(err, queue.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	w, err := parseWaiting(b)
	if err != nil {
		p.log.Warn("unreadable waiting entry dropped", "key", key, "err", err)
		return false, p.cfg.KV.KVDelete(ctx, queue.BucketWaiting, key)
	}
	return p.settleRecord(ctx, w)
}

// settleRecord is settle for the record w just read or written.
func (p *Pusher) settleRecord(ctx context.Context, w *Waiting) (bool, error) {
	if prev, err := p.existing(ctx, w.StorePath); err != nil {
		return false, err
	} else if prev != nil {
		return true, p.settledElsewhere(ctx, w, prev)
	}
	missing, err := p.missingRefs(ctx, w.StorePath, w.References)
	if err != nil {
		return false, err
	}
	if len(missing) > 0 {
		if !slices.Equal(missing, w.Missing) {
			w.Missing = missing
			if err := p.storeWaiting(ctx, w); err != nil {
				return false, err
			}
		}
		return false, nil
	}
	ni, err := narinfo.Parse(strings.NewReader(w.Narinfo))
	if err != nil {
		p.log.Error("waiting entry's narinfo does not parse; dropped", "path", w.StorePath, "err", err)
		return false, p.dropWaiting(ctx, w)
	}
	if _, err := p.cfg.Store.Stat(ctx, ni.URL); errors.Is(err, store.ErrNotFound) {
		// Collected as an orphan while it waited (cache gc's grace): it
		// must be pushed again.
		p.log.Error("waiting entry's NAR is gone; the path must be built and pushed again", "path", w.StorePath, "nar", ni.URL)
		p.event(ctx, w.Tenant, queue.EventRejected, Rejection{Time: time.Now().UTC(), Tenant: w.Tenant, Builder: w.Builder,
			DrvPath: w.DrvPath, Reason: ReasonStaging, Error: "NAR " + ni.URL + " of waiting " + w.StorePath + " is gone"})
		return false, p.dropWaiting(ctx, w)
	} else if err != nil {
		return false, err
	}
	ok, err := p.makeVisible(ctx, w, nil)
	if err != nil || !ok {
		return ok, err
	}
	p.published(ctx, w, false)
	if err := p.dropWaiting(ctx, w); err != nil {
		return true, err
	}
	p.releaseWaiters(ctx, w.Tenant, w.StorePath)
	return true, nil
}

// settledElsewhere merges a waiting record into the narinfo another
// pusher (or delivery) published for the same path, and drops the record.
func (p *Pusher) settledElsewhere(ctx context.Context, w *Waiting, prev *narinfo.NarInfo) error {
	mine, err := narinfo.Parse(strings.NewReader(w.Narinfo))
	if err == nil {
		if h, herr := narHashOf(prev); herr == nil && fmt.Sprintf("%x", h) == w.NarSHA256 {
			var sigs []string
			for _, s := range mine.Signatures {
				sigs = append(sigs, s.String())
			}
			if addSigs(prev, sigs, p.cfg.Policy) {
				if err := store.Put(ctx, p.cfg.Store, cachelayout.NarinfoKey(w.StorePath), strings.NewReader(prev.String())); err != nil {
					return err
				}
			}
		} else {
			p.log.Warn("waiting entry differs from the one published; dropped", "path", w.StorePath)
		}
	}
	if err := p.dropWaiting(ctx, w); err != nil {
		return err
	}
	p.releaseWaiters(ctx, w.Tenant, w.StorePath)
	return nil
}

// dropWaiting removes w's record. Its name may stay in the waiter lists
// of references that are still missing: releasing those finds no record
// and skips it.
func (p *Pusher) dropWaiting(ctx context.Context, w *Waiting) error {
	return p.cfg.KV.KVDelete(ctx, queue.BucketWaiting, queue.WaitingKey(w.Tenant, w.StorePath))
}

// releaseWaiters settles the entries waiting for storePath, which has
// just become visible; each one published releases its own waiters.
// Errors are logged: the sweeper retries what is left.
func (p *Pusher) releaseWaiters(ctx context.Context, tenant, storePath string) {
	key := queue.WaitersKey(tenant, storePath)
	b, err := p.cfg.KV.KVGet(ctx, queue.BucketWaiting, key)
	if errors.Is(err, queue.ErrNotFound) {
		return // the common case: nobody waits for it
	}
	if err != nil {
		p.log.Warn("release waiters", "path", storePath, "err", err)
		return
	}
	var waiters []string
	json.Unmarshal(b, &waiters) // unreadable: the sweeper finds them
	clean := true
	for _, waiter := range waiters {
		if _, err := p.settle(ctx, tenant, waiter); err != nil {
			p.log.Warn("release waiter", "path", waiter, "waited for", storePath, "err", err)
			clean = false
		}
	}
	// A waiter added after the read re-checks its references after
	// adding itself, and finds storePath visible: the list may go.
	if clean {
		if err := p.cfg.KV.KVDelete(ctx, queue.BucketWaiting, key); err != nil {
			p.log.Warn("release waiters", "path", storePath, "err", err)
		}
	}
}

// published records that w's path became visible.
func (p *Pusher) published(ctx context.Context, w *Waiting, existing bool) {
	p.event(ctx, w.Tenant, queue.EventPublished, Publication{
		Time: time.Now().UTC(), MsgID: w.MsgID, Tenant: w.Tenant, Builder: w.Builder,
		DrvPath: w.DrvPath, StorePath: w.StorePath, NarSHA256: w.NarSHA256, Existing: existing,
	})
	p.cfg.Metrics.Published()
	p.log.Info("published", "path", w.StorePath, "builder", w.Builder, "existing", existing)
	p.verdict(Verdict{Kind: queue.EventPublished, Tenant: w.Tenant, StorePath: w.StorePath})
}

// Sweep re-checks every waiting entry: publishes those whose references
// are all visible (in dependency order: it repeats while it publishes),
// and reports those waiting past the policy's closure timeout. It returns
// how many entries still wait.
func (p *Pusher) Sweep(ctx context.Context) (int, error) {
	for {
		all, err := ListWaiting(ctx, p.cfg.KV)
		if err != nil {
			return 0, fmt.Errorf("sweep: %w", err)
		}
		released, left := 0, 0
		var errs []error
		for _, w := range all {
			ok, err := p.settle(ctx, w.Tenant, w.StorePath)
			if err != nil {
				errs = append(errs, err)
				left++
				continue
			}
			if ok {
				released++
				continue
			}
			left++
			p.checkTimeout(ctx, w)
		}
		if released == 0 || ctx.Err() != nil {
			return left, errors.Join(errs...)
		}
	}
}

// checkTimeout sends the incomplete event for w once, whichever pusher of
// a group gets there first (compare-and-set on the record).
func (p *Pusher) checkTimeout(ctx context.Context, w *Waiting) {
	timeout := p.cfg.Policy.Closure.Timeout
	if timeout <= 0 { // a policy not made by policy.Parse
		timeout = policy.DefaultClosureTimeout
	}
	if w.Incomplete != nil || time.Since(w.Since) < timeout {
		return
	}
	now := time.Now().UTC()
	var cur Waiting
	mine := false
	err := p.cfg.KV.KVUpdate(ctx, queue.BucketWaiting, queue.WaitingKey(w.Tenant, w.StorePath), func(old []byte) ([]byte, error) {
		mine = false
		if old == nil {
			return nil, nil // published meanwhile
		}
		rec, err := parseWaiting(old)
		if err != nil || rec.Incomplete != nil {
			return nil, nil
		}
		rec.Incomplete, mine, cur = &now, true, *rec
		return json.Marshal(rec)
	})
	if err != nil || !mine {
		return
	}
	p.log.Warn("incomplete: waited past the closure timeout", "path", cur.StorePath, "since", cur.Since, "missing", cur.Missing)
	p.cfg.Metrics.Incomplete()
	p.event(ctx, cur.Tenant, EventIncomplete, Incomplete{Time: now, Tenant: cur.Tenant, StorePath: cur.StorePath,
		DrvPath: cur.DrvPath, Builder: cur.Builder, Since: cur.Since, Missing: cur.Missing})
	why := fmt.Sprintf("%d references missing after %s", len(cur.Missing), timeout)
	if len(cur.Missing) == 1 {
		why = "1 reference missing after " + timeout.String()
	}
	p.verdict(Verdict{Kind: EventIncomplete, Tenant: cur.Tenant, StorePath: cur.StorePath, Why: why})
}

// sweeper runs Sweep now and every SweepEvery until ctx ends.
func (p *Pusher) sweeper(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(p.cfg.SweepEvery)
	defer t.Stop()
	for {
		if n, err := p.Sweep(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("sweep of waiting entries", "err", err, "waiting", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// mergeNarinfoSigs adds the signatures of other (same path and NAR) to ni.
func mergeNarinfoSigs(ni, other string) string {
	a, err := narinfo.Parse(strings.NewReader(ni))
	if err != nil {
		return ni
	}
	b, err := narinfo.Parse(strings.NewReader(other))
	// Same fingerprint: both narinfos state the same thing, so each one's
	// signatures (checked when it was written) hold for the other.
	if err != nil || a.StorePath != b.StorePath || !bytes.Equal(a.NarHash.Digest(), b.NarHash.Digest()) || a.Fingerprint() != b.Fingerprint() {
		return ni
	}
	var sigs []string
	for _, s := range b.Signatures {
		sigs = append(sigs, s.String())
	}
	if appendSigs(a, sigs, nil) {
		return a.String()
	}
	return ni
}
