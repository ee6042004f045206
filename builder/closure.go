package builder

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"codeberg.org/provenix/provenix/nix"
)

// ErrNotBuiltHere means a requested derivation's output was not built by
// this store (substituted or imported), or not within the window the
// caller allows (ClosureOptions.Eligible): this builder does not attest it.
var ErrNotBuiltHere = errors.New("builder: output not built by this store")

// ClosureOptions tune PublishClosure.
type ClosureOptions struct {
	// Started and Finished bound the build of the requested derivations;
	// the provenance of each records them. A dependency built earlier
	// records its own registration time instead.
	Started, Finished time.Time
	// Eligible, when set, is asked about every output this store built
	// (path-info "ultimate"): only those it accepts are attested. A runner
	// accepts what was registered while the job ran. A requested
	// derivation with an output it refuses fails with ErrNotBuiltHere; a
	// dependency's is left out.
	Eligible func(nix.PathInfo) bool
	// Checked are requested derivations whose outputs a --check rebuild on
	// this machine reproduced: they are attested though the store did not
	// build them (a volunteer's vote on a copy it holds).
	Checked []string
	// Skip, when set, leaves out derivations already published (a runner
	// publishes a job's closures once): their sources are then assumed
	// published with them.
	Skip func(drv string) bool
}

// step is one result to publish: a derivation, the outputs of it this
// store built, and the sources first needed by them.
type step struct {
	drv       string
	requested bool
	names     []string // output names, parallel to outputs
	outputs   []nix.PathInfo
	sources   []nix.PathInfo
	// registered is the latest registration among outputs.
	registered time.Time
}

