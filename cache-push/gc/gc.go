// Package gc collects garbage in a Provenix binary cache through
// store.Store, without ever breaking a closure that is kept.
//
// # Rules
//
// Roots are the narinfos to keep: those modified within Options.MaxAge,
// those whose store path is listed in Options.Keep, those younger than
// Options.Grace, and every malformed narinfo (reported, never deleted
// blindly). Everything a root references, transitively (the References of
// each narinfo), is kept too. Every other narinfo is collected.
//
// A collected path goes in the reverse of the pusher's write order: the
// narinfo first, then its provenance sidecar, then its NAR file (unless a
// remaining narinfo points at the same file), so a client never sees a
// narinfo whose NAR is gone. Among collected paths, a referrer goes before
// what it references, so no visible narinfo references a deleted one.
//
// Then orphans go: NAR files no remaining narinfo points at, and sidecars
// without a narinfo, both left by interrupted pushes. An orphan younger than
// Options.Grace is kept, because a push in progress has written its NAR
// and sidecar but not yet its narinfo.
//
// Last, in a chunked store (ChunkCollector, store/chunked), the chunks that
// no remaining NAR file uses and that are older than Options.Grace: a
// chunk shared by two NARs stays while either does, and a write in
// progress has written (or refreshed) its chunks within the grace.
//
// Concurrent pushes: GC decides from one listing. A narinfo rewritten after
// that listing (its ModTime changed) is not deleted. A narinfo published
// during the run that refers to a path GC collected is withdrawn after the
// deletions (Report.Withdrawn), so no visible narinfo is left with a
// missing reference; the pusher checks its references again after writing
// a narinfo, and withdraws it too when one vanished, which covers the
// narinfos written after GC's last look. Run GC with a MaxAge well above
// the time a closure takes to push, and a Grace above the closure rule's
// waiting time: the NAR of an entry waiting for its references is an
// orphan until it is published.
package gc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/chunked"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/storepath"
)

// DefaultGrace is how old an orphan must be before it is collected when
// Options.Grace is zero: longer than any push of one path takes.
const DefaultGrace = 24 * time.Hour

// maxNarinfoSize bounds how much of a narinfo is read, as the pusher does.
const maxNarinfoSize = 1 << 20

var (
	// ErrNoKeepRule means Options named neither MaxAge nor Keep: GC would
	// collect the whole cache, which is never what is meant.
	ErrNoKeepRule = errors.New("gc: no keep rule (set MaxAge or Keep)")
	// ErrKeepFile means a keep-file line is not a store path.
	ErrKeepFile = errors.New("gc: bad keep-file entry")
)

// Options select what is kept.
type Options struct {
	// MaxAge keeps every narinfo modified less than MaxAge ago (and its
	// closure). Zero disables the age rule.
	MaxAge time.Duration
	// Keep lists store paths ("/nix/store/<hash>-name", "<hash>-name" or
	// the bare 32-character hash) whose closures are kept whatever their
	// age. See ParseKeepFile.
	Keep []string
	// Grace protects orphans and narinfos younger than it;
	// DefaultGrace when zero.
	Grace time.Duration
	// DryRun reports what would be deleted and deletes nothing.
	DryRun bool
	// Now is the reference time; time.Now() when zero.
	Now time.Time
}

// Object is one stored object GC deleted (or would delete).
type Object struct {
	Key  string `json:"key"`
	Size int64  `json:"size"`
}

// Path is one collected store path with the objects that went with it, in
// deletion order: narinfo, sidecar (if any), NAR (if no other narinfo
// uses it).
type Path struct {
	StorePath string   `json:"storePath"`
	Objects   []Object `json:"objects"`
}

// Malformed is a narinfo GC could not parse; it is kept.
type Malformed struct {
	Key   string `json:"key"`
	Error string `json:"error"`
}

