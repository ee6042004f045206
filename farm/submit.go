package farm

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"codeberg.org/provenix/provenix/queue"
)

// Defaults of SubmitOptions.
const (
	DefaultMaxAttempts = 3
	// submitConcurrency bounds the cache look-ups and bucket writes of
	// one submission in flight at once.
	submitConcurrency = 32
)

// SubmitOptions describe a build set.
type SubmitOptions struct {
	Tenant string
	// Graph is the set's derivations; when nil, Submit reads the closure
	// of Roots with Read (ReadGraph).
	Graph *Graph
	// Roots are the derivations asked for; the set is their closure.
	Roots []string
	// Read reads .drv files when Graph is nil; nil reads the local store.
	Read ReadFunc
	// DependentsOf, when set, makes a mass rebuild: the set is the
	// derivations of the graph whose closure contains this .drv or output
	// path (Graph.DependentsOf), with their closures.
	DependentsOf string
	// Quorum is how many distinct owners build each derivation; 1 when 0.
	Quorum int
	// MaxAttempts bounds the failed builds of one derivation;
	// DefaultMaxAttempts when 0.
	MaxAttempts int
	// Cache tells which outputs are visible already: those derivations
	// are skipped. Required.
	Cache Cache
	// ID is the set's id; NewSetID when empty (give one to stage the
	// closure under it first, see StageClosure).
	ID string
	// Closure is the staging key of the set's .drv closure export
	// (StageClosure), passed on in every request; empty when workers have
	// the derivations already.
	Closure string
}

// Submitted is what Submit made.
type Submitted struct {
	Set *Set
	// Skipped counts derivations whose outputs were all visible.
	Skipped int
	// Ready counts derivations that can be dispatched at once.
	Ready int
}