// planClosure decides what publishing the closure of drvs (realised
// already) means: every derivation in the runtime closure of their
// outputs whose outputs this store built, each with all such outputs
// (the closure grows by those not referenced from the requested ones, and
// by what they refer to), in dependency order; and every content-addressed
// path no derivation produces (a source), attached to the first step that
// needs it. Paths substituted or imported are not attested here; those
// that are content-addressed still go with the closure as sources.
func (b *Builder) planClosure(ctx context.Context, drvs []string, o ClosureOptions) ([]*step, error) {
	n := b.Nix
	eligible := func(pi nix.PathInfo) bool {
		return pi.Ultimate && (o.Eligible == nil || o.Eligible(pi))
	}
	type drvInfo struct {
		names, paths []string
	}
	drvOuts := map[string]*drvInfo{} // derivation → its outputs
	readDrv := func(drv string) (*drvInfo, error) {
		if d, ok := drvOuts[drv]; ok {
			return d, nil
		}
		d, err := n.ReadDerivation(drv)
		if err != nil {
			return nil, err
		}
		di := &drvInfo{}
		for _, name := range slices.Sorted(maps.Keys(d.Outputs)) {
			di.names = append(di.names, name)
			di.paths = append(di.paths, d.Outputs[name].Path)
		}
		drvOuts[drv] = di
		return di, nil
	}

	requested := map[string]bool{}
	var roots []string
	for _, drv := range drvs {
		if requested[drv] {
			continue
		}
		requested[drv] = true
		di, err := readDrv(drv)
		if err != nil {
			return nil, err
		}
		roots = append(roots, di.paths...)
	}
	infos := map[string]nix.PathInfo{}
	for len(roots) > 0 {
		closure, err := n.Requisites(ctx, roots...)
		if err != nil {
			return nil, fmt.Errorf("runtime closure: %w", err)
		}
		var fresh []string
		for _, p := range closure {
			if _, ok := infos[p]; !ok {
				fresh = append(fresh, p)
			}
		}
		got, err := n.PathInfos(ctx, fresh...)
		if err != nil {
			return nil, fmt.Errorf("path info of the closure: %w", err)
		}
		// Each derivation publishes every output it built, so outputs
		// outside the closure asked for (a "dev" nobody refers to) join
		// it, with what they refer to.
		roots = nil
		var derivers []string
		queued := map[string]bool{}
		for _, pi := range got {
			infos[pi.Path] = pi
			if eligible(pi) && pi.Deriver != "" && drvOuts[pi.Deriver] == nil && !queued[pi.Deriver] {
				queued[pi.Deriver] = true
				derivers = append(derivers, pi.Deriver)
			}
		}
		// One nix-store call for all of them: each call is a process.
		invalid, err := n.Invalid(ctx, derivers...)
		if err != nil {
			return nil, err
		}
		gone := setOf(invalid)
		var more []string
		for _, drv := range derivers {
			if gone[drv] {
				b.log().Warn("not attested: the derivation is no longer in the store", "drv", drv)
				continue
			}
			di, err := readDrv(drv)
			if err != nil {
				return nil, err
			}
			for _, p := range di.paths {
				if _, ok := infos[p]; !ok {
					more = append(more, p)
				}
			}
		}
		if len(more) > 0 {
			inv, err := n.Invalid(ctx, more...)
			if err != nil {
				return nil, err
			}
			invalid := setOf(inv)
			for _, p := range more {
				if !invalid[p] {
					roots = append(roots, p)
				}
			}
		}
	}

	// One step per derivation with an attested output.
	steps := map[string]*step{}
	owner := map[string]*step{} // attested output → its step
	attest := func(drv string, req bool) error {
		if !req && o.Skip != nil && o.Skip(drv) {
			return nil
		}
		di := drvOuts[drv]
		st := &step{drv: drv, requested: req}
		for i, p := range di.paths {
			pi, ok := infos[p]
			if !ok {
				if req {
					return fmt.Errorf("%s: output %s is not valid (not realised?)", drv, p)
				}
				continue
			}
			if !eligible(pi) {
				if req && !slices.Contains(o.Checked, drv) {
					return fmt.Errorf("%w: %s: output %s was substituted, imported or built outside this build", ErrNotBuiltHere, drv, p)
				}
				if !req {
					continue
				}
			}
			st.names = append(st.names, di.names[i])
			st.outputs = append(st.outputs, pi)
			if pi.Registered.After(st.registered) {
				st.registered = pi.Registered
			}
		}
		if len(st.outputs) == 0 {
			return nil
		}
		steps[drv] = st
		for _, pi := range st.outputs {
			owner[pi.Path] = st
		}
		return nil
	}
	for _, drv := range slices.Sorted(maps.Keys(requested)) {
		if err := attest(drv, true); err != nil {
			return nil, err
		}
	}
	for _, drv := range slices.Sorted(maps.Keys(drvOuts)) {
		if requested[drv] {
			continue
		}
		if err := attest(drv, false); err != nil {
			return nil, err
		}
	}

	// Dependency order: a step after every step whose outputs its outputs
	// refer to (Kahn's algorithm, ties broken by derivation path).
	deps := map[*step]map[*step]bool{}
	users := map[*step][]*step{}
	for _, st := range steps {
		deps[st] = map[*step]bool{}
		for _, pi := range st.outputs {
			for _, r := range pi.References {
				if d := owner[r]; d != nil && d != st && !deps[st][d] {
					deps[st][d] = true
					users[d] = append(users[d], st)
				}
			}
		}
	}
	var ready, order []*step
	for _, st := range steps {
		if len(deps[st]) == 0 {
			ready = append(ready, st)
		}
	}
	for len(ready) > 0 {
		sort.Slice(ready, func(i, j int) bool { return ready[i].drv < ready[j].drv })
		st := ready[0]
		ready = ready[1:]
		order = append(order, st)
		for _, u := range users[st] {
			delete(deps[u], st)
			if len(deps[u]) == 0 {
				ready = append(ready, u)
			}
		}
	}
	if len(order) != len(steps) {
		return nil, fmt.Errorf("builder: the outputs' references form a cycle between derivations")
	}

	// Sources go with the first step that needs them, each after the
	// sources it refers to.
	placed := map[string]bool{}
	var place func(st *step, p string)
	place = func(st *step, p string) {
		pi, ok := infos[p]
		if placed[p] || !ok || !isSource(pi) || owner[p] != nil {
			return
		}
		placed[p] = true
		for _, r := range pi.References {
			if r != p {
				place(st, r)
			}
		}
		st.sources = append(st.sources, pi)
	}
	for _, st := range order {
		for _, pi := range st.outputs {
			for _, r := range pi.References {
				place(st, r)
			}
		}
	}
	return order, nil
}

// isSource: a content-addressed path that goes with the closure by its
// content address rather than as an attested output: one no derivation
// produced (builtins.path, builtins.toFile, nix-store --add), and a
// fixed-output derivation's output this builder does not attest (built
// before the job, substituted). The pusher recomputes its store path from
// the CA, so it needs no builder trust; left out, a job whose source
// tarball an earlier job fetched would publish a closure never complete.
func isSource(pi nix.PathInfo) bool {
	return pi.CA != ""
}

func setOf(ss []string) map[string]bool {
	m := make(map[string]bool, len(ss))
	for _, s := range ss {
		m[s] = true
	}
	return m
}
