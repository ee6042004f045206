package rpctest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	pingv1 "code.gitea.io/actions-proto-go/ping/v1"
	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
)

// ---- request handling ----

// httpFailures answers injected bare-HTTP failures before the Connect
// handler sees the request.
func (s *Server) httpFailures(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		s.mu.Lock()
		fs := s.failures[method]
		if len(fs) > 0 && fs[0].status != 0 {
			status := fs[0].status
			s.failures[method] = fs[1:]
			s.calls = append(s.calls, Call{Method: method, Header: r.Header.Clone(),
				UUID: r.Header.Get(headerUUID), Token: r.Header.Get(headerToken), RequestKey: r.Header.Get(headerRequestKey),
				HTTPStatus: status, Code: httpCode(status)})
			s.notify()
			s.mu.Unlock()
			http.Error(w, http.StatusText(status), status)
			return
		}
		s.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// httpCode is how a Connect client reads a bare HTTP status.
func httpCode(status int) connect.Code {
	switch status {
	case 401:
		return connect.CodeUnauthenticated
	case 403:
		return connect.CodePermissionDenied
	case 404:
		return connect.CodeUnimplemented
	case 429, 502, 503, 504:
		return connect.CodeUnavailable
	}
	return connect.CodeUnknown
}

// handle records a call and runs fn under the server's lock, applying
// injected failures and authentication.
func handle[Req, Res any](s *Server, method string, req *connect.Request[Req], auth bool,
	fn func(r *Runner, msg *Req) (*Res, error),
) (*connect.Response[Res], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.notify()
	h := req.Header()
	c := Call{Method: method, Header: h.Clone(), UUID: h.Get(headerUUID), Token: h.Get(headerToken), RequestKey: h.Get(headerRequestKey)}
	if m, ok := any(req.Msg).(proto.Message); ok {
		c.Request = proto.Clone(m)
	}
	res, err := func() (*Res, error) {
		var lose bool
		if fs := s.failures[method]; len(fs) > 0 {
			s.failures[method] = fs[1:]
			if !fs[0].lose {
				return nil, connect.NewError(fs[0].code, errors.New("rpctest: injected failure"))
			}
			lose = true
		}
		var r *Runner
		if auth {
			r = s.runners[c.UUID]
			if r == nil || r.Token != c.Token || c.Token == "" {
				return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("unregistered runner"))
			}
		}
		res, err := fn(r, req.Msg)
		if err == nil && lose {
			c.Lost = true
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("rpctest: response lost"))
		}
		return res, err
	}()
	if err != nil {
		c.Code = connect.CodeOf(err)
	}
	s.calls = append(s.calls, c)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(res), nil
}

type pingService struct{ s *Server }

func (p pingService) Ping(_ context.Context, req *connect.Request[pingv1.PingRequest]) (*connect.Response[pingv1.PingResponse], error) {
	return handle(p.s, Ping, req, false, func(_ *Runner, m *pingv1.PingRequest) (*pingv1.PingResponse, error) {
		return &pingv1.PingResponse{Data: fmt.Sprintf("Hello, %s!", m.GetData())}, nil
	})
}

type runnerService struct{ s *Server }

func (rs runnerService) Register(_ context.Context, req *connect.Request[runnerv1.RegisterRequest]) (*connect.Response[runnerv1.RegisterResponse], error) {
	s := rs.s
	return handle(s, Register, req, false, func(_ *Runner, m *runnerv1.RegisterRequest) (*runnerv1.RegisterResponse, error) {
		if m.GetToken() == "" || m.GetName() == "" {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("missing runner token, name"))
		}
		if !s.regTokens[m.GetToken()] {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("runner registration token not found"))
		}
		labels := m.GetLabels()
		if len(labels) == 0 { // runners before Gitea 1.20 sent these
			labels = append(slices.Clone(m.GetAgentLabels()), m.GetCustomLabels()...)
		}
		r := &Runner{
			ID:        int64(len(s.runners) + 1),
			UUID:      randomUUID(),
			Token:     randomHex(20),
			Name:      m.GetName(),
			Version:   m.GetVersion(),
			Labels:    slices.Clone(labels),
			Ephemeral: m.GetEphemeral(),
		}
		s.runners[r.UUID] = r
		return &runnerv1.RegisterResponse{Runner: r.proto(true)}, nil
	})
}

func (r *Runner) proto(withToken bool) *runnerv1.Runner {
	p := &runnerv1.Runner{Id: r.ID, Uuid: r.UUID, Name: r.Name, Version: r.Version, Labels: slices.Clone(r.Labels), Ephemeral: r.Ephemeral}
	if withToken {
		p.Token = r.Token
	}
	return p
}

