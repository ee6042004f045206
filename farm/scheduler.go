package farm

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
	// RequeueAfter is how long a request must be seen gone from the work
	// queue, with no build and no failure of its replica recorded, before
	// it is sent again (see requeue); DefaultRequeueAfter when 0. It
	// leaves a failure report time to be handled.
	RequeueAfter time.Duration
	// BuiltTimeout is how long a replica whose request is gone may wait
	// on a claim that says it was built (a builder's word) before its
	// request is sent again to another builder; DefaultClaimTimeout when
	// 0.
	BuiltTimeout time.Duration
	// HoldTimeout bounds how long one builder can keep a request from
	// the others without building it: a request seen still queued for
	// HoldTimeout, and then seen held (by a claim, or by a worker that
	// has it without one) for HoldTimeout more, is sent again past the
	// builders seen holding it (see requeue). Both counts survive a
	// restart: the first runs from when the server stored the request,
	// the second from State.Held.
	// A worker that holds a request tells the server it is in progress
	// for as long as it likes, so the server never takes it back. An
	// honest build shorter than HoldTimeout is never displaced; a longer
	// one may get a second builder. DefaultHoldTimeout when 0.
	HoldTimeout time.Duration
	Logger      *slog.Logger
}

// DefaultHoldTimeout is SchedulerConfig.HoldTimeout's default: a day,
// longer than the builds of most derivations on slow machines.
const DefaultHoldTimeout = 24 * time.Hour

// DefaultRequeueAfter is SchedulerConfig.RequeueAfter's default.
const DefaultRequeueAfter = 5 * time.Minute

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

	// gone is since when each request has been found gone from the
	// work queue (requeue), by this process.
	gone firstSeen
	// queued is when requeue last asked who holds each request queued
	// long (firstSeen.due); since when it has been queued and held is
	// the server's time and the state's (State.Held).
	queued firstSeen
	// deniedDelivered says once that the pusher may not ask the farm's
	// consumers what they delivered.
	deniedDelivered sync.Once

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
	cfg.RequeueAfter = cmp.Or(cfg.RequeueAfter, DefaultRequeueAfter)
	cfg.BuiltTimeout = cmp.Or(cfg.BuiltTimeout, DefaultClaimTimeout)
	cfg.HoldTimeout = cmp.Or(cfg.HoldTimeout, DefaultHoldTimeout)
	if cfg.ResyncEvery < 0 || cfg.Concurrency < 0 || cfg.RequeueAfter < 0 || cfg.BuiltTimeout < 0 || cfg.HoldTimeout < 0 {
		return nil, errors.New("farm: scheduler: negative ResyncEvery, Concurrency, RequeueAfter, BuiltTimeout or HoldTimeout")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Scheduler{cfg: cfg, log: log, sets: map[string]*loadedSet{},
		producers: map[string][]ref{}, needers: map[string][]ref{}, gone: seenFor(cfg.ResyncEvery),
		queued: seenFor(cfg.ResyncEvery)}, nil
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
	sets, err := list[Set](ctx, s.cfg.Conn, setPrefix)
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
	nodes, err := list[Node](ctx, s.cfg.Conn, nodePrefix(set.ID))
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
