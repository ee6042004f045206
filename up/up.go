// Package up is Provenix in one process: an embedded NATS server with
// JetStream on disk (or an external NATS), a cache pusher and the binary
// cache's HTTP server, all under one data directory whose keys and policy
// are generated on first start.
package up

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/forgestatus"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/s3"
	"codeberg.org/provenix/provenix/cache-push/wire"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/metrics"
	"codeberg.org/provenix/provenix/oci"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/usage"
	"codeberg.org/provenix/provenix/vsa"
)

// Defaults of a fresh data directory.
const (
	DefaultTenant    = "default"
	DefaultBuilderID = "local"
	DefaultGroup     = "cache"
	DefaultListen    = "127.0.0.1:8080"
	cacheKeyName     = "provenix-local-1"
)

// Config configures a Stack.
type Config struct {
	DataDir string
	// Listen is the cache HTTP server's address; ":0" picks a free port.
	Listen string
	// NATSURL selects an external NATS server; empty embeds one.
	NATSURL string
	// NATSListen is the embedded server's host:port; empty picks a free
	// port on 127.0.0.1.
	NATSListen string
	// MetricsListen, when set, is a separate address for /metrics and
	// /status; empty serves them on Listen, next to the cache.
	MetricsListen string
	// NATSOptions are used to connect to an external NATS server.
	NATSOptions []queue.Option
	// WebSocketListen, when set, is the embedded server's WebSocket
	// address (say 0.0.0.0:443) for builders that may only dial out over
	// HTTPS; ":0" picks a free port. It serves wss:// with WebSocketCert
	// and WebSocketKey (PEM files), or plain ws:// with WebSocketNoTLS,
	// which only a loopback address accepts (a TLS proxy in front).
	WebSocketListen string
	WebSocketCert   string
	WebSocketKey    string
	WebSocketNoTLS  bool
	// LeafNodeListen, when set, is the embedded server's leaf node address
	// (nats-server's usual port is 7422), with optional TLS. Leaf nodes
	// can also come in over the WebSocket listener, which needs this set.
	LeafNodeListen string
	LeafNodeCert   string
	LeafNodeKey    string
	// S3, when set, keeps the binary cache in an S3 bucket instead of the
	// data directory's cache/: the pusher writes there and the cache server
	// serves from there. Open checks that the bucket exists, and the
	// store removes abandoned uploads on the schedule of S3.StaleEvery and
	// S3.StaleAge until Close.
	S3     *s3.Options
	Tenant string
	Group  string

	// Chunking and SharedChunks are wire.StoreOptions': how NAR files
	// are stored.
	Chunking, SharedChunks string
	// Flush is wire.StoreOptions': how the cache directory makes its
	// writes durable.
	Flush string

	// Concurrency is how many results the pusher handles at once; its
	// store's default (wire.Store.DefaultConcurrency) when 0.
	Concurrency int
	// UsageMaxAge is how long usage records are kept
	// (queue.DefaultUsageMaxAge when 0): the window bills can cover.
	UsageMaxAge time.Duration
	// VSA is how the pusher signs verification summaries; without a key,
	// key file or keyless options, with the data directory's keys/vsa.
	VSA vsa.SignerOptions
	// PublicURL is the cache's public base URL the summaries name
	// (cachepush.Config.CacheURL); relative to the cache when empty.
	PublicURL string
	Logger    *slog.Logger
	// Forges, when set, are the forges the pusher shows its verdicts on
	// as commit statuses (cache-push/forgestatus).
	Forges *forgestatus.Forges
}

// Stack is a running all-in-one Provenix.
type Stack struct {
	cfg      Config
	paths    Paths
	log      *slog.Logger
	nats     *natsserver.Server
	conn     *queue.Conn
	pusher   *cachepush.Pusher
	farm     *farm.Scheduler
	store    *wire.Store
	httpSrv  *http.Server
	httpLn   net.Listener
	natsURL  string
	token    string
	httpDone chan error
	metrics  *metrics.Metrics
	served   *usage.ServeMeter
	started  time.Time
	// metricsSrv is set when /metrics and /status have their own listener.
	metricsSrv  *http.Server
	metricsLn   net.Listener
	metricsDone chan error
}

// New fills defaults; Open starts it.
func New(cfg Config) (*Stack, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir()
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.Tenant == "" {
		cfg.Tenant = DefaultTenant
	}
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = abs
	s := &Stack{cfg: cfg, paths: Paths{Dir: abs}, log: cfg.Logger, metrics: metrics.New()}
	s.metrics.GaugeFunc("pusher_consumer_lag", "Results the pusher group's durable consumer has not delivered yet (num pending).", s.consumerLag)
	return s, nil
}

