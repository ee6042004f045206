// Package server is Provenix's embedded nats-server with JetStream, for
// single-host setups (`provenix up`) and tests: its listeners (NATS,
// WebSocket for builders behind firewalls, leaf nodes for a site's own
// nats-server), its token and its storage health. New fills defaults,
// Open starts it, Close stops it.
//
// It knows nothing of the queue client's streams and subjects, and does
// not import package queue, so that queue's own tests run against this
// very server. The one thing they share, how large a message must fit, is
// MinPayload, which queue's TestServerFitsMessages checks against the
// client's limits. The least-privilege permissions of each role stay in
// queue (perms.go): they follow the client's calls and subject names, and
// tenant/ writes them into an operator's nats-server accounts.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	natsd "github.com/nats-io/nats-server/v2/server"
)

const (
	// serverStartTimeout bounds Open when its context has no earlier deadline.
	serverStartTimeout = 10 * time.Second
	// defaultMaxPayload is nats-server's own default, restated so New can
	// check it against MinPayload.
	defaultMaxPayload = 1 << 20
	// MinPayload is the least MaxPayload New accepts. The queue client's
	// largest message is a result of queue.MaxResultSize (256 KiB) plus 4
	// KiB of headers, and it must stay below the broker's limit so that an
	// oversized result is refused by Provenix with a reason, not by the
	// broker; a staging chunk (128 KiB) is smaller. queue's
	// TestServerFitsMessages fails if the client's limits outgrow this.
	MinPayload = 256<<10 + 4<<10 + 1
	// streamMaxBufferedSize is the embedded server's per-stream ingest queue
	// limit (max_buffered_size). Past it the server answers publishes with
	// 429 Too Many Requests, which is what big Object Store puts ran into.
	// queue's Stage keeps its own window far below this (64 chunks), so the
	// headroom is for several concurrent Stage calls plus other publishers.
	// nats-server's default is 128 MiB; we raise it, never lower it.
	streamMaxBufferedSize = 512 << 20
)

// Config configures an embedded nats-server with JetStream.
type Config struct {
	// StoreDir is JetStream's storage directory. Required: a server that
	// silently stored results in a temporary directory would lose them.
	StoreDir string
	// Host to listen on; "127.0.0.1" when empty.
	Host string
	// Port to listen on; 0 picks a free port (see ClientURL).
	Port int
	// Token, when set, is the authorization token every client must present.
	Token string
	// MaxPayload is the largest message the server accepts; 1 MiB when 0.
	// It must be at least MinPayload.
	MaxPayload int32
	// Logger receives the server's log lines; nil discards them.
	Logger *slog.Logger
	// WebSocket, when set, also accepts clients over WebSocket, for
	// builders behind firewalls that only let HTTPS out (wss on 443).
	WebSocket *WebSocketConfig
	// LeafNode, when set, also accepts leaf node connections: a site's
	// own nats-server relays its workers' traffic over one outbound link.
	LeafNode *LeafNodeConfig
	// LogLevel is the least severe of the server's lines passed to Logger
	// (slog.LevelWarn keeps its startup notices out); Info when zero.
	LogLevel slog.Level
}

// WebSocketConfig is the embedded server's WebSocket listener. Clients
// authenticate with Config.Token, as on the NATS port.
type WebSocketConfig struct {
	// Host to listen on; Config.Host when empty.
	Host string
	// Port to listen on; 0 picks a free port (see WebSocketURL).
	Port int
	// CertFile and KeyFile are the PEM certificate (chain) and key of the
	// wss:// listener. Required unless NoTLSUnsafe.
	CertFile string
	KeyFile  string
	// NoTLSUnsafe serves plain ws:// — the token then crosses the wire in
	// clear, so it is refused unless Host is a loopback address, where a
	// reverse proxy on the same machine terminates TLS (or a test runs).
	NoTLSUnsafe bool
}

// LeafNodeUser is the user name leaf nodes authenticate with, the password
// being Config.Token: nats-leaf://leaf:TOKEN@host:port.
const LeafNodeUser = "leaf"

