// Package rpctest is a fake forge for tests: the Forgejo Actions
// runner API (the Connect services of code.gitea.io/actions-proto-go,
// served by their own generated handlers) under <URL>/api/actions on an
// httptest server.
//
// It exists because the real forge the end-to-end tests run is Gitea, and
// some of what the runner must handle is Forgejo's alone or cannot be
// provoked on demand: Forgejo 15 answering a FetchTask retried with the
// same x-runner-request-key with the task it already assigned, offline
// registration from a shared secret (forgejo-cli actions register), a
// response lost after the forge acted on the request, a proxy answering
// 502, a task cancelled between two UpdateTask calls. It mirrors the wire
// protocol exactly — the same procedures, headers, error codes and field
// semantics as the Gitea/Forgejo handlers (routers/api/actions/runner) —
// and keeps the rest (users, repositories, workflow scheduling) out.
//
// Behaviour mirrored from the forges:
//   - Ping answers "Hello, <data>!".
//   - Register needs a known registration token (InvalidArgument
//     "runner registration token not found" otherwise, as Forgejo) and
//     returns a runner with id, uuid and token.
//   - Every other call needs x-runner-uuid and x-runner-token of a known
//     runner (Unauthenticated "unregistered runner" otherwise).
//   - FetchTask only looks for a task when the request's tasks_version
//     differs from the forge's (AddTask and Cancel bump it); a runner that
//     got a task sends 0 next to look again. A request key seen before
//     gets the tasks assigned under it back (Forgejo 15).
//   - UpdateTask stores outputs not sent before and answers with all keys
//     sent; once a task has a result (reported, or set by Cancel) later
//     states are ignored and the answer's State.Result is that result —
//     RESULT_CANCELLED is how the forge tells a runner to stop.
//   - UpdateLog appends rows from index if it has every row before index
//     and answers ack_index = rows stored (index+len(rows) when
//     contiguous); no_more closes the log, after which new rows are
//     refused (AlreadyExists) and a resent close is acknowledged.
//   - UpdateTask and UpdateLog for a task of another runner answer
//     PermissionDenied "invalid runner for task".
package rpctest

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"code.gitea.io/actions-proto-go/ping/v1/pingv1connect"
	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
)

// Method names, as recorded in Call.Method and given to FailNext.
const (
	Ping       = "Ping"
	Register   = "Register"
	Declare    = "Declare"
	FetchTask  = "FetchTask"
	UpdateTask = "UpdateTask"
	UpdateLog  = "UpdateLog"
)

// DefaultRegistrationToken is accepted unless WithRegistrationTokens says
// otherwise.
const DefaultRegistrationToken = "rpctest-registration-token"

// Wire names, written out rather than taken from the client so that a
// mistake there is not mirrored here.
const (
	apiPath          = "/api/actions"
	headerUUID       = "x-runner-uuid"
	headerToken      = "x-runner-token"
	headerRequestKey = "x-runner-request-key"
)

// Call is one request the server received.
type Call struct {
	Method     string
	UUID       string // x-runner-uuid
	Token      string // x-runner-token
	RequestKey string // x-runner-request-key
	Header     http.Header
	// Request is a clone of the request message; nil when an injected
	// HTTP failure answered before it was read.
	Request proto.Message
	// Code is the error code answered, 0 for success.
	Code connect.Code
	// HTTPStatus is set when FailNextHTTP answered the call.
	HTTPStatus int
	// Lost is set when the server acted on the call but LoseNext dropped
	// the response.
	Lost bool
}

// Runner is a registered runner.
type Runner struct {
	ID        int64
	UUID      string
	Token     string
	Name      string
	Version   string
	Labels    []string
	Ephemeral bool
}

// Task is what the forge knows of a task.
type Task struct {
	ID int64
	// Runner is the uuid of the runner the task was assigned to; "" while
	// it waits.
	Runner string
	// State is the last state the runner reported (nil before any).
	State *runnerv1.TaskState
	// Result is the task's result as the forge sees it: the runner's final
	// result, RESULT_CANCELLED after Cancel, or RESULT_UNSPECIFIED while
	// it runs.
	Result  runnerv1.Result
	Outputs map[string]string
	Logs    []*runnerv1.LogRow
	// LogsClosed is set by an UpdateLog with no_more.
	LogsClosed bool
}