// Report says what GC found and did.
type Report struct {
	DryRun bool `json:"dryRun"`
	// Narinfos is how many narinfos the cache held; Kept how many stay.
	Narinfos int `json:"narinfos"`
	Kept     int `json:"kept"`
	// Paths are the collected store paths, in deletion order.
	Paths []Path `json:"paths"`
	// Orphans are NAR files and sidecars no narinfo accounts for.
	Orphans []Object `json:"orphans"`
	// Malformed narinfos are kept as roots.
	Malformed []Malformed `json:"malformed,omitempty"`
	// Withdrawn are narinfos published during the run that referred to a
	// path GC collected: deleted (narinfo only) so that no visible
	// narinfo misses a reference. Their paths must be pushed again.
	Withdrawn []Path `json:"withdrawn,omitempty"`
	// MissingKeep are Keep entries the cache has no narinfo for.
	MissingKeep []string `json:"missingKeep,omitempty"`
	// OrphansSkipped, when set, says why orphan NARs were not collected.
	OrphansSkipped string `json:"orphansSkipped,omitempty"`
	// Chunks are the chunks of a chunked store that no NAR file uses
	// any more.
	Chunks []Object `json:"chunks,omitempty"`
	// ChunksSkipped, when set, says why chunks were not collected.
	ChunksSkipped string `json:"chunksSkipped,omitempty"`
	// BytesFreed is the size of everything deleted (or, in a dry run,
	// that would be).
	BytesFreed int64 `json:"bytesFreed"`
}

// ChunkCollector is a store whose NAR files share chunks (store/chunked).
// CollectChunks deletes (in a dry run, only returns) the chunks that no NAR
// file uses and that were last written before cutoff.
type ChunkCollector interface {
	CollectChunks(ctx context.Context, cutoff time.Time, dryRun bool) ([]store.Info, error)
}

// entry is one narinfo of the listing.
type entry struct {
	info      store.Info
	storePath string
	url       string   // NAR key, "" if unknown
	refs      []string // hash parts
	malformed bool
}