// LeafNodeConfig is the embedded server's leaf node listener. A leaf
// authenticates as LeafNodeUser with Config.Token as its password
// and joins the same account as clients, so its workers' JetStream calls
// reach this server's streams. Leaf nodes can also come in over the
// WebSocket listener (remote URL wss://host/...): this listener must be
// configured for that too, as nats-server only accepts leaf nodes when it
// has one.
type LeafNodeConfig struct {
	// Host to listen on; Config.Host when empty.
	Host string
	// Port to listen on; 0 picks a free port (see LeafNodeURL).
	Port int
	// CertFile and KeyFile, when set, make the listener require TLS.
	CertFile string
	KeyFile  string
	// Domain names this server's JetStream; DefaultJetStreamDomain when
	// empty. A leaf without JetStream reaches it by listing it in its
	// config as default_js_domain: {"$G": "<Domain>"}, see
	// docs/firewalled-workers.md.
	Domain string
}

// DefaultJetStreamDomain is the JetStream domain of a server with a leaf
// node listener.
const DefaultJetStreamDomain = "provenix"

// Server is an embedded nats-server with JetStream, for single-host setups
// and tests. New fills defaults, Open starts it, Close stops it.
type Server struct {
	cfg  Config
	ns   *natsd.Server
	opts *natsd.Options
	logs *serverLogger
}

// New validates cfg and fills its defaults. It does not start anything.
func New(cfg Config) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("queue: server: StoreDir is required")
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("queue: server: port %d out of range", cfg.Port)
	}
	if cfg.MaxPayload == 0 {
		cfg.MaxPayload = defaultMaxPayload
	}
	if cfg.MaxPayload < MinPayload {
		return nil, fmt.Errorf("queue: server: MaxPayload %d must exceed MaxResultSize plus headers: at least %d (MinPayload)",
			cfg.MaxPayload, MinPayload)
	}
	if ws := cfg.WebSocket; ws != nil {
		c := *ws
		if c.Host == "" {
			c.Host = cfg.Host
		}
		if err := checkListener("websocket", c.Port, c.CertFile, c.KeyFile); err != nil {
			return nil, err
		}
		switch {
		case c.NoTLSUnsafe && c.CertFile != "":
			return nil, errors.New("queue: server: websocket: NoTLSUnsafe and a certificate are exclusive")
		case c.NoTLSUnsafe && !isLoopback(c.Host):
			return nil, fmt.Errorf("queue: server: websocket: plain ws:// only on a loopback address (a local TLS proxy in front), not %q: give a certificate and key for wss://", c.Host)
		case !c.NoTLSUnsafe && c.CertFile == "":
			return nil, errors.New("queue: server: websocket: a TLS certificate and key are required (wss://)")
		}
		cfg.WebSocket = &c
	}
	if ln := cfg.LeafNode; ln != nil {
		c := *ln
		if c.Host == "" {
			c.Host = cfg.Host
		}
		if err := checkListener("leafnode", c.Port, c.CertFile, c.KeyFile); err != nil {
			return nil, err
		}
		if c.Domain == "" {
			c.Domain = DefaultJetStreamDomain
		}
		if err := validDomain(c.Domain); err != nil {
			return nil, err
		}
		cfg.LeafNode = &c
	}
	return &Server{cfg: cfg}, nil
}

// checkListener checks what an extra listener's fields can say alone.
func checkListener(name string, port int, cert, key string) error {
	if port < 0 || port > 65535 {
		return fmt.Errorf("queue: server: %s: port %d out of range", name, port)
	}
	if (cert == "") != (key == "") {
		return fmt.Errorf("queue: server: %s: TLS needs both a certificate and a key file", name)
	}
	return nil
}

// validDomain applies nats-server's rule for a JetStream domain (one
// subject token), which it would otherwise only apply in Open.
func validDomain(d string) error {
	if strings.ContainsAny(d, ".*>") || !natsd.IsValidSubject("$JS."+d+".API") {
		return fmt.Errorf("queue: server: leafnode: JetStream domain %q: invalid name (one NATS subject token: no '.', '*', '>' or white space)", d)
	}
	return nil
}

