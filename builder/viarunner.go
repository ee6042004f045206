package builder

import (
	"context"
	"fmt"
	"time"

	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/runner/capture"
)

// RunnerAttester is the job's side of a Provenix runner's socket;
// *capture.Client is one.
type RunnerAttester interface {
	Attest(ctx context.Context, drvs []string) ([]capture.Result, error)
}

var _ RunnerAttester = (*capture.Client)(nil)

// RunnerBuild is one derivation this job realised and the runner attested.
type RunnerBuild struct {
	// DrvPath is the requested derivation; Results may hold more (the
	// closure the runner published with it).
	DrvPath string
	// Built is how long realising DrvPath took.
	Built   time.Duration
	Results []capture.Result
}

// ViaRunnerOptions are hooks of BuildViaRunner, for the caller's output.
type ViaRunnerOptions struct {
	// Realising, when set, is called before each derivation is realised.
	Realising func(drvPath string)
	// Attested, when set, is called with what the runner answered for each
	// derivation, also when it refused some (with the results it gave).
	Attested func(RunnerBuild)
}

// BuildViaRunner is building inside a Provenix runner job, where the step
// never sees a key: it realises every derivation of each target as the job
// user with nx, one at a time, and asks the runner over its socket to
// attest each; the runner checks the outputs in its own store, signs and
// publishes. It stops at the first error: a target that does not
// instantiate, a failed build, or the runner's refusal ("the runner did not
// attest DRV: ...").
func BuildViaRunner(ctx context.Context, nx *nix.Nix, rc RunnerAttester, targets []Target, o ViaRunnerOptions) error {
	b := &Builder{Nix: nx}
	for _, t := range targets {
		drvs, err := b.Derivations(ctx, t)
		if err != nil {
			return err
		}
		for _, drv := range drvs {
			if o.Realising != nil {
				o.Realising(drv)
			}
			start := time.Now()
			if _, err := nx.Realise(ctx, drv); err != nil {
				return err
			}
			built := time.Since(start)
			res, err := rc.Attest(ctx, []string{drv})
			if o.Attested != nil {
				o.Attested(RunnerBuild{DrvPath: drv, Built: built, Results: res})
			}
			if err != nil {
				return fmt.Errorf("the runner did not attest %s: %w", drv, err)
			}
		}
	}
	return nil
}
