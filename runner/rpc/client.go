// Package rpc is the runner-protocol client: it speaks the Forgejo/Gitea Actions runner protocol, a
// Connect RPC API under <instance>/api/actions (code.gitea.io/actions-proto-go)
// through which a runner registers, declares its labels, fetches tasks and
// reports their state and logs. It also reads and writes the .runner file
// forgejo-runner keeps its registration in, so either runner can use the
// other's file.
//
// Every call takes a ctx and is retried, with exponential backoff and
// jitter, while it fails in a way that may pass (the forge or a proxy is
// unavailable, the connection broke, one attempt timed out); it stops at
// the first answer that retrying cannot change, and at the end of ctx.
// Errors are *Error values matching ErrForge and one sentinel kind.
package rpc

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	pingv1 "code.gitea.io/actions-proto-go/ping/v1"
	"code.gitea.io/actions-proto-go/ping/v1/pingv1connect"
	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
)

// Headers of the runner protocol.
const (
	HeaderUUID  = "x-runner-uuid"
	HeaderToken = "x-runner-token"
	// HeaderRequestKey identifies one FetchTask request across its retries.
	// Forgejo (since early 2026) remembers which tasks it assigned under a
	// key and answers a retry with the same key with those tasks again,
	// instead of losing a task whose response never arrived. Gitea ignores
	// it.
	HeaderRequestKey = "x-runner-request-key"
)

// APIPath is where the runner API lives below the instance URL.
const APIPath = "/api/actions"

const (
	methodPing       = "Ping"
	methodRegister   = "Register"
	methodDeclare    = "Declare"
	methodFetchTask  = "FetchTask"
	methodUpdateTask = "UpdateTask"
	methodUpdateLog  = "UpdateLog"
)

// Log attribute keys.
const (
	attrMethod  = "method"
	attrAttempt = "attempt"
	attrDelay   = "delay"
	attrErr     = "err"
)

// Retry bounds the retries of one call.
type Retry struct {
	// Attempts is how many times a call is sent at most (1: no retry).
	Attempts int
	// Initial is the delay before the first retry; it doubles up to Max.
	// Each delay is drawn at random between half and all of its value, so
	// runners that lost the forge together do not come back together.
	Initial, Max time.Duration
	// AttemptTimeout bounds one attempt, so a hung connection is retried
	// (and a final report under context.WithoutCancel still ends).
	AttemptTimeout time.Duration
}

// DefaultRetry is used unless WithRetry says otherwise.
var DefaultRetry = Retry{Attempts: 5, Initial: 500 * time.Millisecond, Max: 10 * time.Second, AttemptTimeout: time.Minute}

// Client is a runner's connection to one forge. It is safe for concurrent
// use.
type Client struct {
	instance string
	ping     pingv1connect.PingServiceClient
	runner   runnerv1connect.RunnerServiceClient
	uuid     string
	token    string
	version  string
	log      *slog.Logger
	retry    Retry

	mu sync.Mutex
	// spareKeys are request keys of FetchTask calls that ended without an
	// answer: the forge may have assigned a task under one. The next
	// FetchTask takes one over, as forgejo-runner keeps its key until a
	// fetch succeeds. Concurrent fetches never share a key, since the
	// forge would hand both the same recovered task.
	spareKeys []string
}

// maxSpareKeys bounds spareKeys when the forge stays away for long.
const maxSpareKeys = 16

type options struct {
	uuid, token string
	httpClient  connect.HTTPClient
	insecure    bool
	version     string
	log         *slog.Logger
	retry       Retry
}

// Option configures a Client.
type Option func(*options)

// WithCredentials sets the runner's uuid and token, sent on every call
// but Register.
func WithCredentials(uuid, token string) Option {
	return func(o *options) { o.uuid, o.token = uuid, token }
}

// WithHTTPClient replaces the default HTTP client (which honours the
// proxy environment variables).
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.httpClient = c } }

// WithInsecureSkipVerifyUnsafe turns off verification of the forge's TLS
// certificate (runner.insecure). Anyone on the path can then impersonate
// the forge. It applies to the default HTTP client only.
func WithInsecureSkipVerifyUnsafe(skip bool) Option { return func(o *options) { o.insecure = skip } }

// WithVersion sets the version reported by Register and Declare.
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// WithLogger sets where retries are logged; the default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithRetry replaces DefaultRetry; zero fields keep their default.
func WithRetry(r Retry) Option { return func(o *options) { o.retry = r } }