// isLoopback reports whether host names only this machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// tlsConfig loads a listener's certificate with nats-server's own TLS
// defaults (TLS 1.2+, its cipher choice).
func tlsConfig(name, cert, key string) (*tls.Config, error) {
	if cert == "" {
		return nil, nil
	}
	tc, err := natsd.GenTLSConfig(&natsd.TLSConfigOpts{CertFile: cert, KeyFile: key})
	if err != nil {
		return nil, fmt.Errorf("queue: server: %s TLS: %w", name, err)
	}
	return tc, nil
}

// listenPort maps our "0 picks a free port" onto nats-server's.
func listenPort(p int) int {
	if p == 0 {
		return natsd.RANDOM_PORT
	}
	return p
}

// Open starts the server and waits until it accepts connections, bounded by
// ctx and by 10 s.
func (s *Server) Open(ctx context.Context) error {
	if s.ns != nil {
		return errors.New("queue: server: already open")
	}
	opts := &natsd.Options{
		Host:                  s.cfg.Host,
		Port:                  listenPort(s.cfg.Port),
		Authorization:         s.cfg.Token,
		MaxPayload:            s.cfg.MaxPayload,
		JetStream:             true,
		StoreDir:              s.cfg.StoreDir,
		StreamMaxBufferedSize: streamMaxBufferedSize,
		// The embedding process owns signals and logging.
		NoSigs: true,
		NoLog:  true,
	}
	if ws := s.cfg.WebSocket; ws != nil {
		tc, err := tlsConfig("websocket", ws.CertFile, ws.KeyFile)
		if err != nil {
			return err
		}
		// No Token here: the websocket block's own auth would override
		// the server's, and one token for every door is what we want.
		opts.Websocket = natsd.WebsocketOpts{Host: ws.Host, Port: listenPort(ws.Port), TLSConfig: tc, NoTLS: ws.NoTLSUnsafe}
	}
	if ln := s.cfg.LeafNode; ln != nil {
		tc, err := tlsConfig("leafnode", ln.CertFile, ln.KeyFile)
		if err != nil {
			return err
		}
		opts.LeafNode = natsd.LeafNodeOpts{Host: ln.Host, Port: listenPort(ln.Port), TLSConfig: tc}
		// nats-server denies $JS.API.> across a leaf connection unless
		// the JetStream is named: with a domain, a leaf without JetStream
		// of its own maps its clients' $JS.API.> to $JS.<domain>.API.>
		// (its default_js_domain), which crosses the link and which this
		// server maps back. Clients connected here directly are unaffected.
		opts.JetStreamDomain = ln.Domain
		if s.cfg.Token != "" {
			// A user and password, not a bare token: older leaf servers
			// (Debian's 2.9) send a URL's lone user part as a user name,
			// never as a token. No Account: the leaf joins the global
			// account, where the streams live.
			opts.LeafNode.Username, opts.LeafNode.Password = LeafNodeUser, s.cfg.Token
		}
	}
	ns, err := natsd.NewServer(opts)
	if err != nil {
		return fmt.Errorf("queue: server: %w", err)
	}
	// Always install a logger, even when the caller wants none: Start
	// reports a JetStream failure only through Fatalf, and we want that
	// message in Open's error instead of a bare "not ready".
	s.logs = &serverLogger{log: s.cfg.Logger, min: s.cfg.LogLevel}
	ns.SetLoggerV2(s.logs, false, false, false)
	go ns.Start()

	ctx, cancel := context.WithTimeout(ctx, serverStartTimeout)
	defer cancel()
	for !ns.ReadyForConnections(50 * time.Millisecond) {
		if msg := s.logs.fatal(); msg != "" {
			ns.Shutdown()
			return fmt.Errorf("queue: server: %s", msg)
		}
		if ctx.Err() != nil {
			ns.Shutdown()
			return fmt.Errorf("queue: server: not ready for connections: %w", context.Cause(ctx))
		}
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		return fmt.Errorf("queue: server: JetStream did not start: %s", s.logs.fatal())
	}
	s.ns, s.opts = ns, opts
	return nil
}

// ClientURL is the URL clients connect to (nats://host:port); empty before
// Open. The token is not part of it.
func (s *Server) ClientURL() string {
	if s.ns == nil {
		return ""
	}
	return s.ns.ClientURL()
}

