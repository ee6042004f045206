package farm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/queue"
)

// Defaults of SchedulerConfig.
const (
	DefaultGroup       = "farm"
	DefaultResyncEvery = time.Minute
	DefaultConcurrency = 16
)

// Log attribute keys.
const (
	logKeySet = "set"
	logKeyDrv = "drv"
	logKeyErr = "err"
)

// SchedulerConfig is what a Scheduler needs. Conn and Cache are required.
type SchedulerConfig struct {
	Conn *queue.Conn
	// Cache is checked when a scheduler (re)computes a set's state.
	Cache Cache
	// Group names the schedulers that share the publication events (one
	// durable consumer); DefaultGroup when empty. Schedulers of one group
	// may run in any number of processes.
	Group string
	// ResyncEvery is how often every open set is recomputed from the
	// bucket and the cache, catching what no event announced;
	// DefaultResyncEvery when 0.
	ResyncEvery time.Duration
	// Concurrency is how many events and how many reports are handled at
	// once; DefaultConcurrency when 0.
	Concurrency int
	Logger      *slog.Logger
}

// Scheduler dispatches the derivations of open build sets as their
// inputs become visible, retries failed builds and blocks what depends
// on a derivation that failed for good. New checks the configuration,
// Open starts it, Close stops it.
type Scheduler struct {
	cfg SchedulerConfig
	log *slog.Logger
	kv  jetstream.KeyValue

	mu   sync.Mutex
	sets map[string]*loadedSet
	// producers and needers index the loaded sets by store path:
	// which derivation makes it, which need it.
	producers map[string][]ref
	needers   map[string][]ref

	stop    context.CancelFunc
	done    chan struct{}
	events  *queue.Consumer
	reports *queue.Consumer
}

type loadedSet struct {
	set *Set
	g   *Graph
}

type ref struct {
	set, drv, output string
}

