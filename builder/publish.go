package builder

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/derivation"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
)

// stageWorkers is how many steps stage their NARs at once: staging is
// round trips to the broker, and results still go out one by one, in
// order, as soon as each step's NARs are in.
const stageWorkers = 4

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
	return b.publishSteps(ctx, steps, t, func(st *step) (time.Time, time.Time) {
		started, finished := o.Started, o.Finished
		if st.requested {
			return started, finished
		}
		// A dependency was built during this build, or earlier: Nix
		// keeps the registration time only, to the second.
		switch reg := st.registered; {
		case reg.Before(started.Truncate(time.Second)):
			return reg, reg
		case reg.Before(started):
			return started, started
		case reg.Before(finished):
			return started, reg
		}
		return started, finished
	})
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
	pubs, err := b.publishSteps(ctx, []*step{st}, t, func(*step) (time.Time, time.Time) { return started, finished })
	if err != nil {
		return nil, err
	}
	return &pubs[0], nil
}

// staged is what staging did for one step.
type staged struct {
	done             chan struct{}
	outputs, sources []queue.Output
	closure          string
	took             time.Duration // staging and signing
	uploaded         int64         // bytes staged (Published.Staged)
	// res is the signed result, pub what the caller is told of it.
	res *queue.Result
	pub *Published
	err error
}

