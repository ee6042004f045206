// Package volunteer rebuilds derivations that cache pushers want more votes
// on. A volunteer pulls rebuild requests for the systems it serves (it only
// dials out to NATS), imports the derivation's closure from staging into
// its own store, builds the derivation there, and publishes a result signed
// with its own key, exactly as `provenix build` would: the pusher counts it
// as one more vote.
//
// What makes the vote independent:
//   - the closure comes from staging, written by whoever built first;
//     nix.Import admits only content-addressed paths (.drv files, text
//     files, sources) whose names match their contents, so the .drv this
//     volunteer builds is the one the request names, and Nix checks that
//     its outputs are the ones its contents give;
//   - the requested derivation itself is built here with substitution off.
//     Its inputs are realised as this Nix usually does (substituted or
//     built): only the top derivation is re-checked, as nix-build --check
//     would;
//   - outputs that are already valid here but were not built here
//     (substituted, imported) are rebuilt with --check, and the vote is
//     cast only when the rebuild gives the same bytes: the volunteer never
//     attests a copy it merely holds. Outputs this store built itself
//     (Nix marks them "ultimate") are attested as they are.
package volunteer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/derivation"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/nardiff"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/usage"
)

// Queue is what a volunteer needs from the broker; *queue.Conn has it.
// Results go out through the Builder's own Queue.
type Queue interface {
	ConsumeRebuilds(ctx context.Context, o queue.ConsumerOptions, h queue.Handler) (*queue.Consumer, error)
	KVGet(ctx context.Context, bucket, key string) ([]byte, error)
	OpenStaged(ctx context.Context, key string) (io.ReadCloser, queue.StagedInfo, error)
}

// Log attribute keys.
const (
	logKeyDrv     = "drv"
	logKeySystem  = "system"
	logKeyAction  = "action"
	logKeyErr     = "err"
	logKeyTook    = "took"
	logKeyClosure = "closure"
)

// DefaultMaxDeliver bounds the deliveries of one request to the
// volunteers of a system: a request that keeps failing for a transient
// reason (its closure gone from staging, say) stops bouncing after that.
const DefaultMaxDeliver = queue.DefaultRebuildMaxDeliver

// Volunteer serves rebuild requests. Set the fields, then call Run.
type Volunteer struct {
	// Conn receives requests and reads votes and staged closures.
	Conn Queue
	// Builder builds and publishes with this volunteer's own Nix store,
	// key, builder id and tenant; its Queue publishes the results. Set its
	// StageClosures: a pusher computes each result's output paths from
	// the closure the result names, and reads it under the publisher's
	// own staging scope.
	Builder *builder.Builder
	// Systems are the Nix systems this volunteer builds for; it takes
	// requests for these only (one shared consumer per system).
	Systems []string
	// Once handles one request, acks or terminates it, and returns its
	// outcome's error.
	Once bool
	// AckWait and MaxDeliver configure the consumers (see
	// queue.ConsumerOptions); queue.DefaultAckWait and DefaultMaxDeliver
	// when 0. A running build tells the server it is in progress every
	// AckWait/3.
	AckWait    time.Duration
	MaxDeliver int
	Logger     *slog.Logger
	// OnOutcome, when set, is called with each handled request's outcome,
	// from the handling goroutine.
	OnOutcome func(Outcome)
	// Usage, when set, records what each build cost (usage.KindVolunteer
	// for rebuild requests, usage.KindFarm for the farm's builds).
	Usage usage.Recorder
}

// Action is what a volunteer did with a request.
type Action string

const (
	// ActionSkipped: this builder had voted on every output already.
	ActionSkipped Action = "skipped"
	// ActionBuilt: the outputs were built here and published.
	ActionBuilt Action = "built"
	// ActionChecked: the outputs were valid here but not built here; a
	// --check rebuild gave the same bytes, which were published.
	ActionChecked Action = "checked"
	// ActionReused: this store had built the outputs before; published.
	ActionReused Action = "reused"
	// ActionFailed: permanently failed for this volunteer (terminated).
	ActionFailed Action = "failed"
	// ActionRetry: failed for a reason that may pass (released for
	// redelivery).
	ActionRetry Action = "retry"
)

// Outcome is one handled request.
type Outcome struct {
	// Request is nil when the message did not decode.
	Request   *queue.RebuildRequest
	Action    Action
	Published *builder.Published
	Err       error
	// Took is the whole handling: import, build, attest and publish.
	Took time.Duration
}

