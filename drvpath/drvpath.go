// Package drvpath computes the output paths a Nix derivation gives, the
// way Nix does: an input-addressed output's path hashes the derivation
// with each input derivation replaced by its own hash (Nix's
// hashDerivationModulo), computed bottom-up over the .drv closure; a
// fixed output's path hashes its declared content hash. A cache that
// checks a builder's claimed output path against this knows the path
// belongs to the derivation: no builder can publish other bytes under
// the hash part of a path some derivation will produce.
//
// The functions are pure: they take parsed derivations by store path and
// check that each is what its path says (its .drv path is the one its
// contents give), so a caller may feed them derivations from an
// untrusted source.
package drvpath

import (
	"container/list"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/nix-community/go-nix/pkg/derivation"
)

var (
	// ErrMissing: a derivation of the closure is not among those given.
	ErrMissing = errors.New("drvpath: derivation missing")
	// ErrInvalid: a derivation is malformed, is not what its path says,
	// states output paths other than its own, or cannot be computed
	// (floating content-addressed outputs).
	ErrInvalid = errors.New("drvpath: invalid derivation")
)

// DefaultCacheSize is how many derivations a Calculator remembers when
// NewCalculator is given 0.
const DefaultCacheSize = 100_000

// Calculator computes output paths and remembers, per .drv path, each
// derivation's replacement (its hashDerivationModulo) and outputs: a
// .drv path names its contents, so what was computed for it stays true.
// It is safe for concurrent use; the cache is bounded (least recently
// used entries go first).
type Calculator struct {
	mu    sync.Mutex
	max   int
	order *list.List // of string, most recent first
	memo  map[string]*entry
}

type entry struct {
	elem        *list.Element
	replacement string
	outputs     map[string]string
}

// NewCalculator returns a Calculator remembering up to size derivations
// (DefaultCacheSize when size <= 0).
func NewCalculator(size int) *Calculator {
	if size <= 0 {
		size = DefaultCacheSize
	}
	return &Calculator{max: size, order: list.New(), memo: map[string]*entry{}}
}

// Known returns the output paths of drvPath if the Calculator has
// computed them already.
func (c *Calculator) Known(drvPath string) (map[string]string, bool) {
	e := c.get(drvPath)
	if e == nil {
		return nil, false
	}
	return maps.Clone(e.outputs), true
}

// Needs reports whether the Calculator must be given drvPath's
// derivation to compute: it has not remembered it.
func (c *Calculator) Needs(drvPath string) bool { return c.get(drvPath) == nil }

// OutputPaths returns the output paths (by output name) of the
// derivation at drvPath. drvs holds the derivations of its closure by
// store path, parsed; those the Calculator remembers may be left out.
// Each derivation used is checked to be what its path says, and to
// state the output paths it computes.
func (c *Calculator) OutputPaths(drvPath string, drvs map[string]*derivation.Derivation) (map[string]string, error) {
	if err := c.resolve(drvPath, drvs); err != nil {
		return nil, err
	}
	e := c.get(drvPath)
	if e == nil {
		// Evicted already: a cache smaller than one closure.
		return nil, fmt.Errorf("drvpath: cache of %d too small for the closure of %s", c.max, drvPath)
	}
	return maps.Clone(e.outputs), nil
}

// resolve computes drvPath and every derivation below it that is not
// remembered, inputs first, without recursion (a closure may be deep).
func (c *Calculator) resolve(drvPath string, drvs map[string]*derivation.Derivation) error {
	// done holds what this call computed, so an eviction in between
	// cannot lose an input before its dependent is computed.
	done := map[string]string{}
	onPath := map[string]bool{}
	stack := []string{drvPath}
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		if _, ok := done[p]; ok {
			stack = stack[:len(stack)-1]
			continue
		}
		if e := c.get(p); e != nil {
			done[p] = e.replacement
			stack = stack[:len(stack)-1]
			continue
		}
		d, ok := drvs[p]
		if !ok || d == nil {
			return fmt.Errorf("%w: %s", ErrMissing, p)
		}
		var pending []string
		for _, in := range slices.Sorted(maps.Keys(d.InputDerivations)) {
			if _, ok := done[in]; ok {
				continue
			}
			if e := c.get(in); e != nil {
				done[in] = e.replacement
				continue
			}
			pending = append(pending, in)
		}
		if len(pending) > 0 {
			if onPath[p] {
				return fmt.Errorf("%w: %s depends on itself", ErrInvalid, p)
			}
			onPath[p] = true
			stack = append(stack, pending...)
			continue
		}
		repl, outs, err := compute(p, d, done)
		if err != nil {
			return err
		}
		done[p] = repl
		c.put(p, &entry{replacement: repl, outputs: outs})
		stack = stack[:len(stack)-1]
	}
	return nil
}

// compute checks d against its path and computes its replacement and
// output paths; replacements holds those of every input derivation.
func compute(p string, d *derivation.Derivation, replacements map[string]string) (string, map[string]string, error) {
	if err := d.Validate(); err != nil {
		return "", nil, fmt.Errorf("%w: %s: %w", ErrInvalid, p, err)
	}
	for name, o := range d.Outputs {
		// A floating content-addressed (or impure) output has no path
		// until built: nothing here can vouch for it.
		if o.Path == "" || (o.HashAlgorithm != "" && o.Hash == "") {
			return "", nil, fmt.Errorf("%w: %s: output %s has no path fixed by the derivation (floating content address)", ErrInvalid, p, name)
		}
	}
	got, err := d.DrvPath()
	if err != nil {
		return "", nil, fmt.Errorf("%w: %s: %w", ErrInvalid, p, err)
	}
	if got != p {
		return "", nil, fmt.Errorf("%w: %s: its contents are the derivation %s", ErrInvalid, p, got)
	}
	in := make(map[string]string, len(d.InputDerivations))
	for dp := range d.InputDerivations {
		in[dp] = replacements[dp]
	}
	outs, err := d.CalculateOutputPaths(in)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %s: %w", ErrInvalid, p, err)
	}
	for name, o := range d.Outputs {
		if outs[name] != o.Path {
			return "", nil, fmt.Errorf("%w: %s: output %s is %s, but the derivation computes %s", ErrInvalid, p, name, o.Path, outs[name])
		}
	}
	repl, err := d.CalculateDrvReplacement(in)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %s: %w", ErrInvalid, p, err)
	}
	return repl, outs, nil
}

func (c *Calculator) get(p string) *entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.memo[p]
	if e != nil {
		c.order.MoveToFront(e.elem)
	}
	return e
}

func (c *Calculator) put(p string, e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.memo[p]; old != nil {
		c.order.MoveToFront(old.elem)
		return
	}
	e.elem = c.order.PushFront(p)
	c.memo[p] = e
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.memo, last.Value.(string))
	}
}