// LogLines returns the contents of the task's log rows.
func (t Task) LogLines() []string {
	out := make([]string, len(t.Logs))
	for i, r := range t.Logs {
		out[i] = r.GetContent()
	}
	return out
}

type task struct {
	Task
	proto  *runnerv1.Task
	runsOn []string
}

type failure struct {
	code   connect.Code
	status int // HTTP status; 0 for a Connect error
	lose   bool
}

// Server is the test forge.
type Server struct {
	// URL is the instance URL to give the runner (no trailing slash).
	URL string

	hs *httptest.Server

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every change
	calls     []Call
	regTokens map[string]bool
	runners   map[string]*Runner // by uuid
	nextID    int64
	tasks     map[int64]*task
	queue     []int64
	byKey     map[string][]int64 // runner uuid + "/" + request key
	version   int64
	failures  map[string][]failure
}

// Option configures a Server.
type Option func(*Server)

// WithRegistrationTokens replaces the accepted registration tokens.
func WithRegistrationTokens(tokens ...string) Option {
	return func(s *Server) {
		s.regTokens = make(map[string]bool, len(tokens))
		for _, t := range tokens {
			s.regTokens[t] = true
		}
	}
}

// New starts a server and stops it when the test ends.
func New(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s := &Server{
		changed:   make(chan struct{}),
		regTokens: map[string]bool{DefaultRegistrationToken: true},
		runners:   make(map[string]*Runner),
		tasks:     make(map[int64]*task),
		byKey:     make(map[string][]int64),
		failures:  make(map[string][]failure),
	}
	for _, o := range opts {
		o(s)
	}
	mux := http.NewServeMux()
	for _, h := range []func() (string, http.Handler){
		func() (string, http.Handler) { return pingv1connect.NewPingServiceHandler(pingService{s}) },
		func() (string, http.Handler) { return runnerv1connect.NewRunnerServiceHandler(runnerService{s}) },
	} {
		path, handler := h()
		mux.Handle(apiPath+path, http.StripPrefix(apiPath, s.httpFailures(handler)))
	}
	s.hs = httptest.NewServer(mux)
	s.URL = s.hs.URL
	tb.Cleanup(s.Close)
	return s
}

// Close stops the server.
func (s *Server) Close() { s.hs.Close() }

// Client returns an HTTP client for the server.
func (s *Server) Client() *http.Client { return s.hs.Client() }

// ---- test controls ----

// AddTask queues a task. A task without an id gets the next free one.
// With runsOn, only a runner having all those label names gets it, as
// `runs-on:` works; without, any runner does. It returns the task id.
func (s *Server) AddTask(t *runnerv1.Task, runsOn ...string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	t = proto.Clone(t).(*runnerv1.Task)
	if t.Id == 0 {
		s.nextID++
		t.Id = s.nextID
	}
	s.nextID = max(s.nextID, t.Id)
	s.tasks[t.Id] = &task{Task: Task{ID: t.Id, Outputs: map[string]string{}}, proto: t, runsOn: runsOn}
	s.queue = append(s.queue, t.Id)
	s.version++
	s.notify()
	return t.Id
}

// Cancel cancels a task as a user would in the web UI: a waiting task is
// dropped from the queue, and the next UpdateTask for a running one
// answers RESULT_CANCELLED.
func (s *Server) Cancel(id int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return fmt.Errorf("rpctest: no task %d", id)
	}
	if t.Result == runnerv1.Result_RESULT_UNSPECIFIED {
		t.Result = runnerv1.Result_RESULT_CANCELLED
	}
	s.queue = slices.DeleteFunc(s.queue, func(q int64) bool { return q == id })
	s.version++
	s.notify()
	return nil
}

// FailNext makes the next n calls of method fail with code before the
// server acts on them.
func (s *Server) FailNext(method string, code connect.Code, n int) {
	s.inject(method, failure{code: code}, n)
}

// FailNextHTTP makes the next n calls of method answer a bare HTTP status
// (e.g. 502 from a reverse proxy) before the server acts on them.
func (s *Server) FailNextHTTP(method string, status, n int) {
	s.inject(method, failure{status: status}, n)
}