// NewScheduler checks cfg and fills its defaults.
func NewScheduler(cfg SchedulerConfig) (*Scheduler, error) {
	if cfg.Conn == nil || cfg.Cache == nil {
		return nil, errors.New("farm: scheduler: Conn and Cache are required")
	}
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	if err := queue.ValidToken(cfg.Group); err != nil {
		return nil, fmt.Errorf("farm: scheduler: group: %w", err)
	}
	if cfg.ResyncEvery == 0 {
		cfg.ResyncEvery = DefaultResyncEvery
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.ResyncEvery < 0 || cfg.Concurrency < 0 {
		return nil, errors.New("farm: scheduler: negative ResyncEvery or Concurrency")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Scheduler{cfg: cfg, log: log, sets: map[string]*loadedSet{},
		producers: map[string][]ref{}, needers: map[string][]ref{}}, nil
}

// Open loads the open sets, recomputes their state (a scheduler that
// died left nothing that this does not finish), and starts handling
// publication events, reports and new sets.
func (s *Scheduler) Open(ctx context.Context) error {
	kv, err := bucket(ctx, s.cfg.Conn)
	if err != nil {
		return err
	}
	s.kv = kv
	sets, err := list[Set](ctx, kv, setPrefix)
	if err != nil {
		return err
	}
	for _, set := range sets {
		if set.Closed() {
			continue
		}
		if err := s.load(ctx, set); err != nil {
			return err
		}
		if err := s.Resync(ctx, set.ID, true); err != nil {
			return err
		}
	}
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop, s.done = stop, make(chan struct{})
	// Only new sets: those present now were loaded above.
	w, err := kv.Watch(rctx, setKey("*"), jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		stop()
		return fmt.Errorf("farm: watch sets: %w", err)
	}
	s.events, err = s.cfg.Conn.ConsumeEvents(rctx, queue.ConsumerOptions{Group: s.cfg.Group, Concurrency: s.cfg.Concurrency}, s.onEvent)
	if err != nil {
		stop()
		return fmt.Errorf("farm: scheduler: %w", err)
	}
	s.reports, err = s.cfg.Conn.ConsumeFarm(rctx, queue.ConsumerOptions{FilterSubject: queue.FarmReportFilter, Concurrency: s.cfg.Concurrency}, s.onReport)
	if err != nil {
		stop()
		return fmt.Errorf("farm: scheduler: %w", err)
	}
	go s.run(rctx, w)
	return nil
}

// Close stops the scheduler and waits for its handlers to return.
// What they left undone is redelivered, or found by the next resync.
func (s *Scheduler) Close(ctx context.Context) error {
	if s.stop == nil {
		return nil
	}
	s.stop()
	for _, k := range []*queue.Consumer{s.events, s.reports} {
		if k == nil {
			continue
		}
		select {
		case <-k.Closed():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// run loads new sets as they are submitted and resyncs every open set
// every ResyncEvery.
func (s *Scheduler) run(ctx context.Context, w jetstream.KeyWatcher) {
	defer close(s.done)
	defer w.Stop()
	t := time.NewTicker(s.cfg.ResyncEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			var set Set
			if err := json.Unmarshal(e.Value(), &set); err != nil {
				s.log.Warn("farm: unreadable set record", "key", e.Key(), logKeyErr, err)
				continue
			}
			if set.Closed() {
				s.unload(set.ID)
				continue
			}
			if err := s.load(ctx, &set); err != nil {
				s.log.Warn("farm: load set", logKeySet, set.ID, logKeyErr, err)
				continue
			}
			// Submit looked the outputs up just now.
			if err := s.Resync(ctx, set.ID, false); err != nil && ctx.Err() == nil {
				s.log.Warn("farm: resync new set", logKeySet, set.ID, logKeyErr, err)
			}
		case <-t.C:
			for _, id := range s.loadedIDs() {
				if err := s.Resync(ctx, id, true); err != nil && ctx.Err() == nil {
					s.log.Warn("farm: resync", logKeySet, id, logKeyErr, err)
				}
			}
		}
	}
}

func (s *Scheduler) loadedIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.sets))
	for id := range s.sets {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// load reads a set's definition into memory (once: it does not change)
// and indexes it by store path; a set record seen again only updates
// its cancellation.
func (s *Scheduler) load(ctx context.Context, set *Set) error {
	s.mu.Lock()
	if ls, ok := s.sets[set.ID]; ok {
		ls.set = set
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	nodes, err := list[Node](ctx, s.kv, nodePrefix(set.ID))
	if err != nil {
		return err
	}
	if len(nodes) != set.Size {
		return fmt.Errorf("farm: %w: set %s has %d derivations, its record says %d", ErrInvalid, set.ID, len(nodes), set.Size)
	}
	g, err := NewGraph(slices.Collect(func(yield func(*Node) bool) {
		for _, n := range nodes {
			if !yield(n) {
				return
			}
		}
	}))
	if err != nil {
		return fmt.Errorf("farm: set %s: %w", set.ID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.sets[set.ID]; ok {
		return nil
	}
	s.sets[set.ID] = &loadedSet{set: set, g: g}
	for _, n := range g.Nodes() {
		for name, p := range n.Outputs {
			s.producers[p] = append(s.producers[p], ref{set.ID, n.DrvPath, name})
		}
		for _, p := range g.Needs(n.DrvPath) {
			s.needers[p] = append(s.needers[p], ref{set: set.ID, drv: n.DrvPath})
		}
	}
	return nil
}

// unload forgets a set whose derivations are all final.
func (s *Scheduler) unload(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls, ok := s.sets[id]
	if !ok {
		return
	}
	delete(s.sets, id)
	drop := func(idx map[string][]ref, p string) {
		idx[p] = slices.DeleteFunc(idx[p], func(r ref) bool { return r.set == id })
		if len(idx[p]) == 0 {
			delete(idx, p)
		}
	}
	for _, n := range ls.g.Nodes() {
		for _, p := range n.Outputs {
			drop(s.producers, p)
		}
		for _, p := range ls.g.Needs(n.DrvPath) {
			drop(s.needers, p)
		}
	}
}

func (s *Scheduler) loaded(id string) (*loadedSet, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls, ok := s.sets[id]
	if !ok {
		return nil, false
	}
	cp := *ls
	return &cp, true
}

// ensureLoaded loads set id from the bucket if this scheduler has not.
func (s *Scheduler) ensureLoaded(ctx context.Context, id string) (*loadedSet, error) {
	if ls, ok := s.loaded(id); ok {
		return ls, nil
	}
	var set Set
	_, found, err := getJSON(ctx, s.kv, setKey(id), &set)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err := s.load(ctx, &set); err != nil {
		return nil, err
	}
	ls, _ := s.loaded(id)
	return ls, nil
}

// event is the part of a pusher's events (cachepush.Publication and
// cachepush.Rejection) the scheduler reads.
type event struct {
	Tenant    string `json:"tenant"`
	StorePath string `json:"storePath"`
	DrvPath   string `json:"drvPath"`
	Builder   string `json:"builder"`
	Reason    string `json:"reason"`
	Error     string `json:"error"`
}

func (s *Scheduler) onEvent(ctx context.Context, d *queue.Delivery) error {
	kind := d.Subject[strings.LastIndexByte(d.Subject, '.')+1:]
	if kind != queue.EventPublished && kind != queue.EventRejected {
		return nil
	}
	var e event
	if err := json.Unmarshal(d.Data, &e); err != nil {
		return queue.Permanent(fmt.Errorf("farm: unreadable %s event: %w", kind, err))
	}
	if kind == queue.EventRejected {
		return s.Rejected(ctx, e.Tenant, e.DrvPath, e.Builder, e.Reason+": "+e.Error)
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
func (s *Scheduler) Rejected(ctx context.Context, tenant, drvPath, builder, why string) error {
	if drvPath == "" || builder == "" {
		return nil
	}
	s.mu.Lock()
	var sets []*loadedSet
	for _, ls := range s.sets {
		if ls.set.Tenant == tenant && ls.g.Node(drvPath) != nil {
			cp := *ls
			sets = append(sets, &cp)
		}
	}
	s.mu.Unlock()
	var errs []error
	for _, ls := range sets {
		var c Claims
		if _, _, err := getJSON(ctx, s.kv, claimKey(ls.set.ID, drvPath), &c); err != nil {
			errs = append(errs, err)
			continue
		}
		for _, cl := range c.Replicas {
			if cl.Builder != builder {
				continue
			}
			rep := &Report{Version: RecordVersion, Set: ls.set.ID, Tenant: tenant, DrvPath: drvPath, Replica: cl.Replica,
				Attempt: cl.Attempt, Builder: builder, Owner: cl.Owner, Outcome: BuildFailed,
				Log: []string{"result rejected by the cache: " + why}, Time: time.Now().UTC()}
			if err := s.failed(ctx, ls, rep); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
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
		if _, err := s.markVisible(ctx, ls, r.drv, []string{r.output}); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range need {
		ls, ok := s.loaded(r.set)
		if !ok || ls.set.Tenant != tenant {
			continue
		}
		if _, err := s.addHave(ctx, ls, r.drv, []string{storePath}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// markVisible adds outputs to drv's visible ones; all visible is done.
func (s *Scheduler) markVisible(ctx context.Context, ls *loadedSet, drv string, outputs []string) (*State, error) {
	n := ls.g.Node(drv)
	return update(ctx, s.kv, stateKey(ls.set.ID, drv), func(st *State, found bool) (bool, func(context.Context) error, error) {
		if !found {
			return false, nil, fmt.Errorf("farm: %w: no state for %s in set %s", ErrInvalid, drv, ls.set.ID)
		}
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
			st.Attempts = make([]int, ls.set.Quorum)
			for i := range st.Attempts {
				st.Attempts[i] = 1
			}
			attempts := slices.Clone(st.Attempts)
			before = func(ctx context.Context) error {
				return s.publishRequests(ctx, ls, drv, attempts, nil)
			}
		}
		if changed {
			st.Updated = time.Now().UTC()
		}
		return changed, before, nil
	})
}

// publishRequests publishes the request of each replica for its attempt.
func (s *Scheduler) publishRequests(ctx context.Context, ls *loadedSet, drv string, attempts []int, exclude []string) error {
	n := ls.g.Node(drv)
	for replica, attempt := range attempts {
		if attempt == 0 {
			continue
		}
		r := &Request{Version: RecordVersion, Set: ls.set.ID, Tenant: ls.set.Tenant, DrvPath: drv, System: n.System,
			Features: n.Features, Outputs: n.Outputs, Replica: replica, Attempt: attempt, Exclude: exclude,
			Closure: ls.set.Closure, Requested: time.Now().UTC()}
		if err := publishRequest(ctx, s.cfg.Conn, r); err != nil {
			return err
		}
	}
	return nil
}

func publishRequest(ctx context.Context, conn *queue.Conn, r *Request) error {
	if err := r.Validate(); err != nil {
		return err
	}
	subj, err := r.Subject()
	if err != nil {
		return fmt.Errorf("farm: request %s: %w", r.DrvPath, err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := conn.PublishFarm(ctx, subj, r.MsgID(), b); err != nil {
		return fmt.Errorf("farm: request %s: %w", r.DrvPath, err)
	}
	return nil
}

func (s *Scheduler) onReport(ctx context.Context, d *queue.Delivery) error {
	rep, err := DecodeReport(d.Data)
	if err != nil {
		return queue.Permanent(err)
	}
	if want, _ := queue.FarmReportSubject(rep.Tenant); d.Subject != want {
		return queue.Permanent(fmt.Errorf("farm: %w: report for tenant %q on %s", ErrInvalid, rep.Tenant, d.Subject))
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
	return s.failed(ctx, ls, rep)
}

// failed records a failed build: a retry on another builder while the
// derivation has failed fewer than MaxAttempts times, else the
// derivation fails and blocks everything that depends on it.
func (s *Scheduler) failed(ctx context.Context, ls *loadedSet, rep *Report) error {
	drv := rep.DrvPath
	st, err := update(ctx, s.kv, stateKey(ls.set.ID, drv), func(st *State, found bool) (bool, func(context.Context) error, error) {
		if !found {
			return false, nil, fmt.Errorf("farm: %w: no state for %s", ErrInvalid, drv)
		}
		if st.Status.Final() || st.hasFailure(rep.Replica, rep.Attempt) || rep.Replica >= len(st.Attempts) {
			return false, nil, nil
		}
		st.Failures = append(st.Failures, Failure{Replica: rep.Replica, Attempt: rep.Attempt, Builder: rep.Builder,
			Owner: rep.Owner, ExitCode: rep.ExitCode, Log: rep.Log, Time: rep.Time})
		st.Updated = time.Now().UTC()
		if len(st.Failures) >= ls.set.MaxAttempts {
			st.Status = Failed
			return true, nil, nil
		}
		if st.Attempts[rep.Replica] != rep.Attempt {
			return true, nil, nil // a later attempt runs already
		}
		st.Attempts[rep.Replica] = rep.Attempt + 1
		attempts := make([]int, len(st.Attempts))
		attempts[rep.Replica] = rep.Attempt + 1
		exclude := st.failedBuilders()
		return true, func(ctx context.Context) error {
			return s.publishRequests(ctx, ls, drv, attempts, exclude)
		}, nil
	})
	if err != nil {
		return err
	}
	s.log.Info("farm: build failed", logKeySet, ls.set.ID, logKeyDrv, drv, "builder", rep.Builder,
		"attempt", rep.Attempt, "status", st.Status)
	if st.Status == Failed {
		return s.block(ctx, ls, drv)
	}
	return nil
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

// Resync recomputes set id's state from the bucket and, with checkCache,
// the cache: outputs visible without an event are counted, derivations
// whose inputs are all visible are dispatched (again: a request
// published before a crash is the same message), derivations below a
// failure are blocked. A set whose derivations are all final is marked
// finished and forgotten (its records stay).
func (s *Scheduler) Resync(ctx context.Context, id string, checkCache bool) error {
	ls, err := s.ensureLoaded(ctx, id)
	if err != nil {
		return err
	}
	states, err := s.states(ctx, ls)
	if err != nil {
		return err
	}
	var errs []error
	if checkCache {
		var open []string
		for drv, st := range states {
			if !st.Status.Final() {
				open = append(open, drv)
			}
		}
		var mu sync.Mutex
		err := parallel(ctx, open, func(ctx context.Context, drv string) error {
			mu.Lock()
			st := states[drv]
			mu.Unlock()
			var found []string
			for name, p := range ls.g.Node(drv).Outputs {
				if slices.Contains(st.Visible, name) {
					continue
				}
				ok, err := s.cfg.Cache.Has(ctx, p)
				if err != nil {
					return fmt.Errorf("farm: resync %s: %w", id, err)
				}
				if ok {
					found = append(found, name)
				}
			}
			if len(found) == 0 {
				return nil
			}
			nst, err := s.markVisible(ctx, ls, drv, found)
			if err != nil {
				return err
			}
			mu.Lock()
			states[drv] = nst
			mu.Unlock()
			return nil
		})
		if err != nil {
			return err
		}
	}
	visible := map[string]bool{}
	for drv, st := range states {
		for _, name := range st.Visible {
			visible[ls.g.Node(drv).Outputs[name]] = true
		}
	}
	final := 0
	for _, drv := range ls.g.Order() {
		st := states[drv]
		if st.Status.Final() {
			final++
			continue
		}
		if st.Status != Waiting {
			continue
		}
		if by := blockedBy(ls.g, states, drv); by != "" {
			nst, err := update(ctx, s.kv, stateKey(id, drv), func(st *State, found bool) (bool, func(context.Context) error, error) {
				if !found || st.Status != Waiting {
					return false, nil, nil
				}
				st.Status, st.BlockedBy, st.Updated = Blocked, by, time.Now().UTC()
				return true, nil, nil
			})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			states[drv] = nst
			if nst.Status.Final() {
				final++
			}
			continue
		}
		var have []string
		for _, p := range ls.g.Needs(drv) {
			if visible[p] {
				have = append(have, p)
			}
		}
		if len(have) == len(ls.g.Needs(drv)) || len(have) > len(st.Have) {
			nst, err := s.addHave(ctx, ls, drv, have)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			states[drv] = nst
		}
	}
	if final == len(states) && len(errs) == 0 {
		if err := s.finish(ctx, id); err != nil {
			return err
		}
		s.unload(id)
	}
	return errors.Join(errs...)
}

// finish marks set id finished, so schedulers starting later skip it.
func (s *Scheduler) finish(ctx context.Context, id string) error {
	_, err := update(ctx, s.kv, setKey(id), func(set *Set, found bool) (bool, func(context.Context) error, error) {
		if !found || set.Finished != nil {
			return false, nil, nil
		}
		now := time.Now().UTC()
		set.Finished = &now
		return true, nil, nil
	})
	return err
}

// blockedBy is the failed derivation an input of drv failed or is
// blocked by, or "".
func blockedBy(g *Graph, states map[string]*State, drv string) string {
	for in := range g.Node(drv).Inputs {
		switch st := states[in]; st.Status {
		case Failed:
			return in
		case Blocked:
			return st.BlockedBy
		}
	}
	return ""
}

// states reads every state record of a set, by .drv path.
func (s *Scheduler) states(ctx context.Context, ls *loadedSet) (map[string]*State, error) {
	m, err := list[State](ctx, s.kv, statePrefix(ls.set.ID))
	if err != nil {
		return nil, err
	}
	out := make(map[string]*State, len(m))
	for k, st := range m {
		if ls.g.Node(st.DrvPath) == nil || !strings.HasSuffix(k, "."+hashOf(st.DrvPath)) {
			return nil, fmt.Errorf("farm: %w: state %s names %s", ErrInvalid, k, st.DrvPath)
		}
		out[st.DrvPath] = st
	}
	if len(out) != ls.g.Len() {
		return nil, fmt.Errorf("farm: %w: set %s has %d states for %d derivations", ErrInvalid, ls.set.ID, len(out), ls.g.Len())
	}
	return out, nil
}
