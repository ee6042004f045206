package cachepush

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/storepath"
)

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
// releases what waits for it. The event goes out in after, alongside the
// read of the waiters: the caller waits for it before the result is
// acked.
func (p *Pusher) report(ctx context.Context, m entryMeta, out attest.Output, oc outcome, after *sync.WaitGroup) {
	if oc != outPublished && oc != outExisting {
		return
	}
	after.Go(func() {
		p.published(ctx, &Waiting{Tenant: m.tenant, StorePath: out.Path, DrvPath: m.drv, Builder: m.builder, MsgID: m.msgID,
			NarSHA256: out.NarHashHex()}, oc == outExisting)
	})
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
	// The NAR is committed with the sidecars (below): one flush of the
	// disk for both.
	nar, narObj, err := ingest.Write(ctx, p.cfg.Store, src, ingest.Expect{NarHash: out.NarHash, NarSize: out.NarSize}, p.cfg.Ingest)
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

	// The sidecars are written now and committed with the NAR and the
	// narinfo, in one group: the NAR and they first, then the narinfo
	// (store.CommitGroup), so that concurrent results share the flushes
	// of the disk. Every path that returns without committing them
	// aborts them.
	sidecars, err := p.sidecars(ctx, out, bundles, q)
	if err != nil {
		narObj.Pending.Abort()
		return 0, err
	}
	sidecars = append(sidecars, narObj)
	defer store.AbortAll(sidecars)
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
		if err := store.CommitGroup(ctx, p.cfg.Store, sidecars); err != nil {
			return 0, err
		}
		return p.waitOutcome(p.wait(ctx, w))
	}
	// The narinfo goes last: once it is visible, its NAR, provenance and
	// references are.
	ok, err := p.makeVisible(ctx, w, sidecars)
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
	if err := p.backfillVSA(ctx, prev, out); err != nil {
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
	if len(sigs) == 0 {
		return false // most results: no builder signs for Nix
	}
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

// writeProvenance stores the sidecars for out (see sidecars).
func (p *Pusher) writeProvenance(ctx context.Context, out attest.Output, add []json.RawMessage, q *cachelayout.QuorumInfo) error {
	objs, err := p.sidecars(ctx, out, add, q)
	if err != nil {
		return err
	}
	return store.CommitGroup(ctx, p.cfg.Store, objs)
}

// sidecars writes, without committing, the files that go next to out's
// narinfo and must be visible before it: the provenance sidecar, keeping
// bundles already there for the same NAR (from other builders, or
// earlier runs). A file added per entry is one more object here, and
// shares the commit of the others.
func (p *Pusher) sidecars(ctx context.Context, out attest.Output, add []json.RawMessage, q *cachelayout.QuorumInfo) ([]store.Object, error) {
	b, err := p.provenance(ctx, out, add, q)
	if err != nil || b == nil {
		return nil, err
	}
	o, err := store.Write(ctx, p.cfg.Store, cachelayout.ProvenanceKey(out.Path), bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return []store.Object{o}, nil
}

// provenance returns the sidecar for out, keeping bundles already there
// for the same NAR, or nil when out has no bundles.
func (p *Pusher) provenance(ctx context.Context, out attest.Output, add []json.RawMessage, q *cachelayout.QuorumInfo) ([]byte, error) {
	if len(add) == 0 {
		// A source: its content address is its proof, no bundle attests it.
		return nil, nil
	}
	sc := &cachelayout.Provenance{Version: cachelayout.ProvenanceVersion, StorePath: out.Path, NarSHA256: out.NarHashHex(), Quorum: q}
	if b, err := store.ReadAll(ctx, p.cfg.Store, cachelayout.ProvenanceKey(out.Path), maxNarinfoSize*4); err == nil {
		prev, perr := cachelayout.ParseProvenance(b)
		if perr == nil && prev.StorePath != sc.StorePath {
			// Never rewrite another path's sidecar (same hash part, other
			// name, maybe the same NAR).
			return nil, rejected(ReasonConflict, fmt.Errorf("%s: the provenance at its hash part is %s's", out.Path, prev.StorePath))
		}
		if perr == nil && prev.NarSHA256 == sc.NarSHA256 {
			sc.Bundles = prev.Bundles
			if sc.Quorum == nil {
				sc.Quorum = prev.Quorum
			}
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
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
		return nil, fmt.Errorf("provenance sidecar: %w", err)
	}
	return b, nil
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
