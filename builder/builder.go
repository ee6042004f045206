// Package builder is what a Provenix builder does around a Nix build: it
// realises a derivation with the host's Nix, streams each output's NAR into
// staging while hashing it, describes the build in an SLSA provenance
// Statement, signs it with the builder's key and publishes one result per
// derivation. The key stays in this process; build steps never see it.
package builder

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
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
	// result.
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
	case "drv":
		if !strings.HasSuffix(in.Ref, ".drv") {
			return nil, fmt.Errorf("%s is not a .drv path", in.Ref)
		}
		return []string{in.Ref}, nil
	case "file":
		return b.Nix.Instantiate(ctx, in.File, in.Attr, t.Args, t.ArgStrs)
	case "flake":
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

// PublishClosure attests and publishes realised derivations and the
// closure this store built for them: one result per derivation, each
// published only after the results of every derivation whose outputs its
// outputs refer to. Content-addressed sources of the closure travel in the
// first result that needs them (queue.Result.Sources). What the store
// substituted or imported is left out, as are outputs o.Eligible refuses.
// On error, the results already published are returned with it.
func (b *Builder) PublishClosure(ctx context.Context, t Target, drvs []string, o ClosureOptions) ([]Published, error) {
	if _, err := b.nixEnv(ctx); err != nil {
		return nil, err
	}
	steps, err := b.planClosure(ctx, drvs, o)
	if err != nil {
		return nil, err
	}
	var out []Published
	for _, st := range steps {
		started, finished := o.Started, o.Finished
		if !st.requested {
			// Built during this build, or earlier: Nix keeps the
			// registration time only, to the second.
			switch reg := st.registered; {
			case reg.Before(started.Truncate(time.Second)):
				started, finished = reg, reg
			case reg.Before(started):
				finished = started
			case reg.Before(finished):
				finished = reg
			}
		}
		p, err := b.publishStep(ctx, st, t, started, finished)
		if err != nil {
			return out, fmt.Errorf("%s: %w", st.drv, err)
		}
		out = append(out, *p)
	}
	return out, nil
}

// Publish attests and publishes one realised derivation: every output, as
// the store has it, and nothing of its closure (PublishClosure has that).
func (b *Builder) Publish(ctx context.Context, drvPath string, t Target, started, finished time.Time) (*Published, error) {
	if _, err := b.nixEnv(ctx); err != nil {
		return nil, err
	}
	drv, err := b.Nix.ReadDerivation(drvPath)
	if err != nil {
		return nil, err
	}
	st := &step{drv: drvPath, requested: true}
	var paths []string
	for _, name := range slices.Sorted(maps.Keys(drv.Outputs)) {
		st.names = append(st.names, name)
		paths = append(paths, drv.Outputs[name].Path)
	}
	if st.outputs, err = b.Nix.PathInfos(ctx, paths...); err != nil {
		return nil, fmt.Errorf("outputs of %s: %w", drvPath, err)
	}
	return b.publishStep(ctx, st, t, started, finished)
}

// publishStep stages the NARs of a step's outputs and sources, describes
// the build in a signed Statement and publishes the result: the one way
// every result goes out.
func (b *Builder) publishStep(ctx context.Context, st *step, t Target, started, finished time.Time) (*Published, error) {
	t0 := time.Now()
	drvPath := st.drv
	env, err := b.nixEnv(ctx)
	if err != nil {
		return nil, err
	}
	drv, err := b.Nix.ReadDerivation(drvPath)
	if err != nil {
		return nil, err
	}
	depPaths := []string{drvPath}
	for _, p := range slices.Sorted(maps.Keys(drv.InputDerivations)) {
		depPaths = append(depPaths, p)
	}
	depPaths = append(depPaths, drv.InputSources...)
	// One nix-store call for the inputs: each call is a process.
	depInfos, err := b.Nix.PathInfo(ctx, depPaths...)
	if err != nil {
		return nil, fmt.Errorf("inputs of %s: %w", drvPath, err)
	}

	if t.InvocationID == "" {
		t.InvocationID = invocationID(drvPath, started)
	}
	build := &attest.Build{
		DrvPath:        drvPath,
		System:         drv.Platform,
		Installable:    t.Installable,
		Source:         t.Source,
		Workflow:       t.Workflow,
		NixVersion:     env.version,
		Sandbox:        env.sandbox,
		Substituters:   env.substituters,
		BuilderID:      b.BuilderID,
		BuilderVersion: b.Version,
		InvocationID:   t.InvocationID,
		StartedOn:      started,
		FinishedOn:     finished,
	}
	for _, d := range depInfos {
		build.Dependencies = append(build.Dependencies, attest.Dependency{Path: d.Path, NarHash: d.NarHash})
	}
	res := &queue.Result{
		Version: queue.ResultVersion,
		Tenant:  b.Tenant,
		Builder: b.BuilderID,
		DrvPath: drvPath,
		System:  drv.Platform,
	}
	for i, info := range st.outputs {
		o := attest.Output{Name: st.names[i], Path: info.Path, NarHash: info.NarHash, NarSize: info.NarSize, References: info.References}
		qo, err := b.stageOutput(ctx, info)
		if err != nil {
			return nil, err
		}
		qo.Name = o.Name
		if b.NixKey != nil {
			sig, err := b.NixKey.Sign(rand.Reader, nix.Fingerprint(o.Path, o.NarHash, o.NarSize, o.References))
			if err != nil {
				return nil, fmt.Errorf("nix signature of %s: %w", o.Path, err)
			}
			qo.NixSig = sig.String()
		}
		build.Outputs = append(build.Outputs, o)
		res.Outputs = append(res.Outputs, qo)
	}
	var sources []string
	for _, info := range st.sources {
		qo, err := b.stageOutput(ctx, info)
		if err != nil {
			return nil, err
		}
		res.Sources = append(res.Sources, qo)
		sources = append(sources, info.Path)
	}

	if b.StageClosures {
		key, err := b.stageClosure(ctx, drvPath)
		if err != nil {
			return nil, err
		}
		res.Closure = key
	}

	st2, err := attest.NewStatement(build)
	if err != nil {
		return nil, err
	}
	var bundle []byte
	if b.SignStatement != nil {
		bundle, err = b.SignStatement(ctx, st2)
	} else if b.RekorURL != "" {
		bundle, err = attest.SignWithLog(ctx, st2, b.Signer, attest.LogOptions{RekorURL: b.RekorURL})
	} else {
		bundle, err = attest.Sign(ctx, st2, b.Signer)
	}
	if err != nil {
		return nil, err
	}
	res.Bundle = bundle
	dup, err := b.Queue.PublishResult(ctx, res)
	if err != nil {
		return nil, err
	}
	b.log().Info("published", "drv", drvPath, "outputs", len(res.Outputs), "sources", len(res.Sources), "duplicate", dup)
	return &Published{
		DrvPath: drvPath, System: drv.Platform, Outputs: build.Outputs, Sources: sources, Requested: st.requested,
		MsgID: res.MsgID(), Duplicate: dup, Bundle: bundle, Publish: time.Since(t0),
	}, nil
}

