package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

const (
	// serverStartTimeout bounds Open when its context has no earlier deadline.
	serverStartTimeout = 10 * time.Second
	// defaultMaxPayload is nats-server's own default, restated so NewServer
	// can check it against MaxResultSize.
	defaultMaxPayload = 1 << 20
	// streamMaxBufferedSize is the embedded server's per-stream ingest queue
	// limit (max_buffered_size). Past it the server answers publishes with
	// 429 Too Many Requests, which is what big Object Store puts ran into.
	// Stage keeps its own window far below this (stageWindow chunks), so the
	// headroom is for several concurrent Stage calls plus other publishers.
	// nats-server's default is 128 MiB; we raise it, never lower it.
	streamMaxBufferedSize = 512 << 20
)

// ServerConfig configures an embedded nats-server with JetStream.
type ServerConfig struct {
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
	// It must stay above MaxResultSize plus headers, so that an oversized
	// result is refused by Provenix with a reason, not by the broker.
	MaxPayload int32
	// Logger receives the server's log lines; nil discards them.
	Logger *slog.Logger
	// LogLevel is the least severe of the server's lines passed to Logger
	// (slog.LevelWarn keeps its startup notices out); Info when zero.
	LogLevel slog.Level
}

// Server is an embedded nats-server with JetStream, for single-host setups
// and tests. New fills defaults, Open starts it, Close stops it.
type Server struct {
	cfg  ServerConfig
	ns   *server.Server
	logs *serverLogger
}

// NewServer validates cfg and fills its defaults. It does not start anything.
func NewServer(cfg ServerConfig) (*Server, error) {
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
	if cfg.MaxPayload <= MaxResultSize+resultHeaderAllowance {
		return nil, fmt.Errorf("queue: server: MaxPayload %d must exceed MaxResultSize %d plus %d bytes of headers",
			cfg.MaxPayload, MaxResultSize, resultHeaderAllowance)
	}
	if cfg.MaxPayload < stageChunkSize+4096 {
		return nil, fmt.Errorf("queue: server: MaxPayload %d is below the staging chunk size %d", cfg.MaxPayload, stageChunkSize)
	}
	return &Server{cfg: cfg}, nil
}

// Open starts the server and waits until it accepts connections, bounded by
// ctx and by 10 s.
func (s *Server) Open(ctx context.Context) error {
	if s.ns != nil {
		return errors.New("queue: server: already open")
	}
	port := s.cfg.Port
	if port == 0 {
		port = server.RANDOM_PORT // nats-server's "pick a free port"
	}
	opts := &server.Options{
		Host:                  s.cfg.Host,
		Port:                  port,
		Authorization:         s.cfg.Token,
		MaxPayload:            s.cfg.MaxPayload,
		JetStream:             true,
		StoreDir:              s.cfg.StoreDir,
		StreamMaxBufferedSize: streamMaxBufferedSize,
		// The embedding process owns signals and logging.
		NoSigs: true,
		NoLog:  true,
	}
	ns, err := server.NewServer(opts)
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
	s.ns = ns
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