// Submit creates a build set: it looks up every output in the cache,
// writes each derivation's definition and state, and last the set
// record, which schedulers watch for: a set they see is complete. It
// dispatches nothing itself; a running Scheduler does.
func Submit(ctx context.Context, conn *queue.Conn, o SubmitOptions) (*Submitted, error) {
	if err := queue.ValidToken(o.Tenant); err != nil {
		return nil, fmt.Errorf("farm: submit: tenant: %w", err)
	}
	if o.Graph == nil && len(o.Roots) > 0 {
		g, err := ReadGraph(ctx, o.Roots, o.Read)
		if err != nil {
			return nil, fmt.Errorf("farm: submit: %w", err)
		}
		o.Graph = g
	}
	if o.Graph == nil || o.Graph.Len() == 0 {
		return nil, fmt.Errorf("farm: submit: %w: empty graph", ErrInvalid)
	}
	if o.DependentsOf != "" {
		deps, err := o.Graph.DependentsOf(o.DependentsOf)
		if err != nil {
			return nil, fmt.Errorf("farm: submit: %w", err)
		}
		if len(deps) == 0 {
			return nil, fmt.Errorf("farm: submit: %w: nothing in the graph depends on %s", ErrInvalid, o.DependentsOf)
		}
		if o.Graph, err = o.Graph.Sub(deps); err != nil {
			return nil, fmt.Errorf("farm: submit: %w", err)
		}
		o.Roots = deps
	}
	if o.Cache == nil {
		return nil, errors.New("farm: submit: no Cache")
	}
	if o.Quorum == 0 {
		o.Quorum = 1
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.Quorum < 1 || o.Quorum > 16 || o.MaxAttempts < 1 {
		return nil, fmt.Errorf("farm: submit: %w: quorum %d, max attempts %d", ErrInvalid, o.Quorum, o.MaxAttempts)
	}
	for _, n := range o.Graph.Nodes() {
		if queue.ValidToken(n.System) != nil {
			return nil, fmt.Errorf("farm: submit: %w: %s: system %q cannot name a subject", ErrInvalid, n.DrvPath, n.System)
		}
	}
	kv, err := bucket(ctx, conn)
	if err != nil {
		return nil, err
	}
	g := o.Graph

	var paths []string
	for _, n := range g.Nodes() {
		for _, p := range n.Outputs {
			paths = append(paths, p)
		}
	}
	visible, err := lookup(ctx, o.Cache, paths)
	if err != nil {
		return nil, fmt.Errorf("farm: submit: %w", err)
	}

	id := o.ID
	if id == "" {
		id = NewSetID()
	}
	if err := validID(id); err != nil {
		return nil, fmt.Errorf("farm: submit: %w", err)
	}
	now := time.Now().UTC()
	out := &Submitted{}
	classes := map[string][]string{}
	type write struct {
		key string
		val any
	}
	var writes []write
	for _, n := range g.Nodes() {
		st := State{Version: RecordVersion, DrvPath: n.DrvPath, Status: Waiting, Updated: now}
		for name, p := range n.Outputs {
			if visible[p] {
				st.Visible = append(st.Visible, name)
			}
		}
		slices.Sort(st.Visible)
		for _, p := range g.Needs(n.DrvPath) {
			if visible[p] {
				st.Have = append(st.Have, p)
			}
		}
		switch {
		case len(st.Visible) == len(n.Outputs):
			st.Status, st.Skipped = Done, true
			out.Skipped++
		default:
			classes[classKey(o.Tenant, n.System, FeatureClass(n.Features))] = n.Features
			if len(st.Have) == len(g.Needs(n.DrvPath)) {
				out.Ready++
			}
		}
		writes = append(writes, write{nodeKey(id, n.DrvPath), n}, write{stateKey(id, n.DrvPath), &st})
	}
	for k, f := range classes {
		writes = append(writes, write{k, classRecord{Features: f}})
	}
	// A user that may not submit (a runner: queue.RoleSubmitter does)
	// gets queue.ErrPermissionDenied at once, not a timeout.
	if err := conn.KVDenyAware(ctx, queue.BucketFarm, func(ctx context.Context) error {
		return parallel(ctx, writes, func(ctx context.Context, w write) error {
			b, err := json.Marshal(w.val)
			if err != nil {
				return err
			}
			if strings.HasPrefix(w.key, queue.FarmClassPrefix+".") {
				// Written once per class by whoever comes first.
				if _, err := kv.Create(ctx, w.key, b); err != nil && !casConflict(err) {
					return fmt.Errorf("write %s: %w", w.key, err)
				}
				return nil
			}
			if _, err := kv.Put(ctx, w.key, b); err != nil {
				return fmt.Errorf("write %s: %w", w.key, err)
			}
			return nil
		})
	}); err != nil {
		return nil, fmt.Errorf("farm: submit: %w", err)
	}
	set := &Set{Version: RecordVersion, ID: id, Tenant: o.Tenant, Created: now, Roots: slices.Clone(o.Roots),
		Size: g.Len(), Quorum: o.Quorum, MaxAttempts: o.MaxAttempts, Closure: o.Closure}
	b, err := json.Marshal(set)
	if err != nil {
		return nil, err
	}
	if err := conn.KVDenyAware(ctx, queue.BucketFarm, func(ctx context.Context) error {
		_, err := kv.Create(ctx, setKey(id), b)
		return err
	}); err != nil {
		return nil, fmt.Errorf("farm: submit: write %s: %w", setKey(id), err)
	}
	out.Set = set
	return out, nil
}

// classRecord marks a feature class of a tenant and system as used
// (class.<tenant>.<system>.<class>): workers watch these keys to consume
// the classes they can build.
type classRecord struct {
	Features []string `json:"features,omitempty"`
}

// NewSetID returns a fresh build set id: 26 lowercase base32 characters.
func NewSetID() string { return strings.ToLower(rand.Text()) }

// parallel runs fn on every item, submitConcurrency at a time, and
// returns the first error (the calls after it are skipped).
func parallel[T any](ctx context.Context, items []T, fn func(context.Context, T) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(submitConcurrency)
	for _, it := range items {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			return fn(gctx, it)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}
