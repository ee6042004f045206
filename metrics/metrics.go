// Package metrics holds Provenix's Prometheus collectors, on a registry of
// their own (never the global one), so several stacks in one process (tests)
// do not collide and nothing else leaks into /metrics.
//
// The recording types (*Pusher, *HTTP) are safe to use through a nil
// pointer: a component given no metrics records nothing.
package metrics

import (
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "provenix"

// Metrics is one registry with the collectors of a running stack.
type Metrics struct {
	reg    *prometheus.Registry
	Pusher *Pusher
	HTTP   *HTTP
}

// New returns a registry holding the pusher's and the cache server's
// collectors plus the Go runtime and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Metrics{reg: reg, Pusher: NewPusher(reg), HTTP: NewHTTP(reg)}
}

// Registry is where further collectors (a stack's gauges) go.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// GaugeFunc registers a gauge whose value f computes at each scrape.
func (m *Metrics) GaugeFunc(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help}, f))
}

// Pusher records what a cache pusher does with results.
type Pusher struct {
	received    prometheus.Counter
	published   prometheus.Counter
	rejections  *prometheus.CounterVec
	votes       *prometheus.CounterVec
	quorumWait  prometheus.Histogram
	pushBytes   prometheus.Counter
	pushLatency prometheus.Histogram
	ingestBytes prometheus.Counter
	ingestSecs  prometheus.Counter
	ingestRate  prometheus.Histogram
	waiting     prometheus.Counter
	incomplete  prometheus.Counter
	refCheck    prometheus.Histogram
	deferred    prometheus.Counter

	// A copy of the counts for the status endpoint, which reports them
	// without going through the registry.
	nReceived  atomic.Uint64
	nPublished atomic.Uint64
	nWaiting   atomic.Uint64
	lastPub    atomic.Int64 // unix nanoseconds; 0: none yet
	mu         sync.Mutex
	nRejected  map[string]uint64
}

// NewPusher registers the pusher's collectors on reg.
func NewPusher(reg prometheus.Registerer) *Pusher {
	const sub = "pusher"
	p := &Pusher{
		received: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "results_received_total", Help: "Result messages handled, whatever their outcome."}),
		published: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "results_published_total", Help: "Outputs published into the cache (or confirmed already there)."}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "rejections_total", Help: "Results refused for good, by reason."}, []string{"reason"}),
		votes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "votes_total", Help: "Tallies after a vote, by verdict (pending, agreed, disputed, trusted-only)."}, []string{"verdict"}),
		quorumWait: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub,
			Name: "quorum_wait_seconds", Help: "Time from an output's first vote to its publication.",
			Buckets: prometheus.ExponentialBuckets(0.1, 4, 10)}), // 0.1s .. ~7h
		pushBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "push_bytes_total", Help: "Compressed NAR bytes written to the store."}),
		pushLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub,
			Name: "push_duration_seconds", Help: "Time to write one new cache entry (NAR, provenance, narinfo).",
			Buckets: prometheus.ExponentialBuckets(0.005, 3, 10)}), // 5ms .. ~100s
		ingestBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "ingest_nar_bytes_total", Help: "Uncompressed NAR bytes ingested (hashed and compressed)."}),
		ingestSecs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "ingest_seconds_total", Help: "Time spent ingesting NARs; rate(bytes)/rate(seconds) is the throughput."}),
		ingestRate: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub,
			Name: "ingest_throughput_bytes_per_second", Help: "Uncompressed NAR throughput of each ingest.",
			Buckets: prometheus.ExponentialBuckets(1<<20, 2, 12)}), // 1 MiB/s .. 2 GiB/s
		waiting: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "waiting_total", Help: "Decided outputs stored to wait until their references are visible."}),
		incomplete: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "incomplete_total", Help: "Waiting outputs reported incomplete after the policy's closure timeout."}),
		refCheck: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub,
			Name: "reference_check_seconds", Help: "Time to check that an output's references are visible.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9)}), // 0.1ms .. ~6.5s
		deferred: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "deferred_total", Help: "Results put back for later because their builder, after failures or rejections, held its share of the handlers (a flood)."}),
		nRejected: map[string]uint64{},
	}
	reg.MustRegister(p.received, p.published, p.rejections, p.votes, p.quorumWait,
		p.pushBytes, p.pushLatency, p.ingestBytes, p.ingestSecs, p.ingestRate, p.waiting, p.incomplete, p.refCheck, p.deferred)
	return p
}

// Received counts a result message taken up.
func (p *Pusher) Received() {
	if p == nil {
		return
	}
	p.received.Inc()
	p.nReceived.Add(1)
}

