package farm

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"codeberg.org/provenix/provenix/queue"
)

// event is the part of a pusher's events (cachepush.Publication,
// cachepush.Rejection and cachepush.Dispute) the scheduler reads.
type event struct {
	Tenant    string `json:"tenant"`
	StorePath string `json:"storePath"`
	DrvPath   string `json:"drvPath"`
	Builder   string `json:"builder"`
	Reason    string `json:"reason"`
	Error     string `json:"error"`
	// Answers are a dispute's answers, each with the builders giving it.
	Answers []struct {
		Builders []string `json:"builders"`
	} `json:"answers"`
}

func (s *Scheduler) onEvent(ctx context.Context, d *queue.Delivery) error {
	kind := d.Subject[strings.LastIndexByte(d.Subject, '.')+1:]
	if kind != queue.EventPublished && kind != queue.EventRejected && kind != queue.EventDisputed {
		return nil
	}
	var e event
	if err := json.Unmarshal(d.Data, &e); err != nil {
		return queue.Permanent(fmt.Errorf("farm: unreadable %s event: %w", kind, err))
	}
	if kind == queue.EventDisputed {
		var voters []string
		largest := 0
		for _, a := range e.Answers {
			voters = append(voters, a.Builders...)
			largest = max(largest, len(a.Builders))
		}
		return s.Disputed(ctx, e.Tenant, e.DrvPath, voters, largest)
	}
	if kind == queue.EventRejected {
		return s.waitForState(d, s.Rejected(ctx, e.Tenant, e.DrvPath, e.Builder, cmp.Or(e.Reason, "rejected"), e.Reason+": "+e.Error))
	}
	if e.StorePath == "" {
		return queue.Permanent(errors.New("farm: publication event without a store path"))
	}
	return s.Visible(ctx, e.Tenant, e.StorePath)
}

// Rejected records that the cache refused builder's result for drvPath:
// in each open set where builder holds a replica of it, that build
// counts as failed, and is retried on another builder. Rejections of
// builds the farm did not ask for are ignored.
func (s *Scheduler) Rejected(ctx context.Context, tenant, drvPath, builder, reason, why string) error {
	if drvPath == "" || builder == "" {
		return nil
	}
	var errs []error
	var behind error
	for _, ls := range s.holding(tenant, drvPath) {
		cl, err := builderClaim(ctx, s.cfg.Conn, ls.set.ID, drvPath, builder)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cl == nil {
			continue
		}
		rep := &Report{Version: RecordVersion, Set: ls.set.ID, Tenant: tenant, DrvPath: drvPath, Replica: cl.Replica,
			Attempt: cl.Attempt, Builder: builder, Owner: cl.Owner, Outcome: BuildFailed,
			Log: []string{"result rejected by the cache: " + why}, Time: time.Now().UTC()}
		if err := s.failed(ctx, ls, rep, reason); errors.Is(err, errStateBehind) {
			behind = err
		} else if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// Retried with the usual backoff; the sets done are not
		// counted twice (hasFailure).
		return errors.Join(errs...)
	}
	return behind
}