// ErrRequest means a request cannot be served as it stands: it lies about
// its derivation, or names a system this volunteer does not build for.
var ErrRequest = errors.New("volunteer: unusable rebuild request")

// errOnceTaken turns away a second request in Once mode; it is released
// for another volunteer.
var errOnceTaken = errors.New("volunteer: handling one request only")

func (v *Volunteer) log() *slog.Logger {
	if v.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return v.Logger
}

func (v *Volunteer) validate() error {
	b := v.Builder
	switch {
	case v.Conn == nil:
		return errors.New("volunteer: no Conn")
	case b == nil || b.Nix == nil || b.Queue == nil || b.Signer == nil:
		return errors.New("volunteer: Builder needs Nix, Queue and Signer")
	case b.BuilderID == "":
		return errors.New("volunteer: Builder has no builder id")
	case len(v.Systems) == 0:
		return errors.New("volunteer: no systems to build for")
	}
	if err := queue.ValidToken(b.Tenant); err != nil {
		return fmt.Errorf("volunteer: tenant: %w", err)
	}
	for _, s := range v.Systems {
		if err := queue.ValidToken(s); err != nil {
			return fmt.Errorf("volunteer: system: %w", err)
		}
	}
	return nil
}

// Run serves requests until ctx ends (then it returns nil; builds under
// way are cancelled and their requests released for another volunteer)
// or, with Once, until it handled one request. It fails when a consumer
// cannot start or ends by itself (the connection was closed).
func (v *Volunteer) Run(ctx context.Context) error {
	if err := v.validate(); err != nil {
		return err
	}
	maxDeliver := v.MaxDeliver
	if maxDeliver == 0 {
		maxDeliver = DefaultMaxDeliver
	}
	ackWait := v.AckWait
	if ackWait == 0 {
		ackWait = queue.DefaultAckWait
	}

	var (
		claimed  atomic.Bool
		onceDone = make(chan struct{})
		first    Outcome
		setFirst sync.Once
	)
	h := func(hctx context.Context, d *queue.Delivery) error {
		if v.Once && !claimed.CompareAndSwap(false, true) {
			return errOnceTaken
		}
		out, err := v.handle(hctx, d, d.AckWaitWithin(ackWait))
		if v.OnOutcome != nil {
			v.OnOutcome(out)
		}
		if v.Once {
			setFirst.Do(func() { first = out; close(onceDone) })
		}
		return err
	}

	var subjects []string
	for _, sys := range v.Systems {
		subj, err := queue.RebuildSubject(v.Builder.Tenant, sys)
		if err != nil {
			return fmt.Errorf("volunteer: %w", err)
		}
		subjects = append(subjects, subj)
	}
	// A tenant's volunteer uses the consumer the pusher provides with
	// its first rebuild request for the system: until then it waits.
	var (
		mu        sync.Mutex
		consumers []*queue.Consumer
		starting  sync.WaitGroup
	)
	sctx, stopStarting := context.WithCancel(ctx)
	defer stopStarting()
	ended := make(chan string, len(v.Systems))
	failed := make(chan error, len(v.Systems))
	for i, sys := range v.Systems {
		starting.Go(func() {
			k, err := queue.AwaitConsumer(sctx, v.log(), subjects[i], func(ctx context.Context) (*queue.Consumer, error) {
				return v.Conn.ConsumeRebuilds(ctx, queue.ConsumerOptions{FilterSubject: subjects[i], AckWait: ackWait, MaxDeliver: maxDeliver}, h)
			})
			if err != nil {
				if sctx.Err() == nil {
					failed <- fmt.Errorf("volunteer: %s: %w", sys, err)
				}
				return
			}
			mu.Lock()
			consumers = append(consumers, k)
			mu.Unlock()
			go func() {
				<-k.Closed()
				ended <- sys
			}()
		})
	}
	// started stops the consumers still being set up, and returns
	// those that are.
	started := func() []*queue.Consumer {
		stopStarting()
		starting.Wait()
		mu.Lock()
		defer mu.Unlock()
		return consumers
	}
	stopAll := func() {
		for _, k := range started() {
			k.Stop()
			<-k.Closed()
		}
	}
	v.log().Info("volunteering", "tenant", v.Builder.Tenant, "systems", strings.Join(v.Systems, ","), "builder", v.Builder.BuilderID)
	if stop := v.watchDisputes(); stop != nil {
		defer stop()
	}

	select {
	case <-ctx.Done():
		stopAll()
		return nil
	case <-onceDone:
		// The handler returned; Drain waits for its outcome to be sent.
		ks := started()
		for _, k := range ks {
			k.Drain()
		}
		for _, k := range ks {
			<-k.Closed()
		}
		return first.Err
	case err := <-failed:
		stopAll()
		return err
	case sys := <-ended:
		stopAll()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("volunteer: the consumer for %s ended (connection closed?)", sys)
	}
}

