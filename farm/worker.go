package farm

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/ticker"
	"codeberg.org/provenix/provenix/queue"
)

// ClaimResult is what a worker may do with a request.
type ClaimResult int

const (
	// Claimed: build it.
	Claimed ClaimResult = iota
	// NotNeeded: the set was cancelled, the derivation is final, or the
	// scheduler has sent a later attempt of this replica: drop the
	// request.
	NotNeeded
	// NotForUs: this builder failed the derivation before, or its owner
	// holds another replica: leave the request to another worker.
	NotForUs
	// Held: another builder's claim holds the replica (see claim): keep
	// the request, which comes back after the worker's AckWait.
	Held
)

func (c ClaimResult) String() string {
	switch c {
	case Claimed:
		return "claimed"
	case NotNeeded:
		return "not needed"
	case NotForUs:
		return "not for us"
	case Held:
		return "held by another builder"
	}
	return fmt.Sprintf("ClaimResult(%d)", int(c))
}

// needed is r's derivation's state while a build of it is needed: nil
// once its set is gone or cancelled, or the derivation is final (done:
// its outputs are visible, maybe with fewer builds than the set's quorum
// when the pusher's policy let a veteran's vote count twice; failed;
// blocked).
func needed(ctx context.Context, kv jetstream.KeyValue, r *Request) (*State, error) {
	_, st, err := neededIn(ctx, kv, r)
	return st, err
}

// neededIn is needed, with the set.
func neededIn(ctx context.Context, kv jetstream.KeyValue, r *Request) (*Set, *State, error) {
	var set Set
	if _, found, err := getJSON(ctx, kv, setKey(r.Set), &set); err != nil {
		return nil, nil, err
	} else if !found || set.Canceled != nil || set.Tenant != r.Tenant {
		return nil, nil, nil
	}
	var st State
	if _, found, err := getJSON(ctx, kv, stateKey(r.Set, r.DrvPath), &st); err != nil {
		return nil, nil, err
	} else if !found || st.Status.Final() || st.DrvPath != r.DrvPath {
		return nil, nil, nil
	}
	return &set, &st, nil
}

// errWithdrawn stops a build nobody needs any more (see needed).
var errWithdrawn = errors.New("farm: build withdrawn: no longer needed")

// withdrawWhenUnneeded cancels a build, with errWithdrawn, once nobody
// needs it: checked every WithdrawCheck, so a build shorter than that
// costs no read. A read that fails is tried again at the next check.
func withdrawWhenUnneeded(ctx context.Context, kv jetstream.KeyValue, r *Request, every time.Duration, withdraw context.CancelCauseFunc) (stop func()) {
	return ticker.Every(ctx, every, func(ctx context.Context) bool {
		if st, err := needed(ctx, kv, r); err == nil && st == nil {
			withdraw(errWithdrawn)
			return false
		}
		return true
	})
}

// BuildFunc builds a request's derivation and publishes its result (as
// `provenix build` does). A build that ran and failed returns a
// *BuildError; any other error is a worker's failure and the request is
// redelivered, to this worker or another.
type BuildFunc func(ctx context.Context, r *Request) (*BuildStats, error)

// BuildStats is what a build cost.
type BuildStats struct {
	CPUSeconds float64
	Wall       time.Duration
}

// BuildError is a build that failed: Nix's exit code and the last lines
// of its log.
type BuildError struct {
	ExitCode int
	Log      []string
	Stats    BuildStats
}

func (e *BuildError) Error() string {
	last := ""
	if len(e.Log) > 0 {
		last = ": " + e.Log[len(e.Log)-1]
	}
	return fmt.Sprintf("build failed with exit code %d%s", e.ExitCode, last)
}

// Defaults of Worker.
const (
	// DefaultWithdrawCheck is how often a running build checks that it
	// is still needed (Worker.WithdrawCheck).
	DefaultWithdrawCheck = 2 * time.Second
	// DefaultClaimTimeout is Worker.ClaimTimeout's default: a claim
	// nobody builds under delays its replica by an hour at most.
	DefaultClaimTimeout = time.Hour
	// DefaultNotForUsDelay is how long a request this worker may not
	// build waits before it is offered again (to any worker).
	DefaultNotForUsDelay = 100 * time.Millisecond
	// MaxLogLines bounds the log lines a failure report carries.
	MaxLogLines = 40
)