// Disputed records that the builders of drvPath's output disagree:
// voters gave answers, the largest agreement among them is largest. The
// cache publishes nothing until enough builders agree, and the replicas
// the set dispatched are built, so in each open set holding drvPath the
// scheduler dispatches more replicas, to builders who have not voted
// (the claims keep owners distinct): as many as the quorum still lacks
// beyond the votes given, up to MaxAttempts more than the quorum. A
// redelivered event changes nothing.
func (s *Scheduler) Disputed(ctx context.Context, tenant, drvPath string, voters []string, largest int) error {
	if drvPath == "" || len(voters) == 0 {
		return nil
	}
	slices.Sort(voters)
	voters = slices.Compact(voters)
	var errs []error
	for _, ls := range s.holding(tenant, drvPath) {
		want := min(len(voters)+max(ls.set.Quorum-largest, 1), ls.set.Quorum+ls.set.MaxAttempts)
		_, err := update(ctx, s.kv, stateKey(ls.set.ID, drvPath), func(st *State, found bool) (bool, func(context.Context) error, error) {
			if !found || st.Status != Dispatched || len(st.Attempts) >= want {
				return false, nil, nil
			}
			attempts := make([]int, want)
			for i := len(st.Attempts); i < want; i++ {
				st.Attempts = append(st.Attempts, 1)
				attempts[i] = 1
			}
			st.Disputes++
			st.Voters = voters
			st.Updated = time.Now().UTC()
			return true, func(ctx context.Context) error {
				return s.publishRequests(ctx, ls, drvPath, st, attempts, voters)
			}, nil
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.log.Info("farm: disputed, more replicas dispatched", logKeySet, ls.set.ID, logKeyDrv, drvPath, "voters", voters, "replicas", want)
	}
	return errors.Join(errs...)
}

// holding returns copies of the loaded sets of tenant holding drvPath.
func (s *Scheduler) holding(tenant, drvPath string) []*loadedSet {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sets []*loadedSet
	for _, ls := range s.sets {
		if ls.set.Tenant == tenant && ls.g.Node(drvPath) != nil {
			cp := *ls
			sets = append(sets, &cp)
		}
	}
	return sets
}

// Visible records that storePath is visible in tenant's cache: the
// derivations making it count it, those needing it are dispatched when
// it was the last they waited for. Publication events call it; it is
// idempotent.
func (s *Scheduler) Visible(ctx context.Context, tenant, storePath string) error {
	s.mu.Lock()
	prod := slices.Clone(s.producers[storePath])
	need := slices.Clone(s.needers[storePath])
	s.mu.Unlock()
	var errs []error
	for _, r := range prod {
		ls, ok := s.loaded(r.set)
		if !ok || ls.set.Tenant != tenant {
			continue
		}
		_, unblocked, err := s.markVisible(ctx, ls, r.drv, []string{r.output})
		if err == nil && unblocked {
			// What waited below it is waiting again: recompute the set.
			err = s.Resync(ctx, ls.set.ID, false)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	// A path many derivations need (a compiler in a mass rebuild) has
	// thousands of dependents: update them a few at a time.
	err := parallel(ctx, need, func(ctx context.Context, r ref) error {
		ls, ok := s.loaded(r.set)
		if !ok || ls.set.Tenant != tenant {
			return nil
		}
		_, err := s.addHave(ctx, ls, r.drv, []string{storePath})
		return err
	})
	return errors.Join(append(errs, err)...)
}

// markVisible adds outputs to drv's visible ones; all visible is done.
// A derivation that had failed (or was blocked) and is done after all,
// built elsewhere, unblocks what it blocked: unblocked says so, and the
// caller recomputes the set (what is still below another failure is
// blocked again).
func (s *Scheduler) markVisible(ctx context.Context, ls *loadedSet, drv string, outputs []string) (st *State, unblocked bool, err error) {
	n := ls.g.Node(drv)
	var was Status
	st, err = update(ctx, s.kv, stateKey(ls.set.ID, drv), func(st *State, found bool) (bool, func(context.Context) error, error) {
		if !found {
			return false, nil, fmt.Errorf("farm: %w: no state for %s in set %s", ErrInvalid, drv, ls.set.ID)
		}
		was = st.Status
		changed := false
		for _, o := range outputs {
			if !slices.Contains(st.Visible, o) {
				st.Visible = append(st.Visible, o)
				changed = true
			}
		}
		slices.Sort(st.Visible)
		if len(st.Visible) == len(n.Outputs) && st.Status != Done {
			// Visible is what counts, even after a failure or a block:
			// someone built it after all.
			st.Status, st.BlockedBy, changed = Done, "", true
		}
		if changed {
			st.Updated = time.Now().UTC()
		}
		return changed, nil, nil
	})
	if err != nil || st.Status != Done || (was != Failed && was != Blocked) {
		return st, false, err
	}
	for _, d := range ls.g.Downstream(drv) {
		_, err := update(ctx, s.kv, stateKey(ls.set.ID, d), func(st *State, found bool) (bool, func(context.Context) error, error) {
			if !found || st.Status != Blocked {
				return false, nil, nil
			}
			st.Status, st.BlockedBy, st.Updated = Waiting, "", time.Now().UTC()
			return true, nil, nil
		})
		if err != nil {
			return st, false, err
		}
	}
	return st, true, nil
}

// addHave adds paths to those drv has from its inputs and, when they
// are all there, dispatches it: its requests are published before its
// state says so (see the package doc).
func (s *Scheduler) addHave(ctx context.Context, ls *loadedSet, drv string, paths []string) (*State, error) {
	needs := ls.g.Needs(drv)
	return update(ctx, s.kv, stateKey(ls.set.ID, drv), func(st *State, found bool) (bool, func(context.Context) error, error) {
		if !found {
			return false, nil, fmt.Errorf("farm: %w: no state for %s in set %s", ErrInvalid, drv, ls.set.ID)
		}
		changed := false
		for _, p := range paths {
			if slices.Contains(needs, p) && !slices.Contains(st.Have, p) {
				st.Have = append(st.Have, p)
				changed = true
			}
		}
		slices.Sort(st.Have)
		var before func(context.Context) error
		if st.Status == Waiting && len(st.Have) == len(needs) && ls.set.Canceled == nil {
			st.Status, changed = Dispatched, true
			now := time.Now().UTC()
			st.Dispatched = &now
			st.Attempts, st.Displaced = make([]int, ls.set.Quorum), nil
			for i := range st.Attempts {
				st.Attempts[i] = 1
			}
			attempts := slices.Clone(st.Attempts)
			before = func(ctx context.Context) error {
				return s.publishRequests(ctx, ls, drv, st, attempts, nil)
			}
		}
		if changed {
			st.Updated = time.Now().UTC()
		}
		return changed, before, nil
	})
}

// publishRequests publishes the request of each replica for its attempt
// (none for attempt 0), and records where each is stored in st, the
// state about to be written (State.Requests).
func (s *Scheduler) publishRequests(ctx context.Context, ls *loadedSet, drv string, st *State, attempts []int, exclude []string) error {
	for replica, attempt := range attempts {
		if attempt == 0 {
			continue
		}
		seq, err := publishRequest(ctx, s.cfg.Conn, s.request(ls, drv, replica, attempt, exclude), "")
		if err != nil {
			return err
		}
		st.setRequest(replica, seq)
	}
	return nil
}

func (s *Scheduler) request(ls *loadedSet, drv string, replica, attempt int, exclude []string) *Request {
	n := ls.g.Node(drv)
	return &Request{Version: RecordVersion, Set: ls.set.ID, Tenant: ls.set.Tenant, DrvPath: drv, System: n.System,
		Features: n.Features, Outputs: n.Outputs, Replica: replica, Attempt: attempt, Exclude: exclude,
		Closure: ls.set.Closure, Requested: time.Now().UTC()}
}

// publishRequest publishes r with its message id plus again (a request
// sent again: see requeue) and returns its stream sequence.
func publishRequest(ctx context.Context, conn *queue.Conn, r *Request, again string) (uint64, error) {
	if err := r.Validate(); err != nil {
		return 0, err
	}
	subj, err := r.Subject()
	if err != nil {
		return 0, fmt.Errorf("farm: request %s: %w", r.DrvPath, err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	seq, _, err := conn.PublishFarm(ctx, subj, r.MsgID()+again, b)
	if err != nil {
		return 0, fmt.Errorf("farm: request %s: %w", r.DrvPath, err)
	}
	return seq, nil
}

// requeue sends again the requests of drv (dispatched) that no worker
// has any more and none built, or that one builder has held too long: a
// worker acknowledged them without a build (a bad builder can take
// requests and drop them; honest workers only drop one the state no
// longer needs), they expired, or a worker keeps one and tells the
// server it is in progress, for good. Without this such a replica
// waited for good.
//
// A request gone counts only once this process has seen it gone for
// RequeueAfter, which leaves a failure report that is on its way time to
// be handled; a replica that failed is left alone (the retry is the
// scheduler's). A claim that says its replica was built (Built, a
// builder's word) holds it off for BuiltTimeout, and for as long as a
// request of another replica is still queued: an honest one waits for
// the other replicas' votes, a bad builder's would hold it off for good;
// past that, the request goes to another builder (its claimant
// excluded), whose build is one more vote. A builder whose claim names
// the gone message and no build is displaced and excluded too, so its
// claim does not hold the replica against the new message. While the
// derivation waits with all its replicas built (a dispute's extra
// replicas not yet out, say), that repeats every BuiltTimeout.
//
// A request still queued is left to its workers for HoldTimeout; past
// that, who holds it is watched: the claim holding its replica, or, with
// none, a worker that has had it (its consumer delivered it) and keeps
// it without a claim. Once it has been held for HoldTimeout more
// (State.hold: only a builder not seen holding it before starts the
// count again) the request goes out again, past every builder seen
// holding it. An unclaimed request no worker has had only waits for one
// and is left alone.
//
// A resend excludes the builders it displaces, and those that failed
// the derivation or voted on it.
//
// A request goes out again under a message id naming the one it
// replaces, so schedulers doing this at once send it once.
func (s *Scheduler) requeue(ctx context.Context, ls *loadedSet, drv string, st *State) error {
	if st.Status != Dispatched {
		return nil
	}
	// Which requests are gone, and since when; which are queued long.
	type req struct {
		replica, attempt int
		seq              uint64
		key              requestKey
		since            time.Time
	}
	var gone, long []req
	anyQueued := false
	for replica, seq := range st.Requests {
		if seq == 0 || replica >= len(st.Attempts) || st.hasFailure(replica, st.Attempts[replica]) {
			continue
		}
		attempt := st.Attempts[replica]
		key := requestKey{set: ls.set.ID, drv: drv, replica: replica, attempt: attempt, msg: seq}
		stored, queued, err := s.cfg.Conn.FarmRequestQueued(ctx, seq)
		if err != nil {
			return err
		}
		if queued {
			anyQueued = true
			s.gone.forget(key)
			// Queued since the server stored it: a message leaves a
			// work queue for good. (The server's time, not this
			// process's: a restart does not start the wait again.)
			if time.Since(stored) >= s.cfg.HoldTimeout {
				long = append(long, req{replica, attempt, seq, key, stored})
			}
			continue
		}
		s.queued.forget(key)
		gone = append(gone, req{replica, attempt, seq, key, s.gone.see(key)})
	}
	var claims []Claim
	read := false
	readOnce := func() error {
		if read {
			return nil
		}
		var err error
		claims, _, err = readClaims(ctx, s.cfg.Conn, ls.set.ID, drv, "")
		read = err == nil
		return err
	}
	for _, g := range gone {
		replica, attempt, seq, since := g.replica, g.attempt, g.seq, g.since
		if time.Since(since) < s.cfg.RequeueAfter {
			continue
		}
		if err := readOnce(); err != nil {
			return err
		}
		// Who claimed it: the builders that say they built it, and one
		// whose claim names the message with no build (a bad builder
		// that took it and acknowledged it unbuilt; an honest one whose
		// Built record failed, or that crashed while another took the
		// redelivery and dropped it, is displaced too: a rebuild by it
		// adds no vote, or it waits for the next attempt).
		var built, dropped []string
		for _, c := range claims {
			switch {
			case !c.holds(c.Builder, replica, attempt):
			case c.Built:
				built = append(built, c.Builder)
			case c.Msg == seq:
				dropped = append(dropped, c.Builder)
			}
		}
		// A built replica waits for the others while any of their
		// requests is still queued, however long. (A replica whose
		// failure is recorded is not counted: its retry, once out, is.)
		if len(built) > 0 && (anyQueued || time.Since(since) < s.cfg.BuiltTimeout) {
			continue
		}
		sent, err := s.sendAgain(ctx, ls, drv, replica, attempt, seq, slices.Concat(built, dropped))
		if err != nil {
			return err
		}
		if !sent {
			continue // moved on meanwhile
		}
		s.gone.forget(g.key)
		s.log.Warn("farm: sent a request again: no worker has it, and no build of it is known (dropped without a build, expired, or a claim of a build held it off too long)",
			logKeySet, ls.set.ID, logKeyDrv, drv, "replica", replica, "attempt", attempt, "claimedBuiltBy", built, "droppedBy", dropped)
	}
	for _, l := range long {
		// The holder needs no closer watch than a 24th of the wait (an
		// hour at most): a long backlog nobody serves costs a claim
		// read per derivation that often, not at every resync.
		if !s.queued.due(l.key, min(s.cfg.HoldTimeout/24, time.Hour)) {
			continue
		}
		if err := readOnce(); err != nil {
			return err
		}
		// Who holds the replica, whatever message its claim names: a
		// builder that keeps this one cannot get out of the count by
		// naming another. (Claims of messages gone unbuilt were
		// displaced with them.)
		h := holdersAt(claims, st, st.failedBuilders(), 0)[l.replica]
		holder := ""
		if h != nil {
			holder = h.Builder
		} else {
			// No claim holds it: waiting for a worker, unless one has
			// had it (a worker that keeps it without a claim, or a
			// claimant that withdrew its claim: its count goes on).
			subj, err := s.request(ls, drv, l.replica, l.attempt, nil).Subject()
			if err != nil {
				return err
			}
			delivered, err := s.cfg.Conn.FarmRequestDelivered(ctx, subj, l.seq)
			if errors.Is(err, queue.ErrPermissionDenied) {
				// An account.conf older than this rule: the rest of
				// requeue still works (docs/tenants.md). Said once per
				// process, not per request.
				s.deniedDelivered.Do(func() {
					s.log.Warn("farm: cannot tell whether a request was delivered, so requests kept without a claim are not sent again; run provenix tenant upgrade", "err", err)
				})
				continue
			}
			if err != nil {
				return err
			}
			if !delivered {
				continue
			}
		}
		// Since when it is held (State.hold: a new holder starts the
		// count again, a withdrawn claim or one handed back does not);
		// past HoldTimeout every builder seen holding it is displaced.
		since, displaced, err := s.recordHold(ctx, ls, drv, l.replica, l.attempt, l.seq, holder)
		if err != nil {
			return err
		}
		if since.IsZero() || time.Since(since) < s.cfg.HoldTimeout {
			continue // moved on meanwhile, or not held long yet
		}
		sent, err := s.sendAgain(ctx, ls, drv, l.replica, l.attempt, l.seq, displaced)
		if err != nil {
			return err
		}
		if !sent {
			continue // moved on meanwhile
		}
		s.queued.forget(l.key)
		why := "one builder held it too long without a result (its worker keeps it, unbuilt or building longer than HoldTimeout)"
		if len(displaced) == 0 {
			why = "workers have had it but none claimed it for HoldTimeout (one keeps it without a claim, or every worker passes it on: too few owners for the quorum, say)"
		}
		s.log.Warn("farm: sent a request again: "+why,
			logKeySet, ls.set.ID, logKeyDrv, drv, "replica", l.replica, "attempt", l.attempt, "heldBy", displaced,
			"queuedSince", l.since)
	}
	return nil
}

// recordHold records in drv's state that replica's request, on attempt
// and stored at seq, is held by holder now (State.hold), and returns
// since when and by whom it has been held; a zero since when the state
// moved on meanwhile. Kept in the state, not in this process's memory,
// so that a restart does not start the count again. It writes only when
// the record changes: the first time the request is seen held, and for
// each new holder.
func (s *Scheduler) recordHold(ctx context.Context, ls *loadedSet, drv string, replica, attempt int, seq uint64, holder string) (since time.Time, holders []string, err error) {
	_, err = update(ctx, s.kv, stateKey(ls.set.ID, drv), func(cur *State, found bool) (bool, func(context.Context) error, error) {
		since, holders = time.Time{}, nil
		if !found || cur.Status != Dispatched || replica >= len(cur.Requests) || cur.Requests[replica] != seq || cur.Attempts[replica] != attempt {
			return false, nil, nil // moved on meanwhile
		}
		var changed bool
		since, holders, changed = cur.hold(replica, seq, holder, time.Now().UTC())
		if changed {
			cur.Updated = time.Now().UTC()
		}
		return changed, nil, nil
	})
	return since, holders, err
}

// sendAgain sends replica's request again, past the claims of displaced
// (who may not take it), unless the state moved on meanwhile (sent
// false).
func (s *Scheduler) sendAgain(ctx context.Context, ls *loadedSet, drv string, replica, attempt int, seq uint64, displaced []string) (sent bool, err error) {
	_, err = update(ctx, s.kv, stateKey(ls.set.ID, drv), func(cur *State, found bool) (bool, func(context.Context) error, error) {
		sent = false
		if !found || cur.Status != Dispatched || replica >= len(cur.Requests) || cur.Requests[replica] != seq || cur.Attempts[replica] != attempt {
			return false, nil, nil // moved on meanwhile
		}
		cur.Updated = time.Now().UTC()
		cur.displace(replica, displaced)
		sent = true
		// Excluded: those displaced now. One displaced earlier holds
		// nothing on this attempt (State.displaced) but may build it
		// again: a bad keeper ignores Exclude anyway, and an honest
		// owner displaced once may be the only one left for it.
		exclude := slices.Concat(cur.failedBuilders(), cur.Voters, displaced)
		slices.Sort(exclude)
		exclude = slices.Compact(exclude)
		return true, func(ctx context.Context) error {
			r := s.request(ls, drv, replica, attempt, exclude)
			next, err := publishRequest(ctx, s.cfg.Conn, r, ":again:"+strconv.FormatUint(seq, 10))
			cur.setRequest(replica, next)
			return err
		}, nil
	})
	return sent, err
}

func (s *Scheduler) onReport(ctx context.Context, d *queue.Delivery) error {
	// A report on another builder's subject than the one it names is
	// refused: its builder did not send it.
	rep, err := DecodeReport(d.Subject, d.Data)
	if err != nil {
		return queue.Permanent(err)
	}
	if rep.Outcome != BuildFailed {
		// A build that succeeded counts once its outputs are visible.
		return nil
	}
	ls, err := s.ensureLoaded(ctx, rep.Set)
	if errors.Is(err, ErrNotFound) {
		return queue.Permanent(err)
	}
	if err != nil {
		return err
	}
	if ls.set.Tenant != rep.Tenant || ls.g.Node(rep.DrvPath) == nil {
		return queue.Permanent(fmt.Errorf("farm: %w: report on %s, not in set %s of tenant %s", ErrInvalid, rep.DrvPath, rep.Set, rep.Tenant))
	}
	// Only the builder holding the replica may say its build failed:
	// a report from anyone else (or about an attempt taken over since)
	// must not use up the derivation's attempts.
	c, err := builderClaim(ctx, s.cfg.Conn, rep.Set, rep.DrvPath, rep.Builder)
	if err != nil {
		return err
	}
	if !c.holds(rep.Builder, rep.Replica, rep.Attempt) {
		return queue.Permanent(fmt.Errorf("farm: %w: %s reports a failure of %s replica %d attempt %d it does not hold",
			ErrInvalid, rep.Builder, rep.DrvPath, rep.Replica, rep.Attempt))
	}
	return s.waitForState(d, s.failed(ctx, ls, rep, ""))
}

// failed records a failed build: a retry on another builder while the
// derivation has failed fewer than MaxAttempts times, else the
// derivation fails and blocks everything that depends on it.
//
// A builder's failure counts once per derivation: one from a builder
// that failed it already (its report, or the cache's rejection of its
// result) is logged and ignored. An honest builder never builds a
// derivation again after failing it (the retries exclude it, and claim
// refuses it), but any runner can write claim records: without this, a
// bad builder could claim each new attempt for itself and fail it
// again, until the derivation failed and blocked its dependents.
func (s *Scheduler) failed(ctx context.Context, ls *loadedSet, rep *Report, rejected string) error {
	drv := rep.DrvPath
	again, behind, late := false, false, false
	st, err := update(ctx, s.kv, stateKey(ls.set.ID, drv), func(st *State, found bool) (bool, func(context.Context) error, error) {
		again, behind, late = false, false, false
		if !found {
			return false, nil, fmt.Errorf("farm: %w: no state for %s", ErrInvalid, drv)
		}
		if st.hasFailure(rep.Replica, rep.Attempt) {
			return false, nil, nil
		}
		if rep.Replica < 0 { // a claim record's, which any runner may write
			return false, nil, nil
		}
		if rep.Replica >= len(st.Attempts) || rep.Attempt > st.Attempts[rep.Replica] {
			// Nothing to wait for once final.
			behind = !st.Status.Final()
			return false, nil, nil
		}
		if slices.Contains(st.failedBuilders(), rep.Builder) {
			again = true
			return false, nil, nil
		}
		st.Failures = append(st.Failures, Failure{Replica: rep.Replica, Attempt: rep.Attempt, Builder: rep.Builder,
			Owner: rep.Owner, ExitCode: rep.ExitCode, Rejected: rejected, Log: rep.Log, Time: rep.Time})
		st.Updated = time.Now().UTC()
		if st.Status.Final() {
			// Recorded, against its builder, and nothing else changes.
			// A retry's request goes out before the state that records
			// the failure (update's effect comes first): a retry that
			// finished before that write made the derivation done, and
			// the write, tried again, finds it final. Dropped, the
			// failure would not count against the builder at all.
			late = true
			return true, nil, nil
		}
		if len(st.Failures) >= ls.set.MaxAttempts {
			st.Status = Failed
			return true, nil, nil
		}
		if st.Attempts[rep.Replica] != rep.Attempt {
			return true, nil, nil // a later attempt runs already
		}
		st.Attempts[rep.Replica] = rep.Attempt + 1
		if rep.Replica < len(st.Displaced) {
			st.Displaced[rep.Replica] = nil // of the attempt before
		}
		attempts := make([]int, len(st.Attempts))
		attempts[rep.Replica] = rep.Attempt + 1
		exclude := st.failedBuilders()
		return true, func(ctx context.Context) error {
			return s.publishRequests(ctx, ls, drv, st, attempts, exclude)
		}, nil
	})
	if err != nil {
		return err
	}
	if behind {
		return fmt.Errorf("%w: %s replica %d attempt %d", errStateBehind, drv, rep.Replica, rep.Attempt)
	}
	if again {
		s.log.Warn("farm: ignored a second failure of a builder on one derivation", logKeySet, ls.set.ID, logKeyDrv, drv,
			"builder", rep.Builder, "replica", rep.Replica, "attempt", rep.Attempt, "rejected", rejected)
		return nil
	}
	s.log.Info("farm: build failed", logKeySet, ls.set.ID, logKeyDrv, drv, "builder", rep.Builder,
		"attempt", rep.Attempt, "status", st.Status)
	if late {
		return nil // final before: nothing to retry or block
	}
	if st.Status == Failed {
		return s.block(ctx, ls, drv)
	}
	return nil
}

// errStateBehind: a failure names an attempt its derivation's state does
// not know yet. The scheduler publishes a request before it writes the
// state that says so (update's effect comes first), and a build that
// fails at once can be reported, or its result rejected, in between:
// dropped, that failure left the derivation dispatched with no request
// out, for good. It is handled again shortly (waitForState).
var errStateBehind = errors.New("farm: the derivation's state does not know this attempt yet")

// Bounds of waitForState. The state is written right after the publish,
// but a write that failed is tried again with the handler's backoff (up
// to 30 s), at the next resync (a minute), or after a crash once AckWait
// (a minute) has passed: a failure waits that long, and one naming an
// attempt that never comes (a forged claim's) is then dropped.
const (
	behindDelay    = 250 * time.Millisecond
	behindDelayMax = 5 * time.Second
	behindFor      = 3 * time.Minute
)

// waitForState is the outcome of handling delivery d, which failed with
// err: d again later when err is errStateBehind, until behindFor after
// the message was stored.
func (s *Scheduler) waitForState(d *queue.Delivery, err error) error {
	if !errors.Is(err, errStateBehind) {
		return err
	}
	if time.Since(d.Stored) > behindFor {
		s.log.Warn("farm: dropped a failure whose attempt the state never reached", "subject", d.Subject, logKeyErr, err)
		return queue.Permanent(err)
	}
	return queue.Defer(min(behindDelay*time.Duration(d.NumDelivered), behindDelayMax))
}

// block marks every derivation downstream of drv, not final yet, as
// blocked by it.
func (s *Scheduler) block(ctx context.Context, ls *loadedSet, drv string) error {
	var errs []error
	for _, d := range ls.g.Downstream(drv) {
		_, err := update(ctx, s.kv, stateKey(ls.set.ID, d), func(st *State, found bool) (bool, func(context.Context) error, error) {
			if !found || st.Status.Final() {
				return false, nil, nil
			}
			st.Status, st.BlockedBy, st.Updated = Blocked, drv, time.Now().UTC()
			return true, nil, nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
