// Package builder is what a Provenix builder does around a Nix build: it
// realises a derivation with the host's Nix, streams each output's NAR into
// staging while hashing it, describes the build in an SLSA provenance
// Statement, signs it with the builder's key and publishes one result per
// derivation. The key stays in this process; build steps never see it.
package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"sync"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/retry"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
)

// Publisher is the part of the queue a builder needs; *queue.Conn has it.
type Publisher interface {
	Stage(ctx context.Context, key string, r io.Reader) (queue.StagedInfo, error)
	PublishResult(ctx context.Context, r *queue.Result) (duplicate bool, err error)
}

// Builder builds and publishes.
type Builder struct {
	Nix       *nix.Nix
	Queue     Publisher
	Signer    *attest.Signer
	BuilderID string
	Tenant    string
	Version   string
	// NixKey, when set, also signs each output's narinfo fingerprint the
	// Nix way; a pusher whose policy knows the public key adds the
	// signature to the narinfo, so clients can require this builder's Sig.
	NixKey *signature.SecretKey
	// SignStatement, when set, signs instead of Signer: keyless signing
	// (attest.SignKeyless) has no long-lived key.
	SignStatement func(ctx context.Context, st *intoto.Statement) ([]byte, error)
	// RekorURL, when set, logs each bundle in this Rekor v2 transparency
	// log; the bundle then carries the entry and its inclusion proof, for
	// verifiers that require a log (verify --require-tlog).
	RekorURL string
	Logger   *slog.Logger
	// StageClosures makes Publish also stage the derivation's closure
	// export (its .drv, input .drv files and sources: what a volunteer
	// needs to rebuild it) under queue.ClosureKey and name it in the
	// result. A pusher needs it: it computes each output path from the
	// .drv closure (drvpath) and rejects results without one, so only
	// builders publishing to a pusher that does not check leave it off.
	StageClosures bool

	envMu sync.Mutex
	env   *nixEnv // nil until learnt
}

// nixEnv is what the provenance records about the Nix that built.
type nixEnv struct {
	version, sandbox string
	substituters     []string
}

// Target is what to build.
type Target struct {
	Installable attest.Installable
	// Args are --arg NAME EXPR and ArgStrs --argstr NAME VALUE for file
	// targets.
	Args, ArgStrs map[string]string
	// Source, when known, is the checkout the target came from.
	Source *attest.Source
	// Workflow, when a runner builds, is the forge job; InvocationID then
	// names the job run (its URL) instead of the local invocation.
	Workflow     *attest.Workflow
	InvocationID string
}

// Published is one derivation's result as it went out.
type Published struct {
	DrvPath   string
	System    string
	Outputs   []attest.Output
	MsgID     string
	Duplicate bool
	Bundle    []byte
	// Sources are the content-addressed paths sent with this result
	// (queue.Result.Sources).
	Sources []string
	// Requested: a derivation the caller asked for, not one of the
	// closure published with it.
	Requested bool
	// Built is how long realising took (requested derivations only);
	// Publish how long hashing, staging, signing and publishing took.
	Built, Publish time.Duration
	// Staged is how many bytes this result uploaded to staging: its
	// output and source NARs not staged before and, on the first result
	// of a closure, the closure export. What staging found there already
	// (queue.StagedInfo.Reused) is not counted.
	Staged int64
}

func (b *Builder) log() *slog.Logger {
	if b.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Logger
}

// Derivations resolves a target to derivation paths without building.
func (b *Builder) Derivations(ctx context.Context, t Target) ([]string, error) {
	in := t.Installable
	switch in.Kind {
	case KindDrv:
		if !strings.HasSuffix(in.Ref, ".drv") {
			return nil, fmt.Errorf("%s is not a .drv path", in.Ref)
		}
		return []string{in.Ref}, nil
	case KindFile:
		return b.Nix.Instantiate(ctx, in.File, in.Attr, t.Args, t.ArgStrs)
	case KindFlake:
		d, err := b.Nix.FlakeDerivation(ctx, in.Ref)
		if err != nil {
			return nil, err
		}
		return []string{d}, nil
	default:
		return nil, fmt.Errorf("unknown target kind %q", in.Kind)
	}
}

// Build realises every derivation of t and publishes the closure it built
// (PublishClosure): a result for each requested derivation and for every
// derivation of their runtime closure whose outputs this store built,
// dependencies first.
func (b *Builder) Build(ctx context.Context, t Target) ([]Published, error) {
	drvs, err := b.Derivations(ctx, t)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	b.log().Info("realising", "drvs", drvs)
	if _, err := b.Nix.RealiseWith(ctx, nix.RealiseOptions{}, drvs...); err != nil {
		return nil, err
	}
	finished := time.Now()
	out, err := b.PublishClosure(ctx, t, drvs, ClosureOptions{Started: start, Finished: finished})
	for i := range out {
		if out[i].Requested {
			out[i].Built = finished.Sub(start)
		}
	}
	return out, err
}