func (rs runnerService) Declare(_ context.Context, req *connect.Request[runnerv1.DeclareRequest]) (*connect.Response[runnerv1.DeclareResponse], error) {
	return handle(rs.s, Declare, req, true, func(r *Runner, m *runnerv1.DeclareRequest) (*runnerv1.DeclareResponse, error) {
		r.Version = m.GetVersion()
		r.Labels = slices.Clone(m.GetLabels())
		return &runnerv1.DeclareResponse{Runner: r.proto(false)}, nil
	})
}

func (rs runnerService) FetchTask(_ context.Context, req *connect.Request[runnerv1.FetchTaskRequest]) (*connect.Response[runnerv1.FetchTaskResponse], error) {
	s := rs.s
	key := req.Header().Get(headerRequestKey)
	return handle(s, FetchTask, req, true, func(r *Runner, m *runnerv1.FetchTaskRequest) (*runnerv1.FetchTaskResponse, error) {
		res := &runnerv1.FetchTaskResponse{TasksVersion: s.version}
		if key != "" {
			if ids := s.byKey[r.UUID+"/"+key]; len(ids) > 0 {
				// Forgejo 15: the runner retries a fetch whose answer it
				// did not get; give it the task it was assigned.
				res.Task = proto.Clone(s.tasks[ids[0]].proto).(*runnerv1.Task)
				return res, nil
			}
		}
		if m.GetTasksVersion() == s.version {
			return res, nil
		}
		for i, id := range s.queue {
			t := s.tasks[id]
			if !hasAll(r.Labels, t.runsOn) {
				continue
			}
			s.queue = slices.Delete(s.queue, i, i+1)
			t.Runner = r.UUID
			if key != "" {
				s.byKey[r.UUID+"/"+key] = append(s.byKey[r.UUID+"/"+key], id)
			}
			res.Task = proto.Clone(t.proto).(*runnerv1.Task)
			break
		}
		return res, nil
	})
}

func hasAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func (rs runnerService) UpdateTask(_ context.Context, req *connect.Request[runnerv1.UpdateTaskRequest]) (*connect.Response[runnerv1.UpdateTaskResponse], error) {
	s := rs.s
	return handle(s, UpdateTask, req, true, func(r *Runner, m *runnerv1.UpdateTaskRequest) (*runnerv1.UpdateTaskResponse, error) {
		id := m.GetState().GetId()
		t, ok := s.tasks[id]
		if !ok {
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("update task: task %d does not exist", id))
		}
		if t.Runner != r.UUID {
			return nil, connect.NewError(connect.CodePermissionDenied, errors.New("invalid runner for task"))
		}
		for k, v := range m.GetOutputs() {
			if _, ok := t.Outputs[k]; !ok {
				t.Outputs[k] = v
			}
		}
		if t.Result == runnerv1.Result_RESULT_UNSPECIFIED && m.GetState() != nil {
			t.State = proto.Clone(m.GetState()).(*runnerv1.TaskState)
			t.Result = m.GetState().GetResult()
		}
		sent := make([]string, 0, len(t.Outputs))
		for k := range t.Outputs {
			sent = append(sent, k)
		}
		slices.Sort(sent)
		return &runnerv1.UpdateTaskResponse{State: &runnerv1.TaskState{Id: id, Result: t.Result}, SentOutputs: sent}, nil
	})
}

func (rs runnerService) UpdateLog(_ context.Context, req *connect.Request[runnerv1.UpdateLogRequest]) (*connect.Response[runnerv1.UpdateLogResponse], error) {
	s := rs.s
	return handle(s, UpdateLog, req, true, func(r *Runner, m *runnerv1.UpdateLogRequest) (*runnerv1.UpdateLogResponse, error) {
		t, ok := s.tasks[m.GetTaskId()]
		if !ok {
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("get task: task %d does not exist", m.GetTaskId()))
		}
		if t.Runner != r.UUID {
			return nil, connect.NewError(connect.CodePermissionDenied, errors.New("invalid runner for task"))
		}
		ack := int64(len(t.Logs))
		rows := m.GetRows()
		// A gap (index beyond what is stored) or rows all stored already:
		// store nothing, tell the runner where the log stands.
		if len(rows) == 0 || m.GetIndex() > ack || m.GetIndex()+int64(len(rows)) <= ack {
			if m.GetNoMore() && m.GetIndex() <= ack {
				t.LogsClosed = true
			}
			return &runnerv1.UpdateLogResponse{AckIndex: ack}, nil
		}
		if t.LogsClosed {
			return nil, connect.NewError(connect.CodeAlreadyExists, errors.New("log file has been archived"))
		}
		for _, row := range rows[ack-m.GetIndex():] {
			t.Logs = append(t.Logs, proto.Clone(row).(*runnerv1.LogRow))
		}
		if m.GetNoMore() {
			t.LogsClosed = true
		}
		return &runnerv1.UpdateLogResponse{AckIndex: int64(len(t.Logs))}, nil
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func randomUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
