package queue

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/retry"
)

// Log attribute keys, so operators can filter on them.
const (
	logKeyErr     = "err"
	logKeyURL     = "url"
	logKeySubject = "subject"
	logKeyGroup   = "group"
)

const (
	// connectBackoffMax caps the wait between two connection attempts,
	// initial or reconnect.
	connectBackoffMax = 5 * time.Second
	// dialTimeout bounds one TCP+TLS+handshake attempt.
	dialTimeout = 5 * time.Second
)

type options struct {
	token     string
	credsFile string
	nkeySeed  string
	certFile  string
	keyFile   string
	name      string
	rootCA    string
	log       *slog.Logger
}

// Option configures Connect.
type Option func(*options)

// WithToken authenticates with an authorization token.
func WithToken(tok string) Option { return func(o *options) { o.token = tok } }

// WithCredsFile authenticates with a NATS .creds file (JWT + nkey seed).
func WithCredsFile(path string) Option { return func(o *options) { o.credsFile = path } }

// WithRootCA trusts the PEM certificate(s) in file for tls:// and wss://
// servers — a private CA, or a self-signed certificate — instead of the
// system's roots. It makes TLS required, also for nats:// and ws:// URLs.
func WithRootCA(file string) Option { return func(o *options) { o.rootCA = file } }

// WithNKeySeedFile authenticates as the NKey user whose seed (SU...) is
// in path, as `provenix tenant add` writes them for static accounts. The
// seed is read once, at Connect.
func WithNKeySeedFile(path string) Option { return func(o *options) { o.nkeySeed = path } }

// WithClientCert presents the PEM certificate and key in certFile and
// keyFile to servers that verify clients (tls { verify: true }), and
// requires TLS.
func WithClientCert(certFile, keyFile string) Option {
	return func(o *options) { o.certFile, o.keyFile = certFile, keyFile }
}

// WithName sets the connection name the server shows in its monitoring.
func WithName(name string) Option { return func(o *options) { o.name = name } }

// WithLogger receives disconnects, reconnects and asynchronous errors
// (slow consumers, permission violations, consumer fetch errors). The
// default discards them.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Conn is a connection to NATS with JetStream. It is safe for concurrent use.
type Conn struct {
	nc *nats.Conn
	js jetstream.JetStream
	// leader reads messages from a stream's leader (leaderGet): the
	// legacy API, since the newer one takes a direct get wherever a
	// stream allows them.
	leader nats.JetStreamContext
	log    *slog.Logger

	// done is closed when the connection is closed for good (not on a
	// mere disconnect); consumers stop then.
	done      chan struct{}
	closeOnce sync.Once

	// kvs caches key-value bucket handles (see kv.go).
	kvMu sync.Mutex
	kvs  map[string]jetstream.KeyValue
	// kvStreams caches their streams (KVList asks which subjects they hold).
	kvStreams map[string]jetstream.Stream
	// provided says when each consumer this connection provided
	// (provideConsumer) was last seen there; deniedProvide holds the
	// streams whose consumers this account may not provide, said once.
	provided, deniedProvide sync.Map

	mu sync.Mutex
	// denied are the publishes waiting for their ack; a permission
	// violation naming their subject cancels them (see publish.go).
	denied map[*deniedWatch]struct{}
	// staging caches the staging bucket handles (see staging.go).
	stagingObs    jetstream.ObjectStore
	stagingStream jetstream.Stream
}

// Connect dials url (one URL or a comma-separated list). It retries the
// first connection with backoff until ctx is done, because services start
// in any order; it gives up at once on an authorization error or an
// untrusted server certificate (ErrUntrustedCert), which retrying does not
// fix. Once connected, it reconnects forever (with backoff and jitter),
// buffering publishes meanwhile as nats.go does. URLs may be nats://,
// tls://, ws:// or wss:// (WebSocket, for builders behind firewalls that
// only let HTTPS out).
func Connect(ctx context.Context, url string, opts ...Option) (*Conn, error) {
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if n := btoi(o.token != "") + btoi(o.credsFile != "") + btoi(o.nkeySeed != ""); n > 1 {
		return nil, errors.New("queue: connect: WithToken, WithCredsFile and WithNKeySeedFile are exclusive")
	}
	if (o.certFile == "") != (o.keyFile == "") {
		return nil, errors.New("queue: connect: a client certificate needs both its certificate and key file")
	}
	c := &Conn{log: o.log, denied: make(map[*deniedWatch]struct{}), done: make(chan struct{})}
	safeURL := RedactURL(url)

	nopts := []nats.Option{
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(backoff),
		// A token rotated server-side must not turn into a closed
		// connection the daemon never recovers from.
		nats.IgnoreAuthErrorAbort(),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				return // our own Close: nothing to warn about
			}
			c.log.Warn("queue: disconnected", logKeyURL, safeURL, logKeyErr, err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			c.log.Info("queue: reconnected", logKeyURL, RedactURL(nc.ConnectedUrl()))
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			c.log.Debug("queue: connection closed", logKeyURL, safeURL)
			c.closeOnce.Do(func() { close(c.done) })
		}),
		nats.ErrorHandler(c.onAsyncError),
	}
	if o.name != "" {
		nopts = append(nopts, nats.Name(o.name))
	}
	if o.token != "" {
		nopts = append(nopts, nats.Token(o.token))
	}
	if o.credsFile != "" {
		nopts = append(nopts, nats.UserCredentials(o.credsFile))
	}
	// Files are checked here, not only at each (re)connect as nats.go
	// would: a missing or broken file is a configuration error to report
	// now, not a reason to retry until ctx ends.
	if o.rootCA != "" {
		if err := checkRootCA(o.rootCA); err != nil {
			return nil, fmt.Errorf("queue: connect %s: %w", safeURL, err)
		}
		nopts = append(nopts, nats.RootCAs(o.rootCA))
	}
	if o.nkeySeed != "" {
		nk, err := nats.NkeyOptionFromSeed(o.nkeySeed)
		if err != nil {
			return nil, fmt.Errorf("queue: connect: nkey seed %s: %w", o.nkeySeed, err)
		}
		nopts = append(nopts, nk)
	}
	if o.certFile != "" {
		if _, err := tls.LoadX509KeyPair(o.certFile, o.keyFile); err != nil {
			return nil, fmt.Errorf("queue: connect: client certificate: %w", err)
		}
		nopts = append(nopts, nats.ClientCert(o.certFile, o.keyFile))
	}

	var lastErr error
	retries := connectRetry
	retries.OnRetry = func(_ int, _ time.Duration, err error) {
		c.log.Debug("queue: connect failed, retrying", logKeyURL, safeURL, logKeyErr, err)
	}
	err := retry.Do(ctx, retries, func(int) error {
		timeout := dialTimeout
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
			timeout = max(time.Until(dl), time.Millisecond)
		}
		nc, err := nats.Connect(url, append(nopts, nats.Timeout(timeout))...)
		if err == nil {
			c.nc = nc
			return nil
		}
		lastErr = err
		if isAuthError(err) {
			return retry.Stop(fmt.Errorf("queue: connect %s: %w", safeURL, err))
		}
		if isCertError(err) {
			return retry.Stop(fmt.Errorf("queue: connect %s: %w (a private or self-signed CA needs WithRootCA): %w", safeURL, ErrUntrustedCert, err))
		}
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("queue: connect %s: %w (last error: %w)%s", safeURL, ctx.Err(), lastErr, connectHint(url, lastErr))
		}
		return nil, err
	}

	js, err := jetstream.New(c.nc, jetstream.WithDefaultTimeout(DefaultTimeout))
	if err != nil {
		c.nc.Close()
		return nil, fmt.Errorf("queue: connect %s: jetstream: %w", safeURL, err)
	}
	c.js = js
	if c.leader, err = c.nc.JetStream(); err != nil {
		c.nc.Close()
		return nil, fmt.Errorf("queue: connect %s: jetstream: %w", safeURL, err)
	}
	return c, nil
}