// WebSocketURL is the URL WebSocket clients connect to (wss://host:port,
// or ws:// without TLS); empty before Open or without a WebSocket listener.
func (s *Server) WebSocketURL() string {
	if s.ns == nil || s.cfg.WebSocket == nil {
		return ""
	}
	return s.ns.WebsocketURL()
}

// LeafNodeURL is the URL a leaf node's remote points at
// (nats-leaf://host:port); empty before Open or without a leaf listener.
func (s *Server) LeafNodeURL() string {
	if s.ns == nil || s.cfg.LeafNode == nil {
		return ""
	}
	// nats-server keeps the Options we gave it and wrote the picked port
	// back before it was ready for connections.
	return "nats-leaf://" + net.JoinHostPort(s.opts.LeafNode.Host, strconv.Itoa(s.opts.LeafNode.Port))
}

// JetStreamDomain is the server's JetStream domain: empty unless it has a
// leaf node listener.
func (s *Server) JetStreamDomain() string {
	if s.cfg.LeafNode == nil {
		return ""
	}
	return s.cfg.LeafNode.Domain
}

// ErrStorageFull: the server's disk ran out of space under JetStream (see
// StorageError). The client's queue.ErrStorageFull is the other case, a
// limit the server answers publishes with.
var ErrStorageFull = errors.New("queue: server: JetStream storage full")

// NATS is the running nats-server, for monitoring (Connz, NumLeafNodes) as
// queue.Conn.NATS is the client's connection; nil before Open and after
// Close.
func (s *Server) NATS() *natsd.Server { return s.ns }

// StorageError is nil while the server can write its storage. Once a
// write failed because the disk is full, it returns an error matching
// ErrStorageFull with the server's message. The server then no longer
// answers publishes to that stream, not even with an error (clients see
// timeouts), and keeps it so after space is freed: nats-server marks the
// stream's store as failed until a restart, which recovers what was acked.
func (s *Server) StorageError() error {
	if s.logs == nil {
		return nil
	}
	if msg := s.logs.storage(); msg != "" {
		return fmt.Errorf("%w: disk full: %s; free space, then restart the server", ErrStorageFull, msg)
	}
	return nil
}

// Close shuts the server down and waits until it has, bounded by ctx.
// Clients see a disconnect; JetStream data stays in StoreDir.
func (s *Server) Close(ctx context.Context) error {
	if s.ns == nil {
		return nil
	}
	ns := s.ns
	s.ns = nil
	done := make(chan struct{})
	go func() {
		ns.Shutdown()
		ns.WaitForShutdown()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("queue: server: shutdown: %w", ctx.Err())
	}
}

// serverLogger adapts nats-server's printf logger to slog and remembers
// the first fatal message (which must not exit the embedding process).
type serverLogger struct {
	log *slog.Logger
	min slog.Level

	mu        sync.Mutex
	fatalText string
	// storageText is the first line reporting a write that failed for
	// lack of disk space (see Server.StorageError).
	storageText string
}

func (l *serverLogger) storage() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.storageText
}

func (l *serverLogger) fatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatalText
}

func (l *serverLogger) emit(level slog.Level, format string, v []any) {
	msg := fmt.Sprintf(format, v...)
	if level >= slog.LevelWarn && strings.Contains(msg, "no space left") {
		// nats-server's own test for an out-of-space error (isOutOfSpaceErr).
		l.mu.Lock()
		if l.storageText == "" {
			l.storageText = msg
		}
		l.mu.Unlock()
	}
	if l.log != nil && level >= l.min {
		l.log.Log(context.Background(), level, msg, "component", "nats-server")
	}
}

func (l *serverLogger) Noticef(format string, v ...any) { l.emit(slog.LevelInfo, format, v) }
func (l *serverLogger) Warnf(format string, v ...any)   { l.emit(slog.LevelWarn, format, v) }
func (l *serverLogger) Errorf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l *serverLogger) Debugf(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }
func (l *serverLogger) Tracef(format string, v ...any)  { l.emit(slog.LevelDebug-4, format, v) }
func (l *serverLogger) Fatalf(format string, v ...any) {
	l.mu.Lock()
	if l.fatalText == "" {
		l.fatalText = fmt.Sprintf(format, v...)
	}
	l.mu.Unlock()
	l.emit(slog.LevelError, format, v)
}