// Paths is the stack's data directory layout.
func (s *Stack) Paths() Paths { return s.paths }

// NATSURL is the URL builders connect to.
func (s *Stack) NATSURL() string { return s.natsURL }

// WebSocketURL is the URL firewalled builders connect to (wss://host:port);
// empty without Config.WebSocketListen.
func (s *Stack) WebSocketURL() string {
	if s.nats == nil {
		return ""
	}
	return s.nats.WebSocketURL()
}

// LeafNodeURL is the URL a site's leaf node points its remote at
// (nats-leaf://host:port); empty without Config.LeafNodeListen.
func (s *Stack) LeafNodeURL() string {
	if s.nats == nil {
		return ""
	}
	return s.nats.LeafNodeURL()
}

// JetStreamDomain is the embedded server's JetStream domain, which leaf
// nodes without JetStream name as their default_js_domain; empty without
// a leaf node listener.
func (s *Stack) JetStreamDomain() string {
	if s.nats == nil {
		return ""
	}
	return s.nats.JetStreamDomain()
}

// NATSToken is the embedded server's token ("" for an external server).
func (s *Stack) NATSToken() string { return s.token }

// CacheURL is the binary cache's base URL.
func (s *Stack) CacheURL() string { return "http://" + s.httpLn.Addr().String() }

// StatusURL is the URL of the stack's /status endpoint.
func (s *Stack) StatusURL() string { return s.endpointBase() + StatusPath }

// MetricsURL is the URL of the stack's Prometheus endpoint.
func (s *Stack) MetricsURL() string { return s.endpointBase() + MetricsPath }

func (s *Stack) endpointBase() string {
	if s.metricsLn != nil {
		return "http://" + s.metricsLn.Addr().String()
	}
	return s.CacheURL()
}

// Metrics is the stack's registry.
func (s *Stack) Metrics() *metrics.Metrics { return s.metrics }

// Store is the cache's storage: a *local.Store under the data directory,
// or an *s3.Store when Config.S3 is set.
func (s *Stack) Store() store.Store {
	if s.store == nil {
		return nil
	}
	return s.store.Store
}

// Conn is the stack's own NATS connection.
func (s *Stack) Conn() *queue.Conn { return s.conn }