// handle serves one delivery. Its error decides the message's fate (see
// queue.Handler): nil acks, Permanent terminates, others are redelivered.
func (v *Volunteer) handle(ctx context.Context, d *queue.Delivery, ackWait time.Duration) (Outcome, error) {
	start := time.Now()
	out := Outcome{}
	finish := func(a Action, err error) (Outcome, error) {
		out.Action, out.Err, out.Took = a, err, time.Since(start)
		attrs := []any{logKeyAction, a, logKeyTook, out.Took.Round(time.Millisecond)}
		if out.Request != nil {
			attrs = append(attrs, logKeyDrv, out.Request.DrvPath, logKeySystem, out.Request.System)
		}
		switch {
		case a == ActionFailed:
			v.log().Error("rebuild request failed; not retrying it", append(attrs, logKeyErr, err)...)
			return out, queue.Permanent(err)
		case err != nil:
			if ctx.Err() != nil {
				v.log().Info("rebuild interrupted; request released", append(attrs, logKeyErr, err)...)
			} else {
				v.log().Warn("rebuild request failed; will retry", append(attrs, logKeyErr, err)...)
			}
			return out, err
		}
		v.log().Info("rebuild request done", attrs...)
		return out, nil
	}

	req, err := queue.DecodeRebuildRequest(d.Data)
	if err != nil {
		return finish(ActionFailed, err)
	}
	out.Request = req
	if subj, _ := queue.RebuildSubject(v.Builder.Tenant, req.System); d.Subject != subj || !slices.Contains(v.Systems, req.System) {
		return finish(ActionFailed, fmt.Errorf("%w: a request for tenant %s, system %s arrived on %s", ErrRequest, req.Tenant, req.System, d.Subject))
	}
	// A lost heartbeat means a redelivery, not an error here.
	defer d.KeepAlive(ctx, max(ackWait/3, time.Second), nil)()

	voted, err := v.voted(ctx, req)
	if err != nil {
		return finish(ActionRetry, err)
	}
	if voted {
		return finish(ActionSkipped, nil)
	}
	action, pub, _, err := v.serve(ctx, req, usage.KindVolunteer)
	out.Published = pub
	return finish(action, err)
}

// serve imports the request's closure when this store lacks the .drv,
// builds the derivation (see build) and publishes the result; cpu is
// what the build used (see nix.RealiseOptions.CPU), a failed one too. On error
// the action says whether retrying may help (ActionRetry) or not
// (ActionFailed).
func (v *Volunteer) serve(ctx context.Context, req *queue.RebuildRequest, kind usage.Kind) (Action, *builder.Published, time.Duration, error) {
	if err := v.ensureDrv(ctx, req); err != nil {
		if errors.Is(err, nix.ErrBadExport) || errors.Is(err, ErrRequest) {
			return ActionFailed, nil, 0, err
		}
		return ActionRetry, nil, 0, err
	}
	drv, err := v.Builder.Nix.ReadDerivation(req.DrvPath)
	if err != nil {
		return ActionFailed, nil, 0, err
	}
	if err := checkDerivation(req, drv); err != nil {
		return ActionFailed, nil, 0, err
	}
	inputs := make([]string, 0, len(drv.InputDerivations))
	for p := range drv.InputDerivations {
		inputs = append(inputs, p)
	}
	slices.Sort(inputs)
	t0 := time.Now()
	action, started, finished, cpu, err := v.build(ctx, req, inputs)
	if err != nil {
		v.recordUsage(ctx, kind, req, t0, cpu, nil)
		if ctx.Err() != nil {
			return ActionRetry, nil, 0, err
		}
		// A failed build's CPU time counts too (the farm reports it).
		return ActionFailed, nil, cpu, err
	}
	// The closure this store built goes out with the vote: each
	// dependency built here is one more vote of its own.
	co := builder.ClosureOptions{Started: started, Finished: finished}
	if action == ActionChecked {
		co.Checked = []string{req.DrvPath}
	}
	pubs, err := v.Builder.PublishClosure(ctx, builder.Target{
		Installable: attest.Installable{Kind: "drv", Ref: req.DrvPath},
	}, []string{req.DrvPath}, co)
	v.recordUsage(ctx, kind, req, t0, cpu, pubs)
	if err != nil {
		// The outputs stay in this store, built here: a redelivery
		// publishes them without building again.
		return ActionRetry, nil, 0, fmt.Errorf("publish: %w", err)
	}
	var pub *builder.Published
	for i := range pubs {
		if pubs[i].DrvPath == req.DrvPath {
			pub = &pubs[i]
		}
	}
	if pub == nil {
		return ActionRetry, nil, 0, fmt.Errorf("publish: %s was not among the results published", req.DrvPath)
	}
	pub.Built = finished.Sub(started)
	return action, pub, cpu, nil
}