// BuildTargets builds the targets in order (Build) and hands each result
// to each as it comes, those of a target that failed part way included.
// It stops at the first target that fails, or the first error of each
// (joined with the build's).
func (b *Builder) BuildTargets(ctx context.Context, targets []Target, each func(Published) error) error {
	for _, t := range targets {
		pubs, err := b.Build(ctx, t)
		for _, p := range pubs {
			if eerr := each(p); eerr != nil {
				return errors.Join(err, eerr)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// stage streams the NAR of info into staging. DumpNAR checks the bytes
// against the registered hash at the end; a mismatch fails the pipe, so the
// staged object is abandoned instead of published under a hash it lacks.
//
// An upload cut by the broker (restarted, connection lost) is retried
// from a fresh dump (stageRetry): the NAR is still in the
// store, and a build that may have taken hours must not fail for it.
func (b *Builder) stage(ctx context.Context, key string, info nix.PathInfo) (uploaded int64, err error) {
	b.log().Info("staging NAR", "path", info.Path, "bytes", info.NarSize)
	p := stageRetry
	p.OnRetry = func(attempt int, _ time.Duration, err error) {
		b.log().Warn("staging failed, retrying", "path", info.Path, "attempt", attempt, "err", err)
	}
	err = retry.Do(ctx, p, func(int) error {
		si, again, err := b.stageOnce(ctx, key, info)
		if err != nil && !again {
			return retry.Stop(err)
		}
		if err == nil && !si.Reused {
			uploaded = int64(si.Size)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("stage %s: %w", info.Path, err)
	}
	return uploaded, nil
}

// stageRetry: a NAR upload is tried 5 times, waiting 1, 2, 4 and 4 s in
// between (11 s in all, a broker restart's worth).
var stageRetry = retry.Policy{Initial: time.Second, Max: 4 * time.Second, Attempts: 5}

var errStagingEnded = errors.New("staging ended")

// stageOnce makes one upload; retry is true when it failed for the
// broker's sake (queue.Retryable), not because the dump failed.
func (b *Builder) stageOnce(ctx context.Context, key string, info nix.PathInfo) (si queue.StagedInfo, retry bool, err error) {
	pr, pw := io.Pipe()
	dumped := make(chan error, 1)
	go func() {
		err := b.Nix.DumpNAR(pw, info)
		pw.CloseWithError(err)
		dumped <- err
	}()
	si, err = b.Queue.Stage(ctx, key, pr)
	pr.CloseWithError(errStagingEnded) // stops the dump if Stage stopped reading
	derr := <-dumped
	if err == nil {
		return si, false, nil
	}
	if derr != nil && !errors.Is(derr, errStagingEnded) {
		return si, false, err // the dump's own failure (NAR mismatch): not the broker's
	}
	return si, queue.Retryable(err), err
}

// stageClosure streams nix-store --export of drvPath's closure into
// staging (nix.ExportStream: never whole in memory, and a failed export
// makes Stage abandon the object).
//
// The export is named after drvPath and holds the closure of drvs (of
// drvPath alone when none are given).
func (b *Builder) stageClosure(ctx context.Context, drvPath string, drvs ...string) (key string, uploaded int64, err error) {
	if len(drvs) == 0 {
		drvs = []string{drvPath}
	}
	paths, err := b.Nix.Requisites(ctx, drvs...)
	if err != nil {
		return "", 0, fmt.Errorf("closure of %s: %w", drvPath, err)
	}
	key = queue.ScopedKey(queue.ClosureKey(drvPath), b.BuilderID)
	b.log().Info("staging closure", "drv", drvPath, "paths", len(paths))
	var info queue.StagedInfo
	err = b.Nix.ExportStream(ctx, func(r io.Reader) (err error) {
		info, err = b.Queue.Stage(ctx, key, r)
		return err
	}, paths...)
	if err != nil {
		return "", 0, fmt.Errorf("stage closure of %s: %w", drvPath, err)
	}
	b.log().Debug("staged closure", "drv", drvPath, "key", key, "bytes", info.Size, "reused", info.Reused)
	if info.Reused {
		return key, 0, nil
	}
	return key, int64(info.Size), nil
}

// nixEnv learns the Nix environment once: only a success is kept, so a
// caller cancelled during the probe (a runner job's request, say) leaves
// the next caller to probe again instead of failing every build after it.
func (b *Builder) nixEnv(ctx context.Context) (nixEnv, error) {
	b.envMu.Lock()
	defer b.envMu.Unlock()
	if b.env != nil {
		return *b.env, nil
	}
	v, err := b.Nix.Version(ctx)
	if err != nil {
		return nixEnv{}, fmt.Errorf("nix version: %w", err)
	}
	cfg, err := b.Nix.Config(ctx)
	if err != nil {
		return nixEnv{}, fmt.Errorf("nix configuration: %w", err)
	}
	b.env = &nixEnv{version: v.String(), sandbox: cfg["sandbox"], substituters: strings.Fields(cfg["substituters"])}
	return *b.env, nil
}

// invocationID names this build run; the runner replaces it with the
// forge's run URL.
func invocationID(drv string, started time.Time) string {
	return fmt.Sprintf("provenix-build:%s@%s", path.Base(drv), started.UTC().Format(time.RFC3339Nano))
}