// stageOutput stages a path's NAR under its content-addressed key and
// describes it for the result (without Name and NixSig).
func (b *Builder) stageOutput(ctx context.Context, info nix.PathInfo) (queue.Output, error) {
	hexHash := hex.EncodeToString(info.NarHash[:])
	key := queue.StagingKey(hexHash)
	if err := b.stage(ctx, key, info); err != nil {
		return queue.Output{}, err
	}
	return queue.Output{
		Path: info.Path, NarHash: hexHash, NarSize: info.NarSize, StagingKey: key,
		References: info.References, CA: info.CA,
	}, nil
}

// stage streams the NAR of info into staging. DumpNAR checks the bytes
// against the registered hash at the end; a mismatch fails the pipe, so the
// staged object is abandoned instead of published under a hash it lacks.
//
// An upload cut by the broker (restarted, connection lost) is retried
// from a fresh dump, up to stageAttempts times: the NAR is still in the
// store, and a build that may have taken hours must not fail for it.
func (b *Builder) stage(ctx context.Context, key string, info nix.PathInfo) error {
	b.log().Info("staging NAR", "path", info.Path, "bytes", info.NarSize)
	for attempt := 1; ; attempt++ {
		retry, err := b.stageOnce(ctx, key, info)
		if err == nil {
			return nil
		}
		if !retry || attempt == stageAttempts || ctx.Err() != nil {
			return fmt.Errorf("stage %s: %w", info.Path, err)
		}
		b.log().Warn("staging failed, retrying", "path", info.Path, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("stage %s: %w (after: %w)", info.Path, ctx.Err(), err)
		case <-time.After(time.Duration(attempt) * stageRetryWait):
		}
	}
}

const (
	// stageAttempts and stageRetryWait: a NAR upload is tried this many
	// times, waiting 1, 2, 3... times stageRetryWait in between (10 s in
	// all, a broker restart's worth).
	stageAttempts  = 5
	stageRetryWait = time.Second
)

var errStagingEnded = errors.New("staging ended")

// stageOnce makes one upload; retry is true when it failed for the
// broker's sake (queue.Retryable), not because the dump failed.
func (b *Builder) stageOnce(ctx context.Context, key string, info nix.PathInfo) (retry bool, err error) {
	pr, pw := io.Pipe()
	dumped := make(chan error, 1)
	go func() {
		err := b.Nix.DumpNAR(pw, info)
		pw.CloseWithError(err)
		dumped <- err
	}()
	_, err = b.Queue.Stage(ctx, key, pr)
	pr.CloseWithError(errStagingEnded) // stops the dump if Stage stopped reading
	derr := <-dumped
	if err == nil {
		return false, nil
	}
	if derr != nil && !errors.Is(derr, errStagingEnded) {
		return false, err // the dump's own failure (NAR mismatch): not the broker's
	}
	return queue.Retryable(err), err
}

// stageClosure streams nix-store --export of drvPath's closure into
// staging: the export goes through a pipe, never whole into memory. A
// failed export fails the pipe, so Stage abandons the object instead of
// keeping a truncated one.
func (b *Builder) stageClosure(ctx context.Context, drvPath string) (string, error) {
	paths, err := b.Nix.Requisites(ctx, drvPath)
	if err != nil {
		return "", fmt.Errorf("closure of %s: %w", drvPath, err)
	}
	key := queue.ClosureKey(drvPath)
	b.log().Info("staging closure", "drv", drvPath, "paths", len(paths))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends nix-store if Stage stops reading
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(b.Nix.Export(ctx, pw, paths...))
	}()
	info, err := b.Queue.Stage(ctx, key, pr)
	pr.CloseWithError(errors.New("staging ended"))
	cancel()
	<-done
	if err != nil {
		return "", fmt.Errorf("stage closure of %s: %w", drvPath, err)
	}
	b.log().Debug("staged closure", "drv", drvPath, "key", key, "bytes", info.Size)
	return key, nil
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