// Published counts an output published (or found already published).
func (p *Pusher) Published() {
	if p == nil {
		return
	}
	p.published.Inc()
	p.nPublished.Add(1)
	p.lastPub.Store(time.Now().UnixNano())
}

// Waiting counts an output stored to wait for its references.
func (p *Pusher) Waiting() {
	if p == nil {
		return
	}
	p.waiting.Inc()
	p.nWaiting.Add(1)
}

// Incomplete counts an output reported incomplete.
func (p *Pusher) Incomplete() {
	if p == nil {
		return
	}
	p.incomplete.Inc()
}

// RefCheck records how long checking an output's references took.
func (p *Pusher) RefCheck(d time.Duration) {
	if p == nil {
		return
	}
	p.refCheck.Observe(d.Seconds())
}

// Deferred counts a result put back for later (a builder over its share).
func (p *Pusher) Deferred() {
	if p == nil {
		return
	}
	p.deferred.Inc()
}

// Rejected counts a result refused for reason.
func (p *Pusher) Rejected(reason string) {
	if p == nil {
		return
	}
	p.rejections.WithLabelValues(reason).Inc()
	p.mu.Lock()
	p.nRejected[reason]++
	p.mu.Unlock()
}

// Vote counts a tally's verdict.
func (p *Pusher) Vote(verdict string) {
	if p == nil {
		return
	}
	p.votes.WithLabelValues(verdict).Inc()
}

// QuorumWait records the time from an output's first vote to its
// publication.
func (p *Pusher) QuorumWait(d time.Duration) {
	if p == nil {
		return
	}
	p.quorumWait.Observe(d.Seconds())
}

// Push records one new cache entry: its compressed NAR size and how long
// writing the entry took.
func (p *Pusher) Push(fileBytes uint64, d time.Duration) {
	if p == nil {
		return
	}
	p.pushBytes.Add(float64(fileBytes))
	p.pushLatency.Observe(d.Seconds())
}

// Ingest records one NAR ingest of narBytes uncompressed bytes.
func (p *Pusher) Ingest(narBytes uint64, d time.Duration) {
	if p == nil {
		return
	}
	p.ingestBytes.Add(float64(narBytes))
	p.ingestSecs.Add(d.Seconds())
	if d > 0 {
		p.ingestRate.Observe(float64(narBytes) / d.Seconds())
	}
}

// PusherStatus is a snapshot of the pusher's counts.
type PusherStatus struct {
	Received        uint64     `json:"received"`
	Published       uint64     `json:"published"`
	LastPublication *time.Time `json:"lastPublication,omitempty"`
	// Waited counts outputs stored to wait for their references.
	Waited     uint64            `json:"waited"`
	Rejections map[string]uint64 `json:"rejections"`
}

// Status returns the counts so far; the zero status for a nil Pusher.
func (p *Pusher) Status() PusherStatus {
	s := PusherStatus{Rejections: map[string]uint64{}}
	if p == nil {
		return s
	}
	s.Received, s.Published, s.Waited = p.nReceived.Load(), p.nPublished.Load(), p.nWaiting.Load()
	if ns := p.lastPub.Load(); ns != 0 {
		t := time.Unix(0, ns).UTC()
		s.LastPublication = &t
	}
	p.mu.Lock()
	for k, v := range p.nRejected {
		s.Rejections[k] = v
	}
	p.mu.Unlock()
	return s
}

// Request kinds of the cache server.
const (
	KindNarinfo = "narinfo"
	KindNAR     = "nar"
	KindOther   = "other"
)

// HTTP records the cache server's requests.
type HTTP struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewHTTP registers the cache server's collectors on reg.
func NewHTTP(reg prometheus.Registerer) *HTTP {
	const sub = "cache_http"
	h := &HTTP{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub,
			Name: "requests_total", Help: "Cache HTTP requests by kind (narinfo, nar, other) and status."}, []string{"kind", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub,
			Name: "request_duration_seconds", Help: "Cache HTTP request duration by kind.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}, []string{"kind"}),
	}
	reg.MustRegister(h.requests, h.duration)
	return h
}

// ObserveRequest records one request; kind is KindNarinfo, KindNAR or
// KindOther (anything else counts as other, bounding the label's values).
func (h *HTTP) ObserveRequest(kind string, status int, d time.Duration) {
	if h == nil {
		return
	}
	if kind != KindNarinfo && kind != KindNAR {
		kind = KindOther
	}
	h.requests.WithLabelValues(kind, strconv.Itoa(status)).Inc()
	h.duration.WithLabelValues(kind).Observe(d.Seconds())
}

// SortedKeys returns m's keys in order, for stable output.
func SortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