// voted reports whether this builder's vote is recorded for every output.
func (v *Volunteer) voted(ctx context.Context, req *queue.RebuildRequest) (bool, error) {
	for _, o := range req.Outputs {
		_, err := v.Conn.KVGet(ctx, queue.BucketVotes, queue.VoteKey(req.Tenant, o, v.Builder.BuilderID))
		if errors.Is(err, queue.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("read votes: %w", err)
		}
	}
	return true, nil
}

// ensureDrv makes the request's .drv valid in this store, importing the
// staged closure when it is not.
func (v *Volunteer) ensureDrv(ctx context.Context, req *queue.RebuildRequest) error {
	n := v.Builder.Nix
	invalid, err := n.Invalid(ctx, req.DrvPath)
	if err != nil {
		return err
	}
	if len(invalid) == 0 {
		return nil // ours already, with its closure
	}
	if req.Closure == "" {
		return fmt.Errorf("%s is not in this store and the request names no closure to import it from", req.DrvPath)
	}
	rc, info, err := v.Conn.OpenStaged(ctx, req.Closure)
	if err != nil {
		return fmt.Errorf("closure %s: %w", req.Closure, err)
	}
	t0 := time.Now()
	paths, err := n.Import(ctx, rc)
	rc.Close()
	if err != nil {
		return fmt.Errorf("import closure %s: %w", req.Closure, err)
	}
	v.log().Debug("imported closure", logKeyClosure, req.Closure, "bytes", info.Size, "paths", len(paths), logKeyTook, time.Since(t0).Round(time.Millisecond))
	if invalid, err := n.Invalid(ctx, req.DrvPath); err != nil {
		return err
	} else if len(invalid) != 0 {
		return fmt.Errorf("%w: closure %s does not hold %s", ErrRequest, req.Closure, req.DrvPath)
	}
	return nil
}

// checkDerivation holds the request to the .drv: its system and its
// output paths must be the request's.
func checkDerivation(req *queue.RebuildRequest, drv *derivation.Derivation) error {
	if drv.Platform != req.System {
		return fmt.Errorf("%w: %s is for %s, the request says %s", ErrRequest, req.DrvPath, drv.Platform, req.System)
	}
	var outs []string
	for _, o := range drv.Outputs {
		outs = append(outs, o.Path)
	}
	slices.Sort(outs)
	if want := slices.Sorted(slices.Values(req.Outputs)); !slices.Equal(outs, want) {
		return fmt.Errorf("%w: %s has outputs %v, the request says %v", ErrRequest, req.DrvPath, outs, want)
	}
	return nil
}