// Worker takes build requests it can build from the farm's work queue,
// claims them, builds them with Build and reports the outcome. Set the
// fields, then call Run.
type Worker struct {
	Conn    *queue.Conn
	Tenant  string
	Machine Machine
	// Builder is this worker's builder id (the one its results are
	// signed with); Owner who runs it, as the policy counts distinct
	// builders (the builder id when empty).
	Builder, Owner string
	Build          BuildFunc
	// Concurrency is how many builds run at once per subject; 1 when 0.
	Concurrency int
	// AckWait: see queue.ConsumerOptions. A running build tells the
	// server it is in progress every AckWait/3.
	AckWait time.Duration
	// ClaimTimeout is how long another builder's claim can keep this
	// worker from a replica whose request keeps coming back to it,
	// counted from when it first found it so; DefaultClaimTimeout when
	// 0. An honest holder keeps the request while it builds, so the
	// request comes to no other worker: one that does comes back
	// because nobody builds it (see claim).
	ClaimTimeout time.Duration
	// WithdrawCheck is how often a running build checks that it is still
	// needed; DefaultWithdrawCheck when 0. A build of a derivation done
	// meanwhile (by the other replicas: the pusher needed fewer votes,
	// a veteran's counting twice), failed or blocked, or of a cancelled
	// set, is stopped and its request dropped, with no report.
	WithdrawCheck time.Duration
	Logger        *slog.Logger
	// OnClaim, when set, is called with each request's claim result.
	OnClaim func(*Request, ClaimResult)
	// Skip, when set, is asked before a request is claimed: true leaves
	// it to another worker, as a request not for this one. A volunteer
	// skips what it has voted on already (by a rebuild the pushers asked
	// for): its build would add no vote, and a replica it held would
	// wait for one that never comes.
	Skip func(ctx context.Context, r *Request) (bool, error)
	// Standing, when set, says whether this builder is quarantined (by
	// the pushers' reputation rules, say: its builds disagreed with
	// others' too often) and why. A quarantined worker takes no build,
	// so its work does not spread, and its log tells its operator why.
	// It is asked at most every StandingEvery.
	Standing func(ctx context.Context) (quarantined bool, why string, err error)

	local localClaims

	standingMu   sync.Mutex
	standingAt   time.Time
	quarantined  bool
	standingWhy  string
	standingTold bool
}

// StandingEvery is how often a Worker asks its Standing (one KV read, on
// a delivery): often enough that a builder quarantined mid-set stops,
// and its operator is told, within a few builds.
const StandingEvery = 5 * time.Second

// standing is Standing, remembered for StandingEvery (a success only);
// the first time it finds the builder quarantined it logs why.
func (w *Worker) standing(ctx context.Context, log *slog.Logger) (bool, error) {
	if w.Standing == nil {
		return false, nil
	}
	w.standingMu.Lock()
	defer w.standingMu.Unlock()
	if !w.standingAt.IsZero() && time.Since(w.standingAt) < StandingEvery {
		return w.quarantined, nil
	}
	q, why, err := w.Standing(ctx)
	if err != nil {
		return false, fmt.Errorf("farm: standing of %s: %w", w.Builder, err)
	}
	w.standingAt, w.quarantined = time.Now(), q
	switch {
	case q && (!w.standingTold || why != w.standingWhy):
		log.Error("farm: this builder is quarantined and takes no builds", "builder", w.Builder, "why", why)
		w.standingTold, w.standingWhy = true, why
	case !q && w.standingTold:
		log.Info("farm: this builder is no longer quarantined", "builder", w.Builder)
		w.standingTold, w.standingWhy = false, ""
	}
	return q, nil
}