// LoseNext makes the server act on the next n calls of method and then
// answer Unavailable, as when the response is lost on the way back.
func (s *Server) LoseNext(method string, n int) {
	s.inject(method, failure{code: connect.CodeUnavailable, lose: true}, n)
}

func (s *Server) inject(method string, f failure, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.failures[method] = append(s.failures[method], f)
	}
}

// AddRunner adds a registered runner directly, as the forge's web UI or
// `forgejo-cli actions register` do.
func (s *Server) AddRunner(r Runner) Runner {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.ID == 0 {
		r.ID = int64(len(s.runners) + 1)
	}
	r.Labels = slices.Clone(r.Labels)
	s.runners[r.UUID] = &r
	s.notify()
	return r
}

// RegisterSecret registers a runner from a shared secret as `forgejo
// forgejo-cli actions register --secret` does: its uuid is the first 16
// characters of the secret read as raw bytes, its token the secret.
func (s *Server) RegisterSecret(name, secret string, labels ...string) (Runner, error) {
	if len(secret) != 40 {
		return Runner{}, fmt.Errorf("rpctest: secret must be 40 characters, not %d", len(secret))
	}
	if _, err := hex.DecodeString(secret); err != nil {
		return Runner{}, fmt.Errorf("rpctest: secret: %w", err)
	}
	b := []byte(secret[:16])
	uuid := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	return s.AddRunner(Runner{UUID: uuid, Token: secret, Name: name, Labels: labels}), nil
}

// ---- inspection ----

// Calls returns every call received so far, in order.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// CallsTo returns the calls of one method.
func (s *Server) CallsTo(method string) []Call {
	var out []Call
	for _, c := range s.Calls() {
		if c.Method == method {
			out = append(out, c)
		}
	}
	return out
}

// Methods returns the method of every call, in order: the RPC sequence.
func (s *Server) Methods() []string {
	var out []string
	for _, c := range s.Calls() {
		out = append(out, c.Method)
	}
	return out
}

// Runners returns the registered runners, by id.
func (s *Server) Runners() []Runner {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Runner
	for _, r := range s.runners {
		c := *r
		c.Labels = slices.Clone(r.Labels)
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Runner) int { return int(a.ID - b.ID) })
	return out
}

// Task returns a copy of what the forge knows about a task.
func (s *Server) Task(id int64) (Task, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return Task{}, false
	}
	return t.snapshot(), true
}

func (t *task) snapshot() Task {
	c := t.Task
	if t.State != nil {
		c.State = proto.Clone(t.State).(*runnerv1.TaskState)
	}
	c.Outputs = make(map[string]string, len(t.Outputs))
	for k, v := range t.Outputs {
		c.Outputs[k] = v
	}
	c.Logs = make([]*runnerv1.LogRow, len(t.Logs))
	for i, r := range t.Logs {
		c.Logs[i] = proto.Clone(r).(*runnerv1.LogRow)
	}
	return c
}

// WaitTask waits until the task has a final result and its log is closed
// (what a runner does at the end of a task), or until ctx ends.
func (s *Server) WaitTask(ctx context.Context, id int64) (Task, error) {
	return s.waitFor(ctx, func() (Task, bool) {
		t, ok := s.tasks[id]
		if !ok || t.Result == runnerv1.Result_RESULT_UNSPECIFIED || !t.LogsClosed {
			return Task{}, false
		}
		return t.snapshot(), true
	})
}

// WaitCalls waits until method has been called at least n times.
func (s *Server) WaitCalls(ctx context.Context, method string, n int) error {
	_, err := s.waitFor(ctx, func() (Task, bool) {
		k := 0
		for _, c := range s.calls {
			if c.Method == method {
				k++
			}
		}
		return Task{}, k >= n
	})
	return err
}

func (s *Server) waitFor(ctx context.Context, done func() (Task, bool)) (Task, error) {
	for {
		s.mu.Lock()
		t, ok := done()
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return t, nil
		}
		select {
		case <-ctx.Done():
			return Task{}, fmt.Errorf("rpctest: %w", ctx.Err())
		case <-ch:
		}
	}
}

// notify wakes waiters; s.mu is held.
func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}