// build realises the request's derivation here (see the package doc for
// why each case is sound) and returns what it did and when the build ran;
// cpu is the build's CPU time, also when it failed.
func (v *Volunteer) build(ctx context.Context, req *queue.RebuildRequest, inputs []string) (_ Action, started, finished time.Time, cpu time.Duration, _ error) {
	n := v.Builder.Nix
	if len(inputs) > 0 {
		// A volunteer runs its farm builds and its rebuilds at once:
		// each Nix call here gets its own narinfo cache (a store with
		// substituters may open it even when it substitutes nothing).
		if _, err := n.RealiseWith(ctx, nix.RealiseOptions{PrivateNarinfoCache: true}, inputs...); err != nil {
			return "", time.Time{}, time.Time{}, 0, fmt.Errorf("realise inputs of %s: %w", req.DrvPath, err)
		}
	}
	action := ActionReused
	started = time.Now()
	invalid, err := n.Invalid(ctx, req.Outputs...)
	if err != nil {
		return "", time.Time{}, time.Time{}, 0, err
	}
	if len(invalid) > 0 {
		action = ActionBuilt
		if _, err := n.RealiseWith(ctx, nix.RealiseOptions{NoSubstitute: true, CPU: &cpu, PrivateNarinfoCache: true}, req.DrvPath); err != nil {
			return "", time.Time{}, time.Time{}, cpu, fmt.Errorf("build %s: %w", req.DrvPath, err)
		}
	}
	regs, err := n.PathInfos(ctx, req.Outputs...)
	if err != nil {
		return "", time.Time{}, time.Time{}, 0, err
	}
	builtHere := true
	for _, r := range regs {
		builtHere = builtHere && r.Ultimate
	}
	if !builtHere {
		action = ActionChecked
		if _, err := n.RealiseWith(ctx, nix.RealiseOptions{Check: true, NoSubstitute: true, CPU: &cpu, PrivateNarinfoCache: true}, req.DrvPath); err != nil {
			if errors.Is(err, nix.ErrNotDeterministic) {
				return "", time.Time{}, time.Time{}, cpu, fmt.Errorf("%s: this volunteer's rebuild differs from the copy in its store, which it did not build: no vote: %w", req.DrvPath, err)
			}
			return "", time.Time{}, time.Time{}, cpu, fmt.Errorf("check %s: %w", req.DrvPath, err)
		}
	}
	finished = time.Now()
	if action == ActionReused && len(regs) > 0 {
		// Built here earlier: the provenance names that build's time.
		started, finished = regs[0].Registered, regs[0].Registered
	}
	return action, started, finished, cpu, nil
}

// DisputeWatcher is what a volunteer uses, when its Conn has it (as
// *queue.Conn does), to hear of disputes on its own builds.
type DisputeWatcher interface {
	SubscribeEvents(tenant, kind string, f func(data []byte)) (*queue.EventSub, error)
}

// dispute is the part of cachepush.Dispute a volunteer reads.
type dispute struct {
	StorePath string              `json:"storePath"`
	DrvPath   string              `json:"drvPath"`
	NARs      map[string][]string `json:"nars"`
	Summary   *nardiff.Summary    `json:"summary"`
}

// watchDisputes logs each dispute that names this volunteer's builder id,
// with the pusher's summary of what differs, so that its operator learns
// what broke. It returns the subscription's stop, nil when there is none.
func (v *Volunteer) watchDisputes() func() {
	w, ok := v.Conn.(DisputeWatcher)
	if !ok {
		return nil
	}
	sub, err := w.SubscribeEvents(v.Builder.Tenant, queue.EventDisputed, func(data []byte) {
		var d dispute
		if json.Unmarshal(data, &d) != nil {
			return
		}
		if line, ok := disputeLine(d, v.Builder.BuilderID); ok {
			v.log().Warn("a build of this volunteer is disputed", "path", d.StorePath, logKeyDrv, d.DrvPath, "differs", line)
		}
	})
	if err != nil {
		v.log().Info("not watching disputes", logKeyErr, err)
		return nil
	}
	return func() { sub.Stop() }
}

// disputeLine describes d for builder: its NAR against the others and
// what differs; ok is false when builder is not among d's builders.
func disputeLine(d dispute, builder string) (string, bool) {
	mine := ""
	for h, bs := range d.NARs {
		if slices.Contains(bs, builder) {
			mine = h
		}
	}
	if mine == "" {
		return "", false
	}
	var others []string
	for h, bs := range d.NARs {
		if h != mine {
			others = append(others, fmt.Sprintf("%.12s (%s)", h, strings.Join(bs, ",")))
		}
	}
	slices.Sort(others)
	line := fmt.Sprintf("our NAR %.12s vs %s", mine, strings.Join(others, ", "))
	if d.Summary != nil {
		line += ": " + d.Summary.String()
	} else if len(others) == 0 {
		line += ": same NAR, the references differ"
	}
	return line, true
}