// Run serves requests until ctx ends. It consumes, for each system the
// machine builds for (and builtin), every feature class submitted for
// the tenant that the machine can build, and picks up classes submitted
// later as they appear.
func (w *Worker) Run(ctx context.Context) error {
	if w.Conn == nil || w.Build == nil || w.Builder == "" || w.Machine.System == "" {
		return errors.New("farm: worker: Conn, Build, Builder and Machine.System are required")
	}
	if err := queue.ValidToken(w.Tenant); err != nil {
		return fmt.Errorf("farm: worker: tenant: %w", err)
	}
	log := w.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	kv, err := bucket(ctx, w.Conn)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watch, err := kv.Watch(ctx, classPrefix(w.Tenant)+".>", jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("farm: worker: watch classes: %w", err)
	}
	defer watch.Stop()
	ackWait := w.AckWait
	if ackWait == 0 {
		ackWait = queue.DefaultAckWait
	}
	var (
		mu        sync.Mutex
		consumers = map[string]*queue.Consumer{}
		started   = map[string]bool{} // subjects being consumed or awaited
	)
	defer func() {
		for _, k := range consumers {
			k.Stop()
		}
		for _, k := range consumers {
			<-k.Closed()
		}
	}()
	h := func(hctx context.Context, d *queue.Delivery) error {
		return w.handle(hctx, kv, d, d.AckWaitWithin(ackWait), log)
	}
	// A class whose consumer the scheduler has not provided yet (no
	// request of it dispatched yet) is consumed once it has.
	var awaiting sync.WaitGroup
	defer func() {
		cancel() // before the wait: AwaitConsumer loops until ctx ends
		awaiting.Wait()
	}()
	failed := make(chan error, 1)
	consume := func(subj string) {
		k, err := queue.AwaitConsumer(ctx, log, subj, func(ctx context.Context) (*queue.Consumer, error) {
			return w.Conn.ConsumeFarm(ctx, queue.ConsumerOptions{FilterSubject: subj, AckWait: ackWait, Concurrency: max(w.Concurrency, 1)}, h)
		})
		if err != nil {
			if ctx.Err() == nil {
				select {
				case failed <- fmt.Errorf("farm: worker: %w", err):
				default:
				}
			}
			return
		}
		log.Info("farm: consuming", "subject", subj)
		mu.Lock()
		consumers[subj] = k
		mu.Unlock()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return err
		case e, ok := <-watch.Updates():
			if !ok {
				return errors.New("farm: worker: class watch ended")
			}
			if e == nil {
				continue
			}
			// class.<tenant>.<system>.<class>
			parts := strings.Split(e.Key(), ".")
			if len(parts) != 4 {
				continue
			}
			system, class := parts[2], parts[3]
			var rec classRecord
			if json.Unmarshal(e.Value(), &rec) != nil || FeatureClass(rec.Features) != class ||
				!w.Machine.CanBuildSystem(system) || !w.Machine.CanBuildFeatures(rec.Features) {
				continue
			}
			subj, err := queue.FarmBuildSubject(w.Tenant, system, class)
			if err != nil {
				continue
			}
			if started[subj] {
				continue
			}
			started[subj] = true
			awaiting.Go(func() { consume(subj) })
		}
	}
}