// publishSteps stages the NARs of every step's outputs and sources and
// describes each build in a signed Statement (a few steps at a time), and
// publishes the results in the steps' order, each once its NARs are
// staged: the one way every result goes out.
func (b *Builder) publishSteps(ctx context.Context, steps []*step, t Target, times func(*step) (started, finished time.Time)) ([]Published, error) {
	env, err := b.nixEnv(ctx)
	if err != nil {
		return nil, err
	}
	drvs := make([]*derivation.Derivation, len(steps))
	var depPaths []string
	seen := map[string]bool{}
	for i, st := range steps {
		if drvs[i], err = b.Nix.ReadDerivation(st.drv); err != nil {
			return nil, err
		}
		for _, p := range inputsOf(st.drv, drvs[i]) {
			if !seen[p] {
				seen[p] = true
				depPaths = append(depPaths, p)
			}
		}
	}
	// One nix-store call for the inputs of all: each call is a process.
	infos, err := b.Nix.PathInfo(ctx, depPaths...)
	if err != nil {
		return nil, fmt.Errorf("inputs: %w", err)
	}
	depInfo := make(map[string]nix.PathInfo, len(infos))
	for _, pi := range infos {
		depInfo[pi.Path] = pi
	}

	// One closure export for every result: each step's .drv closure is
	// in the closure of all of them. An export per step grew with the
	// square of a chain's length (every dependency's export holds all
	// below it, sources included).
	var closureKey string
	var closureBytes int64
	if b.StageClosures && len(steps) > 0 {
		all := make([]string, len(steps))
		for i, st := range steps {
			all[i] = st.drv
		}
		if closureKey, closureBytes, err = b.stageClosure(ctx, steps[len(steps)-1].drv, all...); err != nil {
			return nil, err
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	work := make([]*staged, len(steps))
	for i := range work {
		work[i] = &staged{done: make(chan struct{})}
	}
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(stageWorkers, len(steps)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				w := work[i]
				b.stageStep(ctx, steps[i], w)
				w.closure = closureKey
				if w.err == nil {
					started, finished := times(steps[i])
					w.res, w.pub, w.err = b.signStep(ctx, steps[i], drvs[i], depInfo, w, env, t, started, finished)
				}
				close(w.done)
			}
		}()
	}
	go func() {
		defer close(next)
		for i := range steps {
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() {
		cancel() // stops the stagers when a step failed
		wg.Wait()
	}()

	var out []Published
	for i, st := range steps {
		select {
		case <-work[i].done:
		case <-ctx.Done():
			return out, fmt.Errorf("%s: %w", st.drv, ctx.Err())
		}
		w := work[i]
		if w.err != nil {
			return out, fmt.Errorf("%s: %w", st.drv, w.err)
		}
		if i == 0 {
			w.pub.Staged += closureBytes
		}
		t0 := time.Now()
		dup, err := b.Queue.PublishResult(ctx, w.res)
		if err != nil {
			return out, fmt.Errorf("%s: %w", st.drv, err)
		}
		b.log().Info("published", "drv", st.drv, "outputs", len(w.res.Outputs), "sources", len(w.res.Sources), "duplicate", dup)
		w.pub.Duplicate = dup
		w.pub.Publish += time.Since(t0)
		out = append(out, *w.pub)
	}
	return out, nil
}

// inputsOf lists what a derivation's provenance names as resolved
// dependencies: the .drv itself, its input derivations and its sources.
func inputsOf(drvPath string, drv *derivation.Derivation) []string {
	deps := []string{drvPath}
	deps = append(deps, slices.Sorted(maps.Keys(drv.InputDerivations))...)
	return append(deps, drv.InputSources...)
}

// stageStep stages a step's output and source NARs into w.
func (b *Builder) stageStep(ctx context.Context, st *step, w *staged) {
	t0 := time.Now()
	defer func() { w.took = time.Since(t0) }()
	for _, info := range st.outputs {
		qo, n, err := b.stageOutput(ctx, info)
		if err != nil {
			w.err = err
			return
		}
		w.outputs = append(w.outputs, qo)
		w.uploaded += n
	}
	for _, info := range st.sources {
		qo, n, err := b.stageOutput(ctx, info)
		if err != nil {
			w.err = err
			return
		}
		w.sources = append(w.sources, qo)
		w.uploaded += n
	}
}

// signStep describes a step whose NARs are staged in a Statement, signs
// it and returns the result to publish and what the caller is told.
func (b *Builder) signStep(ctx context.Context, st *step, drv *derivation.Derivation, depInfo map[string]nix.PathInfo,
	w *staged, env nixEnv, t Target, started, finished time.Time) (*queue.Result, *Published, error) {
	t0 := time.Now()
	if t.InvocationID == "" {
		t.InvocationID = invocationID(st.drv, started)
	}
	build := &attest.Build{
		DrvPath:        st.drv,
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
	for _, p := range inputsOf(st.drv, drv) {
		build.Dependencies = append(build.Dependencies, attest.Dependency{Path: p, NarHash: depInfo[p].NarHash})
	}
	res := &queue.Result{
		Version: queue.ResultVersion,
		Tenant:  b.Tenant,
		Builder: b.BuilderID,
		DrvPath: st.drv,
		System:  drv.Platform,
		Sources: w.sources,
		Closure: w.closure,
	}
	for i, info := range st.outputs {
		o := attest.Output{Name: st.names[i], Path: info.Path, NarHash: info.NarHash, NarSize: info.NarSize, References: info.References}
		qo := w.outputs[i]
		qo.Name = o.Name
		if b.NixKey != nil {
			sig, err := b.NixKey.Sign(rand.Reader, nix.Fingerprint(o.Path, o.NarHash, o.NarSize, o.References))
			if err != nil {
				return nil, nil, fmt.Errorf("nix signature of %s: %w", o.Path, err)
			}
			qo.NixSig = sig.String()
		}
		build.Outputs = append(build.Outputs, o)
		res.Outputs = append(res.Outputs, qo)
	}
	statement, err := attest.NewStatement(build)
	if err != nil {
		return nil, nil, err
	}
	var bundle []byte
	switch {
	case b.SignStatement != nil:
		bundle, err = b.SignStatement(ctx, statement)
	case b.RekorURL != "":
		bundle, err = attest.SignWithLog(ctx, statement, b.Signer, attest.LogOptions{RekorURL: b.RekorURL})
	default:
		bundle, err = attest.Sign(ctx, statement, b.Signer)
	}
	if err != nil {
		return nil, nil, err
	}
	res.Bundle = bundle
	var sources []string
	for _, s := range st.sources {
		sources = append(sources, s.Path)
	}
	return res, &Published{
		DrvPath: st.drv, System: drv.Platform, Outputs: build.Outputs, Sources: sources, Requested: st.requested,
		MsgID: res.MsgID(), Bundle: bundle, Publish: w.took + time.Since(t0), Staged: w.uploaded,
	}, nil
}

// stageOutput stages a path's NAR under its content-addressed key in this
// builder's staging scope (queue.ScopedKey: no other publisher can
// replace it) and describes it for the result (without Name and NixSig);
// uploaded is 0 when staging had it already.
func (b *Builder) stageOutput(ctx context.Context, info nix.PathInfo) (_ queue.Output, uploaded int64, _ error) {
	hexHash := hex.EncodeToString(info.NarHash[:])
	key := queue.ScopedKey(queue.StagingKey(hexHash), b.BuilderID)
	uploaded, err := b.stage(ctx, key, info)
	if err != nil {
		return queue.Output{}, 0, err
	}
	return queue.Output{
		Path: info.Path, NarHash: hexHash, NarSize: info.NarSize, StagingKey: key,
		References: info.References, CA: info.CA,
	}, uploaded, nil
}
