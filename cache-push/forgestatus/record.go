package forgestatus

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/forgeapi"
	"codeberg.org/provenix/provenix/queue"
)

// maxPaths bounds the paths a record names: a commit that built more
// published paths counts the rest in More (disputed and incomplete ones
// are always named: they decide the status).
const maxPaths = 1000

// maxNamed bounds the paths a record names whatever their verdict, so it
// stays within a KV value: a builder allowed for a repository could send
// disputed or never-complete paths without end. Past it, verdicts are
// only counted (Counted), and a counted failure stays.
const maxNamed = 4 * maxPaths

// record is what one commit built for one system, as the pushers decided
// it: stored under queue.ForgeStatusKey.
type record struct {
	// Gen grows with each change, so a worker sees that what it sent is
	// no longer the latest.
	Gen   uint64                 `json:"gen"`
	Paths map[string]pathVerdict `json:"paths"`
	More  int                    `json:"more,omitempty"`
	// Counted are the disputed and incomplete verdicts past maxNamed, by
	// kind.
	Counted map[string]int `json:"counted,omitempty"`
}

// pathVerdict is the verdict on one path: its kind (an event kind) and
// what the status says of it.
type pathVerdict struct {
	Kind string `json:"kind"`
	Note string `json:"note"`
}

// rank orders verdicts by how much they weigh on a commit's status.
func rank(kind string) int {
	switch kind {
	case queue.EventDisputed:
		return 2
	case queue.EventPublished:
		return 0
	}
	return 1 // incomplete
}

// merge records v on storePath and reports whether the record changed. A
// publication is final: a path once published stays so, whatever stale
// dispute or timeout arrives after it from this pusher or another.
func (r *record) merge(storePath string, v pathVerdict) bool {
	if r.Paths == nil {
		r.Paths = map[string]pathVerdict{}
	}
	old, ok := r.Paths[storePath]
	if ok && (old == v || (old.Kind == queue.EventPublished && v.Kind != queue.EventPublished)) {
		return false
	}
	switch {
	case !ok && len(r.Paths) >= maxPaths && v.Kind == queue.EventPublished:
		r.More++
	case !ok && len(r.Paths) >= maxNamed:
		if r.Counted == nil {
			r.Counted = map[string]int{}
		}
		r.Counted[v.Kind]++
	default:
		r.Paths[storePath] = v
	}
	r.Gen++
	return true
}

// status is the commit status the record amounts to: the worst verdict
// of its paths, described by that path (and how many share it). A
// published or incomplete path links to its provenance sidecar under
// cacheURL; a disputed one has none.
func (r *record) status(system, cacheURL string) forgeapi.Status {
	var worst string
	counts := map[string]int{}
	for _, p := range slices.Sorted(maps.Keys(r.Paths)) {
		k := r.Paths[p].Kind
		counts[k]++
		if worst == "" || rank(k) > rank(r.Paths[worst].Kind) {
			worst = p
		}
	}
	counts[queue.EventPublished] += r.More
	total := len(r.Paths) + r.More
	v := r.Paths[worst]
	for k, n := range r.Counted {
		counts[k] += n
		total += n
		if rank(k) > rank(v.Kind) {
			// Only counted: no path to name.
			worst, v = "", pathVerdict{Kind: k, Note: fmt.Sprintf("%d paths past the %d a status names", n, maxNamed)}
		}
	}
	s := forgeapi.Status{System: system}
	name := "others"
	if worst != "" {
		name = storeName(worst)
	}
	switch v.Kind {
	case queue.EventPublished:
		s.State = forgeapi.StateSuccess
		s.Description = v.Note
		if total > 1 {
			s.Description = fmt.Sprintf("%d paths published; %s: %s", total, name, v.Note)
		}
	case queue.EventDisputed:
		s.State = forgeapi.StateFailure
		s.Description = fmt.Sprintf("disputed: %s", v.Note)
		if total > 1 {
			s.Description = fmt.Sprintf("%d of %d paths disputed; %s: %s", counts[v.Kind], total, name, v.Note)
		}
	default:
		s.State = forgeapi.StateError
		s.Description = fmt.Sprintf("incomplete: %s", v.Note)
		if total > 1 {
			s.Description = fmt.Sprintf("%d of %d paths incomplete; %s: %s", counts[v.Kind], total, name, v.Note)
		}
	}
	s.Description = forgeapi.Truncate(s.Description, forgeapi.MaxDescription)
	if cacheURL != "" && v.Kind != queue.EventDisputed && worst != "" {
		s.TargetURL = cacheURL + "/" + cachelayout.ProvenanceKey(worst)
	}
	return s
}

// storeName is a store path's name without its hash.
func storeName(storePath string) string {
	b := path.Base(storePath)
	if _, name, ok := strings.Cut(b, "-"); ok {
		return name
	}
	return b
}