// Run collects garbage in st per opts and reports what it deleted. On a
// deletion error it goes on with what remains safe and returns the report
// with every error joined: a path whose narinfo could not be deleted keeps
// its sidecar and NAR.
func Run(ctx context.Context, st store.Store, opts Options) (*Report, error) {
	if opts.MaxAge < 0 || opts.Grace < 0 {
		return nil, fmt.Errorf("gc: negative MaxAge or Grace")
	}
	if opts.MaxAge == 0 && len(opts.Keep) == 0 {
		return nil, ErrNoKeepRule
	}
	if opts.Grace == 0 {
		opts.Grace = DefaultGrace
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	keep := make(map[string]bool, len(opts.Keep))
	for _, k := range opts.Keep {
		h, err := hashOf(k)
		if err != nil {
			return nil, err
		}
		keep[h] = true
	}

	// One listing decides everything.
	narinfos := map[string]*entry{}       // by hash part
	sidecars := map[string][]store.Info{} // provenance and VSA, by hash part
	var nars []store.Info
	err := st.List(ctx, "", func(i store.Info) error {
		switch {
		case strings.HasPrefix(i.Key, cachelayout.NARPrefix):
			nars = append(nars, i)
		case isHashKey(i.Key, cachelayout.NarinfoSuffix):
			narinfos[i.Key[:cachelayout.HashLen]] = &entry{info: i}
		case isHashKey(i.Key, cachelayout.ProvenanceSuffix), isHashKey(i.Key, cachelayout.VSASuffix):
			h := i.Key[:cachelayout.HashLen]
			sidecars[h] = append(sidecars[h], i)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc: list: %w", err)
	}

	rep := &Report{DryRun: opts.DryRun, Narinfos: len(narinfos)}
	blindURL := false
	for _, h := range sortedKeys(narinfos) {
		e := narinfos[h]
		if err := e.load(ctx, st); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				delete(narinfos, h) // deleted since the listing
				continue
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("gc: %w", ctx.Err())
			}
			rep.Malformed = append(rep.Malformed, Malformed{Key: e.info.Key, Error: err.Error()})
			e.malformed = true
			if e.url == "" {
				blindURL = true
			}
		}
	}

	// Mark: roots, then their closures.
	var queue []string
	for h, e := range narinfos {
		age := opts.Now.Sub(e.info.ModTime)
		if e.malformed || keep[h] || age < opts.Grace || (opts.MaxAge > 0 && age < opts.MaxAge) {
			queue = append(queue, h)
		}
	}
	for h := range keep {
		if narinfos[h] == nil {
			rep.MissingKeep = append(rep.MissingKeep, h)
		}
	}
	slices.Sort(rep.MissingKeep)
	live := map[string]bool{}
	for len(queue) > 0 {
		h := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if live[h] {
			continue
		}
		live[h] = true
		if e := narinfos[h]; e != nil {
			queue = append(queue, e.refs...)
		}
	}

	// NAR files the kept narinfos use.
	usedNAR := map[string]bool{}
	var dead []string
	for h, e := range narinfos {
		if live[h] {
			rep.Kept++
			usedNAR[e.url] = true
		} else {
			dead = append(dead, h)
		}
	}

	var errs []error
	for _, h := range deletionOrder(dead, narinfos) {
		e := narinfos[h]
		p, err := collect(ctx, st, e, sidecars, usedNAR, opts.DryRun)
		if err != nil {
			errs = append(errs, err)
			usedNAR[e.url] = true // its narinfo may still be there
			continue
		}
		delete(sidecars, h)
		rep.Paths = append(rep.Paths, p)
	}

	if !opts.DryRun && len(rep.Paths) > 0 {
		w, err := withdrawBroken(ctx, st, narinfos, rep.Paths)
		rep.Withdrawn = w
		if err != nil {
			errs = append(errs, err)
		}
		// Their NARs are younger than Grace: the orphan rule keeps them.
	}

	// Orphans: sidecars without a narinfo, then NAR files no narinfo uses.
	cutoff := opts.Now.Add(-opts.Grace)
	var orphans []store.Info
	for _, h := range sortedKeys(sidecars) {
		for _, sc := range sidecars[h] {
			if narinfos[h] == nil && sc.ModTime.Before(cutoff) {
				orphans = append(orphans, sc)
			}
		}
	}
	if blindURL {
		rep.OrphansSkipped = "a malformed narinfo has no readable URL, so any NAR may be its own"
	} else {
		slices.SortFunc(nars, func(a, b store.Info) int { return strings.Compare(a.Key, b.Key) })
		for _, n := range nars {
			if !usedNAR[n.Key] && n.ModTime.Before(cutoff) && !deletedNAR(rep.Paths, n.Key) {
				orphans = append(orphans, n)
			}
		}
	}
	for _, o := range orphans {
		if !opts.DryRun {
			if err := deleteIfUnchanged(ctx, st, o); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		rep.Orphans = append(rep.Orphans, Object{Key: o.Key, Size: o.Size})
	}

	if cc, ok := st.(ChunkCollector); ok {
		chunks, err := cc.CollectChunks(ctx, cutoff, opts.DryRun)
		switch {
		case errors.Is(err, chunked.ErrShared):
			rep.ChunksSkipped = "the chunks are shared with other caches"
		case err != nil:
			errs = append(errs, fmt.Errorf("gc: chunks: %w", err))
		}
		for _, c := range chunks {
			rep.Chunks = append(rep.Chunks, Object{Key: c.Key, Size: c.Size})
		}
	}

	for _, p := range rep.Paths {
		for _, o := range p.Objects {
			rep.BytesFreed += o.Size
		}
	}
	for _, o := range rep.Orphans {
		rep.BytesFreed += o.Size
	}
	for _, o := range rep.Chunks {
		rep.BytesFreed += o.Size
	}
	return rep, errors.Join(errs...)
}

// withdrawBroken deletes the narinfos that appeared (or changed) since the
// listing and refer to a collected path that is not visible again, then
// those referring to a withdrawn one, until none is left.
func withdrawBroken(ctx context.Context, st store.Store, listed map[string]*entry, collected []Path) ([]Path, error) {
	present := map[string]store.Info{}
	err := st.List(ctx, "", func(i store.Info) error {
		if isHashKey(i.Key, cachelayout.NarinfoSuffix) {
			present[i.Key[:cachelayout.HashLen]] = i
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc: list after collecting: %w", err)
	}
	gone := map[string]bool{}
	for _, p := range collected {
		h := p.Objects[0].Key[:cachelayout.HashLen]
		if _, back := present[h]; !back {
			gone[h] = true
		}
	}
	var fresh []*entry
	for _, h := range sortedKeys(present) {
		i := present[h]
		if e := listed[h]; e != nil && e.info.ModTime.Equal(i.ModTime) && e.info.Size == i.Size {
			continue // its closure was decided live
		}
		e := &entry{info: i}
		if err := e.load(ctx, st); err != nil && errors.Is(err, store.ErrNotFound) {
			continue
		}
		fresh = append(fresh, e)
	}
	var out []Path
	for changed := true; changed; {
		changed = false
		for _, e := range fresh {
			h := e.info.Key[:cachelayout.HashLen]
			if gone[h] || !slices.ContainsFunc(e.refs, func(r string) bool { return gone[r] }) {
				continue
			}
			if err := st.Delete(ctx, e.info.Key); err != nil {
				return out, fmt.Errorf("gc: withdraw %s: %w", e.info.Key, err)
			}
			gone[h], changed = true, true
			out = append(out, Path{StorePath: e.storePath, Objects: []Object{{Key: e.info.Key, Size: e.info.Size}}})
		}
	}
	return out, nil
}

// collect deletes one dead path: narinfo, sidecars (provenance, VSA), NAR.
func collect(ctx context.Context, st store.Store, e *entry, sidecars map[string][]store.Info, usedNAR map[string]bool, dryRun bool) (Path, error) {
	h := e.info.Key[:cachelayout.HashLen]
	p := Path{StorePath: e.storePath}
	objs := []store.Info{e.info}
	objs = append(objs, sidecars[h]...)
	if e.url != "" && !usedNAR[e.url] {
		// Stat, not the listing: the NAR may be missing already.
		ni, err := st.Stat(ctx, e.url)
		switch {
		case err == nil:
			objs = append(objs, ni)
			usedNAR[e.url] = true // once only, if two narinfos share it
		case !errors.Is(err, store.ErrNotFound):
			return p, fmt.Errorf("gc: %s: %w", e.url, err)
		}
	}
	for i, o := range objs {
		if !dryRun {
			var err error
			if i == 0 {
				err = deleteIfUnchanged(ctx, st, o) // a rewritten narinfo stays
			} else {
				err = st.Delete(ctx, o.Key)
			}
			if err != nil {
				if i == 0 {
					return p, err
				}
				// The narinfo is gone: what is left is an orphan for
				// the next run.
				return p, fmt.Errorf("gc: %s: %w", p.StorePath, err)
			}
		}
		p.Objects = append(p.Objects, Object{Key: o.Key, Size: o.Size})
	}
	return p, nil
}

// errChanged means an object was rewritten since the listing.
var errChanged = errors.New("changed since listing")

// deleteIfUnchanged deletes o unless it was replaced after the listing.
func deleteIfUnchanged(ctx context.Context, st store.Store, o store.Info) error {
	cur, err := st.Stat(ctx, o.Key)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("gc: %s: %w", o.Key, err)
	}
	if !cur.ModTime.Equal(o.ModTime) || cur.Size != o.Size {
		return fmt.Errorf("gc: %s: %w, kept", o.Key, errChanged)
	}
	if err := st.Delete(ctx, o.Key); err != nil {
		return fmt.Errorf("gc: %s: %w", o.Key, err)
	}
	return nil
}

func deletedNAR(paths []Path, key string) bool {
	for _, p := range paths {
		for _, o := range p.Objects {
			if o.Key == key {
				return true
			}
		}
	}
	return false
}

// deletionOrder sorts dead paths so that a referrer comes before what it
// references (Kahn's algorithm on the dead subgraph); cycles, which Nix
// only has as self-references, are broken by key order.
func deletionOrder(dead []string, narinfos map[string]*entry) []string {
	slices.Sort(dead)
	isDead := make(map[string]bool, len(dead))
	for _, h := range dead {
		isDead[h] = true
	}
	referrers := map[string]int{}
	for _, h := range dead {
		for _, r := range narinfos[h].refs {
			if r != h && isDead[r] {
				referrers[r]++
			}
		}
	}
	var order []string
	done := map[string]bool{}
	for len(order) < len(dead) {
		progress := false
		for _, h := range dead {
			if done[h] || referrers[h] > 0 {
				continue
			}
			done[h], progress = true, true
			order = append(order, h)
			for _, r := range narinfos[h].refs {
				if r != h && isDead[r] {
					referrers[r]--
				}
			}
		}
		if !progress { // a cycle: take the first left
			for _, h := range dead {
				if !done[h] {
					referrers[h] = 0
					break
				}
			}
		}
	}
	return order
}

// load reads and parses the narinfo. On a parse error it still fills url
// and refs from whatever lines it can read, so a malformed narinfo keeps
// its NAR and references.
func (e *entry) load(ctx context.Context, st store.Store) error {
	b, err := store.ReadAll(ctx, st, e.info.Key, maxNarinfoSize)
	if err != nil {
		return err
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err == nil {
		err = ni.Check()
	}
	if err == nil && (ni.StorePath == "" || path.Base(ni.StorePath)[:cachelayout.HashLen] != e.info.Key[:cachelayout.HashLen]) {
		err = fmt.Errorf("StorePath %q does not match the key", ni.StorePath)
	}
	if err == nil && store.ValidKey(ni.URL) != nil {
		err = fmt.Errorf("URL %q is not a cache key", ni.URL)
	}
	if err != nil {
		e.url, e.refs = lenient(b)
		return err
	}
	e.storePath, e.url = ni.StorePath, ni.URL
	for _, r := range ni.References {
		e.refs = append(e.refs, r[:cachelayout.HashLen]) // Check validated r
	}
	return nil
}

// lenient pulls URL and References out of a narinfo that did not parse.
func lenient(b []byte) (url string, refs []string) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, maxNarinfoSize+1)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "URL":
			if store.ValidKey(v) == nil {
				url = v
			}
		case "References":
			for _, f := range strings.Fields(v) {
				if h, err := hashOf(f); err == nil {
					refs = append(refs, h)
				}
			}
		}
	}
	return url, refs
}

// hashOf returns the hash part of a store path, its base name or a bare
// hash.
func hashOf(s string) (string, error) {
	base := path.Base(s)
	if len(base) == storepath.HashLen {
		if storepath.CheckHashPart(base) == nil {
			return base, nil
		}
	} else if storepath.CheckBase(base) == nil {
		return storepath.HashPart(base), nil
	}
	return "", fmt.Errorf("%w: %q", ErrKeepFile, s)
}

// ParseKeepFile reads store paths, one a line, as Options.Keep takes them;
// blank lines and lines starting with "#" are skipped.
func ParseKeepFile(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if _, err := hashOf(line); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("gc: keep file: %w", err)
	}
	return out, nil
}

func isHashKey(key, suffix string) bool {
	return len(key) == cachelayout.HashLen+len(suffix) && strings.HasSuffix(key, suffix) && storepath.CheckHashPart(key[:cachelayout.HashLen]) == nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
