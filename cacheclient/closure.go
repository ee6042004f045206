package cacheclient

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nix-community/go-nix/pkg/narinfo"
)

// ClosureOptions configure VerifyClosure.
type ClosureOptions struct {
	VerifyOptions
	// Concurrency is how many paths are fetched and verified at once; 0
	// means 4.
	Concurrency int
	// Progress, when set, is called after each path's verdict with the
	// number of paths done and the closure's size (known once the walk is
	// over, which comes first). Calls are serialised.
	Progress func(done, total int, r *Report)
	// Walking, when set, is called as the walk finds paths (after each
	// level of references) with how many it has found so far.
	Walking func(found int)
}

// ClosureReport is the verdict on a closure: one Report per path, the root
// first and then in the order the walk found them (breadth first).
type ClosureReport struct {
	Root     string    `json:"root"`
	Verified bool      `json:"verified"`
	Total    int       `json:"total"`
	Good     int       `json:"verifiedPaths"`
	Bad      int       `json:"notVerifiedPaths"`
	Paths    []*Report `json:"paths"`
}

// VerifyClosure verifies every path of root's closure in the cache: it
// follows narinfo References transitively from root and verifies each path
// as Verify does. A reference whose narinfo is missing is a NOT VERIFIED
// path ("not in the cache"), as is one whose narinfo is untrusted or
// malformed; the references of such a path are not followed, since its
// narinfo cannot be trusted to list them. The closure is verified when
// every path is.
//
// An error means no verdict: root is not a store path (ErrInvalidPath),
// root's own narinfo is missing (ErrNotFound), or the cache could not be
// read. An untrusted or mismatched root narinfo is a verdict, as in Verify.
func (c *Client) VerifyClosure(ctx context.Context, root string, o ClosureOptions) (*ClosureReport, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	if o.Bundles != nil {
		return nil, errors.New("cacheclient: a closure is verified with the cache's own provenance, not given bundles")
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	vt, why, err := c.loadVSATrust(ctx, o.VSA)
	if err != nil {
		return nil, err
	}
	// narinfos are small: the walk can have more requests in flight.
	nodes, err := c.walk(ctx, root, 4*o.Concurrency, o.Walking)
	if err != nil {
		return nil, err
	}
	cr := &ClosureReport{Root: root, Total: len(nodes), Paths: make([]*Report, len(nodes))}
	var (
		mu   sync.Mutex
		done int
		wg   sync.WaitGroup
		errs []error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, o.Concurrency)
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			rep := n.rep
			if rep == nil {
				rep = &Report{StorePath: n.path, From: c.base, Quorum: o.Quorum}
				var err error
				if rep, err = c.verifyNarinfo(ctx, rep, n.ni, o.VerifyOptions, vt, why); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", n.path, err))
					mu.Unlock()
					cancel()
					return
				}
			}
			mu.Lock()
			defer mu.Unlock()
			cr.Paths[i] = rep
			done++
			if o.Progress != nil {
				o.Progress(done, len(nodes), rep)
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, r := range cr.Paths {
		if r.Verified {
			cr.Good++
		} else {
			cr.Bad++
		}
	}
	cr.Verified = cr.Bad == 0
	return cr, nil
}

// node is a path found by the walk: its narinfo, or (when the narinfo
// failed) its final report.
type node struct {
	path string
	ni   *narinfo.NarInfo
	rep  *Report
}

// walk fetches narinfos breadth first from root, level by level, with up
// to conc requests at once.
func (c *Client) walk(ctx context.Context, root string, conc int, walking func(int)) ([]node, error) {
	type found struct {
		path, by string
	}
	seen := map[string]bool{root: true}
	var nodes []node
	level := []found{{path: root}}
	for len(level) > 0 {
		results := make([]node, len(level))
		errs := make([]error, len(level))
		var wg sync.WaitGroup
		sem := make(chan struct{}, conc)
		for i, f := range level {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				ni, err := c.Narinfo(ctx, f.path)
				n := node{path: f.path, ni: ni}
				switch {
				case err == nil:
				case errors.Is(err, ErrNotFound) && f.by == "":
					errs[i] = err // the root: no verdict without it, as for Verify
				case errors.Is(err, ErrNotFound):
					n.rep = (&Report{StorePath: f.path, From: c.base}).fail("not in the cache (referenced by " + f.by + ")")
				case errors.Is(err, ErrInvalidPath) && f.by == "":
					errs[i] = err
				case errors.Is(err, ErrUntrusted), errors.Is(err, ErrMismatch), errors.Is(err, ErrMalformed), errors.Is(err, ErrInvalidPath):
					n.rep = (&Report{StorePath: f.path, From: c.base}).fail(err.Error())
					if errors.Is(err, ErrUntrusted) {
						n.rep.NarinfoSig = err.Error()
					}
				default:
					errs[i] = err
				}
				results[i] = n
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		var next []found
		for _, n := range results {
			nodes = append(nodes, n)
			if n.ni == nil || n.rep != nil {
				continue
			}
			for _, r := range References(n.ni) {
				if !seen[r] {
					seen[r] = true
					next = append(next, found{path: r, by: n.path})
				}
			}
		}
		level = next
		if walking != nil {
			walking(len(nodes) + len(next))
		}
	}
	return nodes, nil
}
