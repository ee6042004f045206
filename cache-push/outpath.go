package cachepush

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/nix-community/go-nix/pkg/derivation"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/drvpath"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
)

// ReasonOutputPath: an output path is not the one its derivation
// computes, or the derivation's closure needed to tell is missing or
// malformed. The builder signed it, so it is the builder's fault.
const ReasonOutputPath = "output-path"

// ErrOutputPath: a result's output path is not its derivation's.
var ErrOutputPath = errors.New("output path is not the derivation's")

// checkOutputPaths checks that every output of the verified result is
// the path its derivation computes (drvpath), so that no builder can
// publish bytes under the hash part of a path that belongs to another
// derivation: the quorum and its overrides (by name) decide what goes
// under a path, never which derivation a path is. The derivation and
// its inputs come from the closure export the result names, each .drv
// checked against its path; what was computed is remembered per .drv.
// A permanent failure is a *RejectedError; anything else may be retried.
func (p *Pusher) checkOutputPaths(ctx context.Context, r *queue.Result, v *attest.Verified) error {
	if p.cfg.UncheckedOutputPathsUnsafe {
		return nil
	}
	outs, ok := p.drvs.Known(v.DrvPath)
	if !ok {
		var err error
		if outs, err = p.computeOutputs(ctx, r, v.DrvPath); err != nil {
			return err
		}
	}
	for _, o := range v.Outputs {
		want, ok := outs[o.Name]
		switch {
		case !ok:
			return rejected(ReasonOutputPath, fmt.Errorf("%w: %s has no output %q", ErrOutputPath, v.DrvPath, o.Name))
		case want != o.Path:
			return rejected(ReasonOutputPath, fmt.Errorf("%w: output %s of %s is %s, not %s", ErrOutputPath, o.Name, v.DrvPath, want, o.Path))
		}
	}
	return nil
}

// computeOutputs computes drvPath's outputs from the .drv files of r's
// closure export.
func (p *Pusher) computeOutputs(ctx context.Context, r *queue.Result, drvPath string) (map[string]string, error) {
	if r.Closure == "" {
		return nil, rejected(ReasonOutputPath, errors.New("no closure staged: the pusher checks output paths against the derivation's .drv closure (builders stage it unless told --no-closure)"))
	}
	// A builder names one export for every result of a closure it
	// publishes, and those results tend to arrive together: one of them
	// reads the export while the others wait for that read and compute
	// from its derivations. They share what any of them would have read
	// under the key at that moment, every .drv checked against its path
	// (drvpath), so whose result started the read does not matter; and
	// nothing outlives the read: its failure (or its reader's cancelled
	// ctx) is the waiters' too, this once, and the next result reads
	// again.
	v, err, _ := p.exports.Do(r.Closure, func() (any, error) { return p.readExport(ctx, r.Closure) })
	if err != nil {
		return nil, err
	}
	outs, err := p.drvs.OutputPaths(drvPath, v.(map[string]*derivation.Derivation))
	if errors.Is(err, drvpath.ErrMissing) || errors.Is(err, drvpath.ErrInvalid) {
		return nil, rejected(ReasonOutputPath, fmt.Errorf("closure %s: %w", r.Closure, err))
	}
	return outs, err
}

// readExport reads the closure export staged under key and returns the
// .drv files in it the Calculator has not computed, parsed, by path. It
// computes their outputs while they are at hand, so that the closure's
// other results need not read the export again.
func (p *Pusher) readExport(ctx context.Context, key string) (map[string]*derivation.Derivation, error) {
	rc, _, err := p.cfg.Staging.OpenStaged(ctx, key)
	if errors.Is(err, queue.ErrNotFound) {
		return nil, rejected(ReasonStaging, fmt.Errorf("staged closure %s: %w", key, err))
	}
	if err != nil {
		return nil, fmt.Errorf("closure %s: %w", key, err)
	}
	defer rc.Close()
	drvs := map[string]*derivation.Derivation{}
	err = nix.ReadExportDerivations(rc, p.cfg.DrvLimits, func(path string, b []byte) error {
		if !p.drvs.Needs(path) {
			return nil
		}
		d, err := derivation.ReadDerivation(bytes.NewReader(b))
		if err != nil {
			return fmt.Errorf("%w: %s: %w", nix.ErrBadExport, path, err)
		}
		drvs[path] = d
		return nil
	})
	switch {
	case errors.Is(err, queue.ErrCorrupt):
		return nil, rejected(ReasonStaging, fmt.Errorf("staged closure %s: %w", key, err))
	case errors.Is(err, nix.ErrBadExport), errors.Is(err, nix.ErrExportLimit):
		return nil, rejected(ReasonOutputPath, fmt.Errorf("closure %s: %w", key, err))
	case err != nil:
		return nil, fmt.Errorf("closure %s: %w", key, err)
	}
	for _, d := range slices.Sorted(maps.Keys(drvs)) {
		// A derivation that does not compute fails its own result.
		_, _ = p.drvs.OutputPaths(d, drvs)
	}
	return drvs, nil
}

// ReasonRestage: the object under a shared (unscoped) staging key did not
// hold the attested NAR. Anyone who may stage can replace such an object,
// so it is not the builder's fault: the builder should stage under its
// own scope (queue.ScopedKey, which builders use) and publish again.
const ReasonRestage = "restage"

// narMismatchReason is why a staged NAR that is not the attested one is
// refused: the builder's own doing under its scope (ReasonNAR), maybe
// someone else's under a shared key (ReasonRestage).
func narMismatchReason(stagingKey string) string {
	if _, ok := queue.KeyScope(stagingKey); ok {
		return ReasonNAR
	}
	return ReasonRestage
}