// Close closes the connection without draining it: publishes still
// buffered (say, during a reconnect) are dropped and unacknowledged
// deliveries are redelivered after their AckWait. Stop or Drain consumers
// first; every call here that returned nil was acknowledged by the server,
// so nothing the caller was told is safe can be lost by Close.
//
// It returns once the connection's callbacks have run, so nothing logs
// through the caller's logger after Close.
func (c *Conn) Close() {
	c.nc.Close()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
}

// NATS is the underlying connection, for what this package does not wrap.
func (c *Conn) NATS() *nats.Conn { return c.nc }

// JetStream is the underlying JetStream handle.
func (c *Conn) JetStream() jetstream.JetStream { return c.js }

func (c *Conn) onAsyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	attrs := []any{logKeyErr, err}
	if sub != nil {
		attrs = append(attrs, logKeySubject, sub.Subject)
	}
	c.log.Warn("queue: asynchronous error", attrs...)
	if errors.Is(err, nats.ErrPermissionViolation) {
		c.notifyDenied(err)
	}
}

// connectRetry spaces connection attempts, initial or reconnect, and the
// retries of the calls that ride out a broker restart: exponential from
// 100 ms, capped, with jitter so a fleet of builders does not reconnect
// in lock step after a broker restart.
var connectRetry = retry.Policy{Initial: 100 * time.Millisecond, Max: connectBackoffMax, Jitter: 0.25}

// backoff is connectRetry's wait before attempt n (0-based).
func backoff(attempt int) time.Duration { return connectRetry.Delay(attempt + 1) }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func isAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}

// isCertError reports a server certificate that failed verification
// (unknown authority, wrong host name, expired): the operator must fix the
// trust or the URL, retrying does not.
func isCertError(err error) bool {
	var cve *tls.CertificateVerificationError
	return errors.As(err, &cve)
}

// connectHint explains the one failure whose message does not: nats.go
// reports a WebSocket upgrade answered with anything but 101 — which is
// what a wss:// (TLS) listener says to plain ws:// — as a bare "invalid
// websocket connection".
func connectHint(urls string, err error) string {
	if err == nil || !strings.Contains(err.Error(), "invalid websocket connection") {
		return ""
	}
	for _, p := range strings.Split(urls, ",") {
		if u, perr := url.Parse(strings.TrimSpace(p)); perr == nil && u.Scheme == "ws" {
			return "; the server did not upgrade to WebSocket: if it listens with TLS, use wss:// instead of ws://, and check the path a reverse proxy forwards"
		}
	}
	return "; the server did not upgrade to WebSocket: check the URL's host, port and the path a reverse proxy forwards"
}

// RedactURL hides passwords and tokens in a (comma-separated) server URL
// before it goes into an error or a log line.
func RedactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		u, err := url.Parse(p)
		switch {
		case err != nil:
			if strings.Contains(p, "@") {
				parts[i] = "<unparsable url>"
			}
		case u.User != nil:
			if _, hasPass := u.User.Password(); !hasPass {
				u.User = url.User("xxxxx") // a bare user part is a token
			}
			parts[i] = u.Redacted()
		default:
			parts[i] = p
		}
	}
	return strings.Join(parts, ",")
}

// withDefaultTimeout gives ctx a deadline of d when it has none.
func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// checkRootCA fails when file holds no PEM certificate.
func checkRootCA(file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("root CA: %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return fmt.Errorf("root CA %s: no PEM certificate in it", file)
	}
	return nil
}