// Open starts NATS (embedded unless configured otherwise), the pusher and
// the HTTP server, and writes up.json. On error everything started is
// stopped again.
func (s *Stack) Open(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			s.Close(cctx)
		}
	}()
	created, err := Init(s.paths)
	if err != nil {
		return fmt.Errorf("init %s: %w", s.paths.Dir, err)
	}
	s.started = time.Now()
	for _, c := range created {
		s.log.Info("created", "file", c)
	}
	pol, err := policy.Load(s.paths.Policy())
	if err != nil {
		return err
	}
	cacheKey, err := cachepush.LoadKey(s.paths.CacheKey())
	if err != nil {
		return err
	}
	vo := s.cfg.VSA
	if vo.Key == nil && vo.KeyFile == "" && vo.Keyless == nil {
		vo.KeyFile = s.paths.VSAKey()
	}
	vsaSigner, err := vsa.NewSigner(vo)
	if err != nil {
		return err
	}

	opts := s.cfg.NATSOptions
	s.natsURL = s.cfg.NATSURL
	if s.natsURL != "" && (s.cfg.WebSocketListen != "" || s.cfg.LeafNodeListen != "") {
		return errors.New("websocket and leaf node listeners belong to the embedded NATS server: with an external one, configure them in its own config (docs/firewalled-workers.md)")
	}
	if s.natsURL == "" {
		tok, err := os.ReadFile(s.paths.NATSToken())
		if err != nil {
			return err
		}
		s.token = string(tok)
		scfg := natsserver.Config{StoreDir: s.paths.NATS(), Token: s.token}
		if s.cfg.NATSListen != "" {
			if scfg.Host, scfg.Port, err = splitListen("nats", s.cfg.NATSListen); err != nil {
				return err
			}
		}
		if scfg.WebSocket, scfg.LeafNode, err = s.cfg.extraListeners(); err != nil {
			return err
		}
		// The server's warnings and errors (a disk full under JetStream,
		// recovery trouble after a crash) go to our log; its startup
		// notices do not.
		scfg.Logger, scfg.LogLevel = s.log, slog.LevelWarn
		s.nats, err = natsserver.New(scfg)
		if err != nil {
			return err
		}
		if err := s.nats.Open(ctx); err != nil {
			return err
		}
		s.natsURL = s.nats.ClientURL()
		opts = append(opts, queue.WithToken(s.token))
	}
	opts = append(opts, queue.WithName("provenix-up"), queue.WithLogger(s.log))
	if s.conn, err = queue.Connect(ctx, s.natsURL, opts...); err != nil {
		return err
	}
	if err := s.conn.EnsureStreams(ctx, queue.StreamOptions{UsageMaxAge: s.cfg.UsageMaxAge}); err != nil {
		return err
	}
	if err := s.openStore(ctx); err != nil {
		return err
	}
	if s.nats != nil {
		// The embedded server started with this process, so whatever its
		// pusher group had in flight belonged to a process that is gone
		// (killed, crashed): release it now rather than a whole AckWait
		// later. An external server may have live members elsewhere.
		n, err := s.conn.ReleaseDeliveries(ctx, s.cfg.Group)
		if err != nil {
			return err
		}
		if n > 0 {
			s.log.Info("released results the previous run left unacknowledged", "count", n, "group", s.cfg.Group)
		}
	}
	s.pusher, err = wire.StartPusher(ctx, wire.PusherOptions{
		Conn: s.conn, Store: s.store.Store, Policy: pol, CacheKey: cacheKey, VSA: vsaSigner, CacheURL: s.cfg.PublicURL, Logger: s.log, Metrics: s.metrics.Pusher,
		Tenant: s.cfg.Tenant, Group: s.cfg.Group, Concurrency: cmp.Or(s.cfg.Concurrency, s.store.DefaultConcurrency()), Forges: s.cfg.Forges,
	})
	if err != nil {
		return err
	}
	if err := s.openFarm(ctx, pol); err != nil {
		// The cache works without the farm (an account that may not
		// make its stream, say): say so, and go on.
		s.log.Warn("farm scheduler not started; 'provenix submit' to this stack will wait", "err", err)
	}

	s.httpLn, err = net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("cache server: %w", err)
	}
	ops := http.NewServeMux()
	ops.Handle(MetricsPath, s.metrics.Handler())
	ops.HandleFunc(StatusPath, s.serveStatus)
	// The registry signs images' summaries with the pusher's VSA key; a
	// keyless pusher's images get none (oci.ErrKeylessVSA).
	regVSA := vsaSigner
	if regVSA.PublicKey() == nil {
		regVSA = nil
		s.log.Warn("OCI images get no verification summary: the pusher signs keylessly")
	}
	reg, err := oci.New(s.store.Store, oci.Options{Logger: s.log, VSA: regVSA, PublicURL: s.cfg.PublicURL})
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	// What the cache serves is recorded per reader, every minute.
	rec, err := usage.NewPublisher(s.conn)
	if err != nil {
		return err
	}
	if s.served, err = usage.NewServeMeter(usage.ServeOptions{Tenant: s.cfg.Tenant, Recorder: rec, Logger: s.log}); err != nil {
		return err
	}
	s.served.Start(context.WithoutCancel(ctx)) // until Close
	cache := s.withFarmPage(server.Handler(s.store.Store, server.Options{Logger: s.log, Metrics: s.metrics.HTTP, Served: s.served, Registry: reg}))
	var handler http.Handler = cache
	if s.cfg.MetricsListen != "" {
		if s.metricsLn, err = net.Listen("tcp", s.cfg.MetricsListen); err != nil {
			return fmt.Errorf("metrics server: %w", err)
		}
		s.metricsSrv = &http.Server{Handler: ops, ReadHeaderTimeout: 10 * time.Second}
		s.metricsDone = make(chan error, 1)
		go func() { s.metricsDone <- s.metricsSrv.Serve(s.metricsLn) }()
	} else {
		ops.Handle("/", cache)
		handler = ops
	}
	s.httpSrv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
	}
	s.httpDone = make(chan error, 1)
	go func() { s.httpDone <- s.httpSrv.Serve(s.httpLn) }()

	rt, _ := json.MarshalIndent(Runtime{PID: os.Getpid(), NATSURL: s.natsURL, CacheURL: s.CacheURL(), Tenant: s.cfg.Tenant,
		StatusURL: s.StatusURL(), WebSocketURL: s.WebSocketURL(), LeafNodeURL: s.LeafNodeURL(), JetStreamDomain: s.JetStreamDomain()}, "", "  ")
	tmp := s.paths.Runtime() + ".tmp"
	if err := os.WriteFile(tmp, rt, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.paths.Runtime()); err != nil {
		return err
	}
	s.log.Info("up", "nats", queue.RedactURL(s.natsURL), "cache", s.CacheURL(), "metrics", s.MetricsURL(), "data", s.paths.Dir)
	return nil
}

