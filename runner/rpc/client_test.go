package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/runner/rpc/rpctest"
)

// fastRetry keeps the tests quick while still going through backoff.
var fastRetry = Retry{Attempts: 4, Initial: time.Millisecond, Max: 5 * time.Millisecond, AttemptTimeout: 5 * time.Second}

// registered returns a test forge with one runner and a client for it.
func registered(t *testing.T, opts ...Option) (*rpctest.Server, *Client, rpctest.Runner) {
	t.Helper()
	srv := rpctest.New(t)
	r := srv.AddRunner(rpctest.Runner{UUID: "11111111-2222-4333-8444-555555555555", Token: "runner-token", Name: "r", Labels: []string{"nix"}})
	c, err := New(srv.URL+"/", append([]Option{WithCredentials(r.UUID, r.Token), WithRetry(fastRetry)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return srv, c, r
}

func TestNew(t *testing.T) {
	for _, bad := range []string{"", "forgejo.example.org", "ftp://f", "http://", "://x"} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%q) succeeded", bad)
		}
	}
	c, err := New("https://f.example/sub/")
	if err != nil || c.Instance() != "https://f.example/sub" {
		t.Errorf("New: %v, instance %q", err, c.Instance())
	}
	if _, err := New("https://f", WithHTTPClient(http.DefaultClient), WithInsecureSkipVerifyUnsafe(true)); err == nil {
		t.Error("insecure TLS with a caller's HTTP client was accepted")
	}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// Every attempt of one FetchTask carries the runner's credentials and the
// same request key; it stops at once on answers retrying cannot change.
func TestFetchTaskRetries(t *testing.T) {
	tests := []struct {
		name      string
		inject    func(s *rpctest.Server)
		wantCalls int
		wantErr   error // nil: success
	}{
		{name: "no failure", inject: func(*rpctest.Server) {}, wantCalls: 1},
		{name: "unavailable twice", inject: func(s *rpctest.Server) { s.FailNext(rpctest.FetchTask, connect.CodeUnavailable, 2) }, wantCalls: 3},
		{name: "resource exhausted", inject: func(s *rpctest.Server) { s.FailNext(rpctest.FetchTask, connect.CodeResourceExhausted, 1) }, wantCalls: 2},
		{name: "aborted", inject: func(s *rpctest.Server) { s.FailNext(rpctest.FetchTask, connect.CodeAborted, 1) }, wantCalls: 2},
		{name: "proxy 502", inject: func(s *rpctest.Server) { s.FailNextHTTP(rpctest.FetchTask, http.StatusBadGateway, 1) }, wantCalls: 2},
		{name: "proxy 503 and 504", inject: func(s *rpctest.Server) {
			s.FailNextHTTP(rpctest.FetchTask, http.StatusServiceUnavailable, 1)
			s.FailNextHTTP(rpctest.FetchTask, http.StatusGatewayTimeout, 1)
		}, wantCalls: 3},
		{name: "unavailable until the attempts run out", inject: func(s *rpctest.Server) { s.FailNext(rpctest.FetchTask, connect.CodeUnavailable, 10) }, wantCalls: fastRetry.Attempts, wantErr: ErrUnavailable},
		{name: "unauthenticated", inject: func(s *rpctest.Server) { s.FailNext(rpctest.FetchTask, connect.CodeUnauthenticated, 1) }, wantCalls: 1, wantErr: ErrUnauthenticated},
		{name: "permission denied", inject: func(s *rpctest.Server) { s.FailNext(rpctest.FetchTask, connect.CodePermissionDenied, 1) }, wantCalls: 1, wantErr: ErrPermissionDenied},
		{name: "invalid argument", inject: func(s *rpctest.Server) { s.FailNext(rpctest.FetchTask, connect.CodeInvalidArgument, 1) }, wantCalls: 1, wantErr: ErrRejected},
		{name: "not found", inject: func(s *rpctest.Server) { s.FailNext(rpctest.FetchTask, connect.CodeNotFound, 1) }, wantCalls: 1, wantErr: ErrRejected},
		{name: "unimplemented", inject: func(s *rpctest.Server) { s.FailNext(rpctest.FetchTask, connect.CodeUnimplemented, 1) }, wantCalls: 1, wantErr: ErrUnimplemented},
		{name: "internal error of the forge", inject: func(s *rpctest.Server) { s.FailNext(rpctest.FetchTask, connect.CodeInternal, 1) }, wantCalls: 1, wantErr: ErrRejected},
		{name: "proxy 404", inject: func(s *rpctest.Server) { s.FailNextHTTP(rpctest.FetchTask, http.StatusNotFound, 1) }, wantCalls: 1, wantErr: ErrUnimplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, c, r := registered(t)
			tt.inject(srv)
			_, err := c.FetchTask(testctx.New(t, 30*time.Second), &runnerv1.FetchTaskRequest{})
			if tt.wantErr == nil && err != nil {
				t.Fatalf("FetchTask: %v", err)
			}
			if tt.wantErr != nil && (!errors.Is(err, tt.wantErr) || !errors.Is(err, ErrForge)) {
				t.Fatalf("err = %v, want %v under ErrForge", err, tt.wantErr)
			}
			calls := srv.CallsTo(rpctest.FetchTask)
			if len(calls) != tt.wantCalls {
				t.Fatalf("%d FetchTask calls, want %d", len(calls), tt.wantCalls)
			}
			for i, call := range calls {
				if call.UUID != r.UUID || call.Token != r.Token {
					t.Errorf("call %d: uuid %q token %q, want the runner's", i, call.UUID, call.Token)
				}
				if call.RequestKey != calls[0].RequestKey {
					t.Errorf("call %d: request key %q, want %q as on the first attempt", i, call.RequestKey, calls[0].RequestKey)
				}
			}
			if !uuidRE.MatchString(calls[0].RequestKey) {
				t.Errorf("request key %q is not a random UUID", calls[0].RequestKey)
			}
		})
	}
}