// New returns a client for the forge at instance (e.g.
// "https://forgejo.example.org"; a trailing slash is fine).
func New(instance string, opts ...Option) (*Client, error) {
	o := options{version: "dev", retry: DefaultRetry}
	for _, opt := range opts {
		opt(&o)
	}
	u, err := url.Parse(strings.TrimSpace(instance))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("forge: instance URL %q: want http(s)://host[/path]", instance)
	}
	instance = strings.TrimRight(u.String(), "/")
	if o.httpClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if o.insecure {
			tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for, named Unsafe
		}
		o.httpClient = &http.Client{Transport: tr}
	} else if o.insecure {
		return nil, errors.New("forge: WithInsecureSkipVerifyUnsafe applies to the default HTTP client; configure TLS on the one given to WithHTTPClient")
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	def := DefaultRetry
	if o.retry.Attempts <= 0 {
		o.retry.Attempts = def.Attempts
	}
	if o.retry.Initial <= 0 {
		o.retry.Initial = def.Initial
	}
	if o.retry.Max <= 0 {
		o.retry.Max = def.Max
	}
	if o.retry.AttemptTimeout <= 0 {
		o.retry.AttemptTimeout = def.AttemptTimeout
	}
	c := &Client{instance: instance, uuid: o.uuid, token: o.token, version: o.version, log: o.log, retry: o.retry}
	interceptors := connect.WithInterceptors(connect.UnaryInterceptorFunc(c.authenticate))
	c.ping = pingv1connect.NewPingServiceClient(o.httpClient, instance+APIPath, interceptors)
	c.runner = runnerv1connect.NewRunnerServiceClient(o.httpClient, instance+APIPath, interceptors)
	return c, nil
}

// Instance returns the forge's URL, without a trailing slash.
func (c *Client) Instance() string { return c.instance }

// Version returns the version the client reports.
func (c *Client) Version() string { return c.version }

// authenticate adds the runner's credentials to every call but Register,
// which is how a runner gets them.
func (c *Client) authenticate(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if c.uuid != "" && req.Spec().Procedure != runnerv1connect.RunnerServiceRegisterProcedure {
			req.Header().Set(HeaderUUID, c.uuid)
			req.Header().Set(HeaderToken, c.token)
		}
		return next(ctx, req)
	}
}

// Ping checks that the forge answers; the forge echoes data back in its
// reply ("Hello, <data>!" on Gitea and Forgejo).
func (c *Client) Ping(ctx context.Context, data string) (string, error) {
	res, err := call(ctx, c, methodPing, &pingv1.PingRequest{Data: data}, nil, c.retry, c.ping.Ping)
	if err != nil {
		return "", err
	}
	return res.GetData(), nil
}

// Register exchanges a registration token for a runner (id, uuid, token).
// It is sent once, never retried: a retry after a lost response would
// create a second runner on the forge.
func (c *Client) Register(ctx context.Context, req *runnerv1.RegisterRequest) (*runnerv1.RegisterResponse, error) {
	once := c.retry
	once.Attempts = 1
	return call(ctx, c, methodRegister, req, nil, once, c.runner.Register)
}

// Declare tells the forge the runner's version and labels; forgejo-runner
// does it at every start. Forges older than Gitea 1.21 answer
// Unimplemented (ErrUnimplemented).
func (c *Client) Declare(ctx context.Context, req *runnerv1.DeclareRequest) (*runnerv1.DeclareResponse, error) {
	return call(ctx, c, methodDeclare, req, nil, c.retry, c.runner.Declare)
}

// FetchTask asks for a task. All attempts of one call carry the same
// x-runner-request-key; if the call ends without an answer (retries
// exhausted, ctx over) the key is kept and reused by a following call,
// so a task the forge assigned under it is recovered rather than lost.
func (c *Client) FetchTask(ctx context.Context, req *runnerv1.FetchTaskRequest) (*runnerv1.FetchTaskResponse, error) {
	key := c.takeKey()
	hdr := http.Header{}
	hdr.Set(HeaderRequestKey, key)
	res, err := call(ctx, c, methodFetchTask, req, hdr, c.retry, c.runner.FetchTask)
	if err != nil && outcomeUnknown(err) {
		c.keepKey(key)
	}
	return res, err
}

// UpdateTask reports a task's state and outputs. Repeating it is harmless,
// so it is retried. A response whose State.Result is RESULT_CANCELLED (or
// FAILURE while the runner still runs it) means the forge wants the task
// stopped.
func (c *Client) UpdateTask(ctx context.Context, req *runnerv1.UpdateTaskRequest) (*runnerv1.UpdateTaskResponse, error) {
	return call(ctx, c, methodUpdateTask, req, nil, c.retry, c.runner.UpdateTask)
}

// UpdateLog appends log rows starting at req.Index. The forge keeps rows
// it already has, so a retry cannot duplicate them; AckIndex says how far
// it has them all.
func (c *Client) UpdateLog(ctx context.Context, req *runnerv1.UpdateLogRequest) (*runnerv1.UpdateLogResponse, error) {
	return call(ctx, c, methodUpdateLog, req, nil, c.retry, c.runner.UpdateLog)
}

func (c *Client) takeKey() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.spareKeys); n > 0 {
		k := c.spareKeys[n-1]
		c.spareKeys = c.spareKeys[:n-1]
		return k
	}
	return newUUID()
}

func (c *Client) keepKey(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.spareKeys) < maxSpareKeys {
		c.spareKeys = append(c.spareKeys, k)
	}
}

// outcomeUnknown reports whether the forge may have acted on a call that
// failed with err: no answer came (transport failure, timeout, ctx end).
func outcomeUnknown(err error) bool {
	var fe *Error
	if errors.As(err, &fe) {
		return errors.Is(fe.Kind, ErrUnavailable)
	}
	return true // the context ended
}

// newUUID returns a random (version 4) UUID; Forgejo insists that a
// request key is one.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b)
}

func formatUUID(b [16]byte) string {
	const hexdigits = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, x := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hexdigits[x>>4], hexdigits[x&0xf])
	}
	return string(out)
}