// extraListeners is the embedded server's WebSocket and leaf node
// configuration, nil where not asked for.
func (c *Config) extraListeners() (*natsserver.WebSocketConfig, *natsserver.LeafNodeConfig, error) {
	var ws *natsserver.WebSocketConfig
	var ln *natsserver.LeafNodeConfig
	if c.WebSocketListen != "" {
		host, port, err := splitListen("websocket", c.WebSocketListen)
		if err != nil {
			return nil, nil, err
		}
		ws = &natsserver.WebSocketConfig{Host: host, Port: port, CertFile: c.WebSocketCert, KeyFile: c.WebSocketKey, NoTLSUnsafe: c.WebSocketNoTLS}
	} else if c.WebSocketCert != "" || c.WebSocketKey != "" || c.WebSocketNoTLS {
		return nil, nil, errors.New("websocket TLS options need a websocket listen address")
	}
	if c.LeafNodeListen != "" {
		host, port, err := splitListen("leafnode", c.LeafNodeListen)
		if err != nil {
			return nil, nil, err
		}
		ln = &natsserver.LeafNodeConfig{Host: host, Port: port, CertFile: c.LeafNodeCert, KeyFile: c.LeafNodeKey}
	} else if c.LeafNodeCert != "" || c.LeafNodeKey != "" {
		return nil, nil, errors.New("leaf node TLS options need a leaf node listen address")
	}
	return ws, ln, nil
}

// splitListen parses a host:port listen address. An empty host stays
// empty: the embedded server then uses 127.0.0.1 (or, for its extra
// listeners, the NATS listener's host), so exposing it takes an explicit
// 0.0.0.0.
func splitListen(what, addr string) (string, int, error) {
	h, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%s listen address: %w", what, err)
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%s listen address %q: port must be a number from 0 to 65535", what, addr)
	}
	return h, port, nil
}

// openStore opens the cache's store: the data directory's cache/, or the
// S3 bucket, checked and swept of abandoned uploads until Close.
func (s *Stack) openStore(ctx context.Context) error {
	o := wire.StoreOptions{Dir: s.paths.Cache(), Sweep: true, Chunking: s.cfg.Chunking, SharedChunks: s.cfg.SharedChunks, Flush: s.cfg.Flush}
	if s.cfg.S3 != nil {
		s3o := *s.cfg.S3
		if s3o.Logger == nil {
			s3o.Logger = s.log
		}
		o.Dir, o.S3 = "", &s3o
	}
	st, err := wire.OpenStore(ctx, o)
	if err != nil {
		return err
	}
	s.store = st
	if s.cfg.S3 != nil {
		s.log.Info("s3 cache", "endpoint", s.cfg.S3.Endpoint, "bucket", s.cfg.S3.Bucket, "prefix", s.cfg.S3.Prefix)
	}
	return nil
}

// Close stops the HTTP server, lets in-flight pushes finish (until ctx is
// done), then closes NATS. Unacknowledged results are redelivered on the
// next start: nothing acknowledged is lost.
func (s *Stack) Close(ctx context.Context) error {
	var errs []error
	if s.httpSrv != nil {
		errs = append(errs, s.httpSrv.Shutdown(ctx))
		<-s.httpDone
		s.httpSrv = nil
	}
	if s.metricsSrv != nil {
		errs = append(errs, s.metricsSrv.Shutdown(ctx))
		<-s.metricsDone
		s.metricsSrv = nil
	}
	if s.served != nil {
		// After the HTTP server: what it served last is in the record.
		errs = append(errs, s.served.Close(ctx))
		s.served = nil
	}
	if s.farm != nil {
		errs = append(errs, s.farm.Close(ctx))
		s.farm = nil
	}
	if s.pusher != nil {
		errs = append(errs, s.pusher.Close(ctx))
		s.pusher = nil
	}
	if s.store != nil {
		// It stays readable (Store) after Close; Close stops its sweeper.
		errs = append(errs, s.store.Close())
	}
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	if s.nats != nil {
		errs = append(errs, s.nats.Close(ctx))
		s.nats = nil
	}
	if rt, err := ReadRuntimeFile(s.paths); err == nil && rt.PID == os.Getpid() {
		os.Remove(s.paths.Runtime())
	}
	return errors.Join(errs...)
}