// A key whose fetch got no answer is used again by the next fetch; a key
// whose fetch was answered is not.
func TestFetchTaskKeyLifetime(t *testing.T) {
	srv, c, _ := registered(t)
	ctx := testctx.New(t, 30*time.Second)
	srv.FailNext(rpctest.FetchTask, connect.CodeUnavailable, fastRetry.Attempts)
	if _, err := c.FetchTask(ctx, &runnerv1.FetchTaskRequest{}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("first fetch: %v", err)
	}
	for range 2 {
		if _, err := c.FetchTask(ctx, &runnerv1.FetchTaskRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	srv.FailNext(rpctest.FetchTask, connect.CodeUnauthenticated, 1)
	_, _ = c.FetchTask(ctx, &runnerv1.FetchTaskRequest{})
	if _, err := c.FetchTask(ctx, &runnerv1.FetchTaskRequest{}); err != nil {
		t.Fatal(err)
	}
	calls := srv.CallsTo(rpctest.FetchTask)
	var keys []string
	for _, call := range calls {
		keys = append(keys, call.RequestKey)
	}
	n := fastRetry.Attempts
	if keys[n] != keys[0] {
		t.Errorf("fetch after an unanswered one used key %s, want the unanswered %s", keys[n], keys[0])
	}
	if keys[n+1] == keys[n] {
		t.Error("fetch after an answered one reused its key")
	}
	if keys[n+3] == keys[n+2] {
		t.Error("fetch after a refused one reused its key")
	}
}

// The case the request key exists for: the forge assigns a task, the
// answer is lost, and the retry (same key) gets the task instead of
// nothing.
func TestFetchTaskRecoversLostAnswer(t *testing.T) {
	srv, c, r := registered(t)
	id := srv.AddTask(&runnerv1.Task{Id: 7})
	srv.LoseNext(rpctest.FetchTask, 1)
	res, err := c.FetchTask(testctx.New(t, 30*time.Second), &runnerv1.FetchTaskRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetTask().GetId() != id {
		t.Fatalf("got task %d, want %d", res.GetTask().GetId(), id)
	}
	calls := srv.CallsTo(rpctest.FetchTask)
	if len(calls) != 2 || !calls[0].Lost || calls[1].RequestKey != calls[0].RequestKey {
		t.Errorf("calls %+v, want a lost one then a retry with its key", calls)
	}
	if task, _ := srv.Task(id); task.Runner != r.UUID {
		t.Errorf("task assigned to %q", task.Runner)
	}
}

// Concurrent fetches never share a key: the forge would give both the
// same recovered task.
func TestFetchTaskConcurrentKeys(t *testing.T) {
	srv, c, _ := registered(t)
	ctx := testctx.New(t, 30*time.Second)
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := c.FetchTask(ctx, &runnerv1.FetchTaskRequest{})
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	for _, call := range srv.CallsTo(rpctest.FetchTask) {
		keys = append(keys, call.RequestKey)
	}
	slices.Sort(keys)
	if len(slices.Compact(keys)) != 8 {
		t.Errorf("keys %q are not all different", keys)
	}
}

func TestCallEndsWithContext(t *testing.T) {
	srv, c, _ := registered(t, WithRetry(Retry{Attempts: 100, Initial: time.Hour, Max: time.Hour}))
	srv.FailNext(rpctest.UpdateLog, connect.CodeUnavailable, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.UpdateLog(ctx, &runnerv1.UpdateLogRequest{TaskId: 1})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("returned after %v", d)
	}
}

// An attempt that hangs is abandoned after AttemptTimeout and retried.
func TestAttemptTimeout(t *testing.T) {
	srv, _, r := registered(t)
	u, _ := url.Parse(srv.URL)
	proxy := httputil.NewSingleHostReverseProxy(u)
	var n atomic.Int32
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if n.Add(1) == 1 {
			// Reading the body lets the server notice the client leaving.
			_, _ = io.Copy(io.Discard, req.Body)
			select {
			case <-req.Context().Done():
			case <-release:
			}
			return
		}
		proxy.ServeHTTP(w, req)
	}))
	defer hang.Close()
	defer close(release)
	c, err := New(hang.URL, WithCredentials(r.UUID, r.Token), WithRetry(Retry{Attempts: 3, Initial: time.Millisecond, Max: time.Millisecond, AttemptTimeout: 100 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Ping(testctx.New(t, 30*time.Second), "x"); err != nil || got != "Hello, x!" {
		t.Fatalf("Ping = %q, %v", got, err)
	}
	if n.Load() != 2 {
		t.Errorf("%d attempts, want 2 (err %v)", n.Load(), err)
	}
}

// A connection the forge drops is a network error and is retried.
func TestDroppedConnectionRetried(t *testing.T) {
	srv, _, r := registered(t)
	u, _ := url.Parse(srv.URL)
	proxy := httputil.NewSingleHostReverseProxy(u)
	var n atomic.Int32
	drop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if n.Add(1) == 1 {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		proxy.ServeHTTP(w, req)
	}))
	defer drop.Close()
	c, err := New(drop.URL, WithCredentials(r.UUID, r.Token), WithRetry(fastRetry))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.UpdateTask(testctx.New(t, 30*time.Second), &runnerv1.UpdateTaskRequest{State: &runnerv1.TaskState{Id: 1}})
	if err == nil || errors.Is(err, ErrUnavailable) {
		// Task 1 does not exist: the forge's answer (not a transport
		// error) must be what ends the call.
		t.Fatalf("err = %v, want the forge's rejection after a retry", err)
	}
	if n.Load() != 2 {
		t.Errorf("%d attempts, want 2 (err %v)", n.Load(), err)
	}
}

func TestTransient(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{connect.NewError(connect.CodeUnavailable, errors.New("x")), true},
		{connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded), true},
		{connect.NewError(connect.CodeUnknown, io.ErrUnexpectedEOF), true},
		{connect.NewError(connect.CodeUnknown, fmt.Errorf("read: %w", syscall.ECONNRESET)), true},
		{connect.NewError(connect.CodeInternal, &net.OpError{Op: "read", Err: errors.New("broken")}), true},
		{connect.NewError(connect.CodeUnknown, errors.New("runner registration token not found")), false},
		{connect.NewError(connect.CodeInternal, errors.New("update task: boom")), false},
		{connect.NewError(connect.CodeCanceled, context.Canceled), false},
		{connect.NewError(connect.CodeUnauthenticated, errors.New("unregistered runner")), false},
		{connect.NewError(connect.CodeFailedPrecondition, errors.New("x")), false},
	}
	for _, tt := range tests {
		if got := transient(tt.err); got != tt.want {
			t.Errorf("transient(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	r := Retry{Initial: 100 * time.Millisecond, Max: time.Second}
	for attempt, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 50: time.Second} {
		for range 20 {
			if d := r.policy().Delay(attempt); d < want/2 || d > want {
				t.Errorf("backoff(%d) = %v, want in [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
}

// Credentials go on every call but Register.
func TestCredentialsHeaders(t *testing.T) {
	srv, c, r := registered(t)
	ctx := testctx.New(t, 30*time.Second)
	if _, err := c.Ping(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Declare(ctx, &runnerv1.DeclareRequest{Version: "v", Labels: []string{"nix"}}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Register(ctx, &runnerv1.RegisterRequest{Name: "n", Token: rpctest.DefaultRegistrationToken})
	if err != nil {
		t.Fatal(err)
	}
	for _, call := range srv.Calls() {
		want := call.Method != rpctest.Register
		if got := call.UUID == r.UUID && call.Token == r.Token; got != want {
			t.Errorf("%s: credentials sent = %v, want %v", call.Method, got, want)
		}
		if call.Method != rpctest.FetchTask && call.RequestKey != "" {
			t.Errorf("%s carries a request key", call.Method)
		}
	}
}
