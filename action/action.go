// Package action is the logic of 'provenix action', the program behind the
// workflow step action.yml: it reads its inputs from INPUT_* like an Actions
// step (inputs.go), builds and attests the installables (targets.go), signed
// by the Provenix runner over its socket, by the step itself with a key from
// a secret, or keylessly with a Fulcio certificate for the job's OIDC
// identity (signing.go, oidc.go), publishes the results, writes the bundles
// under RUNNER_TEMP, reports commit statuses and release assets to the forge
// (forge.go), sets the step's outputs and writes a job summary (outputs.go)
// and, when asked, waits for the cache and verifies what it published
// (verify.go).
package action

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	githubactions "github.com/sethvargo/go-githubactions"

	"codeberg.org/provenix/provenix/forgeapi"
)

// Verdicts, the step's verdict output.
const (
	VerdictPublished   = "published"
	VerdictVerified    = "verified"
	VerdictNotVerified = "not verified"
)

// Config is what Run needs from its caller.
type Config struct {
	// Getenv reads the step's environment (os.Getenv in production).
	Getenv func(string) string
	// Stdout receives workflow commands (::error::, ::add-mask::) and the
	// report; Stderr Nix's build log.
	Stdout, Stderr io.Writer
	// Version is the provenix version recorded in the provenance.
	Version string
	Logger  *slog.Logger
	// CacheTimeout bounds the wait for each narinfo (default 2 minutes).
	CacheTimeout time.Duration
}

// Row is one attested output.
type Row struct {
	System    string
	DrvPath   string
	Output    string
	StorePath string
	NarSHA256 string
	BuilderID string
	Bundle    string // file under RUNNER_TEMP; empty when the runner signed
	Duplicate bool
	Verdict   string
}

// Run runs the step. Every error is also reported as an ::error::
// annotation; the caller exits non-zero on one.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CacheTimeout == 0 {
		cfg.CacheTimeout = 2 * time.Minute
	}
	gha := githubactions.New(githubactions.WithGetenv(cfg.Getenv), githubactions.WithWriter(cfg.Stdout))
	s := &step{cfg: cfg, gha: gha}
	err := s.run(ctx)
	if err != nil {
		gha.Errorf("provenix: %s", err)
	}
	return err
}

type step struct {
	cfg  Config
	gha  *githubactions.Action
	in   *inputs
	rows []Row
	// signerNote says in the summary who signed; capture goes into the
	// provenance's workflow record.
	signerNote string
	capture    string
	// pubFile is the step key's public half, for verify.
	pubFile string
}

func (s *step) run(ctx context.Context) error {
	in, err := readInputs(s.gha, s.cfg.Getenv)
	if err != nil {
		return err
	}
	s.in = in
	defer func() {
		if s.pubFile != "" {
			os.Remove(s.pubFile)
		}
	}()
	var buildErr error
	switch in.signing {
	case SigningRunner:
		buildErr = s.buildViaRunner(ctx)
	case SigningKey:
		buildErr = s.buildWithKey(ctx)
	case SigningKeyless:
		buildErr = s.buildKeyless(ctx)
	default:
		return fmt.Errorf("input signing %q: want runner, key or keyless", in.signing)
	}
	verdict := VerdictPublished
	var verifyErr error
	fb := s.forge(ctx)
	if buildErr == nil && in.verify {
		fb.statuses(ctx, s.rows, forgeapi.StatePending, "published; waiting for the cache to verify")
		verdict, verifyErr = s.verifyAll(ctx)
	}
	switch {
	case buildErr != nil:
		fb.statuses(ctx, s.rows, forgeapi.StateFailure, "build or publication failed")
	case verifyErr != nil:
		fb.statuses(ctx, s.rows, forgeapi.StateFailure, "not verified in the cache")
	case in.verify:
		fb.statuses(ctx, s.rows, forgeapi.StateSuccess, "verified in the cache")
	default:
		fb.statuses(ctx, s.rows, forgeapi.StatePending, "published; the cache decides")
	}
	if buildErr == nil {
		fb.releaseAssets(ctx, s.rows)
	}
	if len(s.rows) > 0 {
		if err := s.outputs(verdict); err != nil {
			return errors.Join(buildErr, verifyErr, err)
		}
	}
	return errors.Join(buildErr, verifyErr)
}