func (w *Worker) handle(ctx context.Context, kv jetstream.KeyValue, d *queue.Delivery, ackWait time.Duration, log *slog.Logger) error {
	r, err := DecodeRequest(d.Data)
	if err != nil {
		return queue.Permanent(err)
	}
	if want, _ := r.Subject(); want != d.Subject || r.Tenant != w.Tenant {
		return queue.Permanent(fmt.Errorf("farm: %w: request for %s arrived on %s", ErrInvalid, want, d.Subject))
	}
	if q, err := w.standing(ctx, log); err != nil {
		return err
	} else if q {
		return queue.Defer(notForUsDelay(d.NumDelivered))
	}
	if w.Skip != nil {
		if skip, err := w.Skip(ctx, r); err != nil {
			return err
		} else if skip {
			if w.OnClaim != nil {
				w.OnClaim(r, NotForUs)
			}
			return queue.Defer(notForUsDelay(d.NumDelivered))
		}
	}
	// Entered before the claim, so that this process's other handlers
	// of the derivation take its claim for a live one at once.
	w.local.enter(r.Set, r.DrvPath)
	key := requestKey{set: r.Set, drv: r.DrvPath, replica: r.Replica, attempt: r.Attempt, msg: d.Stream}
	res, err := claim(ctx, w.Conn, kv, r, claimArgs{builder: w.Builder, owner: w.Owner, msg: d.Stream, delivered: d.NumDelivered,
		blocked: w.local.blocked.see(key), takeover: cmp.Or(w.ClaimTimeout, DefaultClaimTimeout),
		building: func() bool { return w.local.others(r.Set, r.DrvPath) }})
	if err == nil && res == Claimed {
		defer w.local.leave(r.Set, r.DrvPath)
	} else {
		w.local.leave(r.Set, r.DrvPath)
	}
	if err != nil {
		return err
	}
	if res != Held && res != NotForUs {
		w.local.blocked.forget(key)
	}
	if w.OnClaim != nil {
		w.OnClaim(r, res)
	}
	switch res {
	case NotNeeded:
		return nil
	case NotForUs:
		return queue.Defer(notForUsDelay(d.NumDelivered))
	case Held:
		// Not acked: if the holder has the request, its builds tell the
		// server every AckWait/3 that it is in progress, which keeps
		// this delay from taking effect; if nobody has it, it comes
		// back after AckWait.
		log.Debug("farm: replica held by another builder's claim", logKeyDrv, r.DrvPath, "replica", r.Replica, "attempt", r.Attempt)
		return queue.Defer(ackWait)
	}
	stop := d.KeepAlive(ctx, ackWait/3, nil)
	bctx, withdraw := context.WithCancelCause(ctx)
	defer withdraw(nil)
	stopWithdraw := withdrawWhenUnneeded(bctx, kv, r, cmp.Or(w.WithdrawCheck, DefaultWithdrawCheck), withdraw)
	start := time.Now()
	stats, berr := w.Build(bctx, r)
	stopWithdraw()
	stop()
	if berr != nil && ctx.Err() == nil && errors.Is(context.Cause(bctx), errWithdrawn) {
		log.Info("farm: build withdrawn: its derivation is done, failed or blocked, or its set cancelled", logKeyDrv, r.DrvPath, "replica", r.Replica)
		return nil
	}
	if berr != nil && ctx.Err() != nil {
		// Stopped, not failed (the worker is shutting down, or a runner
		// takes its machine back for a forge job): nothing counts
		// against this builder, and the queue releases the request at
		// once (a nak without delay) for another worker.
		return fmt.Errorf("farm: build %s stopped: %w", r.DrvPath, errors.Join(context.Cause(ctx), berr))
	}
	owner := w.Owner
	if owner == "" {
		owner = w.Builder
	}
	rep := &Report{Version: RecordVersion, Set: r.Set, Tenant: r.Tenant, DrvPath: r.DrvPath, Replica: r.Replica,
		Attempt: r.Attempt, Builder: w.Builder, Owner: owner, Outcome: Built, Time: time.Now().UTC()}
	var be *BuildError
	switch {
	case berr == nil:
		if stats != nil {
			rep.CPUSeconds, rep.WallMillis = stats.CPUSeconds, stats.Wall.Milliseconds()
		}
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), queue.DefaultTimeout)
		if err := markBuilt(mctx, w.Conn, kv, r, w.Builder, d.Stream, d.NumDelivered); err != nil {
			// Only its claim may then move to another replica, if
			// another builder outranks it on this one.
			log.Warn("farm: could not mark the claim built", logKeyDrv, r.DrvPath, logKeyErr, err)
		}
		cancel()
	case errors.As(berr, &be):
		rep.Outcome, rep.ExitCode = BuildFailed, be.ExitCode
		rep.Log = be.Log[max(0, len(be.Log)-MaxLogLines):]
		rep.CPUSeconds, rep.WallMillis = be.Stats.CPUSeconds, be.Stats.Wall.Milliseconds()
		log.Warn("farm: build failed", logKeyDrv, r.DrvPath, logKeyErr, berr)
	default:
		return fmt.Errorf("farm: build %s: %w", r.DrvPath, berr)
	}
	if rep.WallMillis == 0 {
		rep.WallMillis = time.Since(start).Milliseconds()
	}
	// A build that ended is reported even when the worker is stopping
	// now: otherwise it would be built again.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), queue.DefaultTimeout)
	defer cancel()
	if err := PublishReport(rctx, w.Conn, rep); err != nil {
		return err
	}
	return nil
}

// notForUsDelay grows, linearly, with the deliveries of a request no
// worker online may take (a quorum larger than the owners online, a
// retry with only the builder that failed it): it waits for one without
// keeping the workers busy, and without making the work queue, which
// offers it to any worker of the subject, wait long once one is there.
func notForUsDelay(delivered uint64) time.Duration {
	return min(DefaultNotForUsDelay*time.Duration(max(delivered, 1)), 10*time.Second)
}

// PublishReport sends a worker's report to the schedulers, on its
// builder's subject (Report.Subject): conn's user must be allowed to
// publish there (a runner user built for rep.Builder, or an admin).
func PublishReport(ctx context.Context, conn *queue.Conn, rep *Report) error {
	subj, err := rep.Subject()
	if err != nil {
		return fmt.Errorf("farm: report: %w", err)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	if _, _, err := conn.PublishFarm(ctx, subj, rep.MsgID(), b); err != nil {
		return fmt.Errorf("farm: report %s: %w", rep.DrvPath, err)
	}
	return nil
}
