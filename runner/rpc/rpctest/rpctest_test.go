package rpctest

import (
	"reflect"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"

	"codeberg.org/provenix/provenix/internal/testctx"
)

// client is a bare Connect client, so these tests exercise the server and
// not the runner's client.
type client struct {
	rc          runnerv1connect.RunnerServiceClient
	uuid, token string
}

func newClient(s *Server, r Runner) *client {
	return &client{rc: runnerv1connect.NewRunnerServiceClient(s.Client(), s.URL+apiPath), uuid: r.UUID, token: r.Token}
}

func req[T any](c *client, m *T) *connect.Request[T] {
	r := connect.NewRequest(m)
	r.Header().Set(headerUUID, c.uuid)
	r.Header().Set(headerToken, c.token)
	return r
}

func setup(t *testing.T) (*Server, *client, int64) {
	s := New(t)
	r := s.AddRunner(Runner{UUID: "u-1", Token: "t-1", Labels: []string{"nix"}})
	c := newClient(s, r)
	id := s.AddTask(&runnerv1.Task{})
	res, err := c.rc.FetchTask(testctx.New(t, 10*time.Second), req(c, &runnerv1.FetchTaskRequest{}))
	if err != nil || res.Msg.GetTask().GetId() != id {
		t.Fatalf("FetchTask: %v, %v", res, err)
	}
	return s, c, id
}

func rows(lines ...string) []*runnerv1.LogRow {
	out := make([]*runnerv1.LogRow, len(lines))
	for i, l := range lines {
		out[i] = &runnerv1.LogRow{Content: l}
	}
	return out
}

func TestUpdateLog(t *testing.T) {
	type step struct {
		index   int64
		rows    []string
		noMore  bool
		wantAck int64
		wantErr connect.Code
	}
	tests := []struct {
		name       string
		steps      []step
		wantLines  []string
		wantClosed bool
	}{
		{name: "contiguous", steps: []step{{0, []string{"a", "b"}, false, 2, 0}, {2, []string{"c"}, true, 3, 0}}, wantLines: []string{"a", "b", "c"}, wantClosed: true},
		{name: "resend overlapping", steps: []step{{0, []string{"a", "b"}, false, 2, 0}, {1, []string{"b", "c"}, false, 3, 0}}, wantLines: []string{"a", "b", "c"}},
		{name: "resend already stored", steps: []step{{0, []string{"a", "b"}, false, 2, 0}, {0, []string{"a"}, false, 2, 0}}, wantLines: []string{"a", "b"}},
		{name: "gap is not stored", steps: []step{{0, []string{"a"}, false, 1, 0}, {3, []string{"d"}, false, 1, 0}}, wantLines: []string{"a"}},
		{name: "close without rows", steps: []step{{0, []string{"a"}, false, 1, 0}, {1, nil, true, 1, 0}}, wantLines: []string{"a"}, wantClosed: true},
		{name: "close beyond a gap is not a close", steps: []step{{0, []string{"a"}, false, 1, 0}, {5, nil, true, 1, 0}}, wantLines: []string{"a"}},
		{name: "rows after close", steps: []step{{0, []string{"a"}, true, 1, 0}, {1, []string{"b"}, false, 0, connect.CodeAlreadyExists}, {0, []string{"a"}, true, 1, 0}}, wantLines: []string{"a"}, wantClosed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c, id := setup(t)
			for i, st := range tt.steps {
				res, err := c.rc.UpdateLog(testctx.New(t, 10*time.Second), req(c, &runnerv1.UpdateLogRequest{TaskId: id, Index: st.index, Rows: rows(st.rows...), NoMore: st.noMore}))
				if st.wantErr != 0 {
					if connect.CodeOf(err) != st.wantErr {
						t.Fatalf("step %d: err %v, want %v", i, err, st.wantErr)
					}
					continue
				}
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if res.Msg.GetAckIndex() != st.wantAck {
					t.Errorf("step %d: ack %d, want %d", i, res.Msg.GetAckIndex(), st.wantAck)
				}
			}
			task, _ := s.Task(id)
			if !reflect.DeepEqual(task.LogLines(), tt.wantLines) || task.LogsClosed != tt.wantClosed {
				t.Errorf("log %q closed %v, want %q closed %v", task.LogLines(), task.LogsClosed, tt.wantLines, tt.wantClosed)
			}
		})
	}
}

func TestUpdateTaskAndCancel(t *testing.T) {
	s, c, id := setup(t)
	up := func(result runnerv1.Result, outputs map[string]string) *runnerv1.UpdateTaskResponse {
		t.Helper()
		res, err := c.rc.UpdateTask(testctx.New(t, 10*time.Second), req(c, &runnerv1.UpdateTaskRequest{State: &runnerv1.TaskState{Id: id, Result: result}, Outputs: outputs}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg
	}
	res := up(runnerv1.Result_RESULT_UNSPECIFIED, map[string]string{"a": "1"})
	if res.GetState().GetResult() != runnerv1.Result_RESULT_UNSPECIFIED || !reflect.DeepEqual(res.GetSentOutputs(), []string{"a"}) {
		t.Errorf("running: %v", res)
	}
	res = up(runnerv1.Result_RESULT_UNSPECIFIED, map[string]string{"a": "changed", "b": "2"})
	if !reflect.DeepEqual(res.GetSentOutputs(), []string{"a", "b"}) {
		t.Errorf("sent outputs %q", res.GetSentOutputs())
	}
	if err := s.Cancel(id); err != nil {
		t.Fatal(err)
	}
	if res = up(runnerv1.Result_RESULT_UNSPECIFIED, nil); res.GetState().GetResult() != runnerv1.Result_RESULT_CANCELLED {
		t.Errorf("after Cancel: result %v, want CANCELLED", res.GetState().GetResult())
	}
	if res = up(runnerv1.Result_RESULT_SUCCESS, nil); res.GetState().GetResult() != runnerv1.Result_RESULT_CANCELLED {
		t.Errorf("a result after Cancel changed it to %v", res.GetState().GetResult())
	}
	if _, err := c.rc.UpdateLog(testctx.New(t, 10*time.Second), req(c, &runnerv1.UpdateLogRequest{TaskId: id, NoMore: true})); err != nil {
		t.Fatal(err)
	}
	task, err := s.WaitTask(testctx.New(t, 10*time.Second), id)
	if err != nil {
		t.Fatal(err)
	}
	if task.Result != runnerv1.Result_RESULT_CANCELLED || task.Outputs["a"] != "1" {
		t.Errorf("task %+v", task)
	}
}

func TestFetchTask(t *testing.T) {
	s := New(t)
	r := s.AddRunner(Runner{UUID: "u-1", Token: "t-1", Labels: []string{"nix"}})
	c := newClient(s, r)
	fetch := func(version int64, key string) *runnerv1.FetchTaskResponse {
		t.Helper()
		rq := req(c, &runnerv1.FetchTaskRequest{TasksVersion: version})
		if key != "" {
			rq.Header().Set(headerRequestKey, key)
		}
		res, err := c.rc.FetchTask(testctx.New(t, 10*time.Second), rq)
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg
	}
	if res := fetch(0, ""); res.GetTask() != nil || res.GetTasksVersion() != 0 {
		t.Fatalf("empty forge: %v", res)
	}
	s.AddTask(&runnerv1.Task{Id: 10}, "nix-aarch64-linux") // not for this runner
	s.AddTask(&runnerv1.Task{Id: 11})
	if res := fetch(2, ""); res.GetTask() != nil {
		t.Errorf("a runner at the current tasks_version got a task")
	}
	res := fetch(0, "k1")
	if res.GetTask().GetId() != 11 || res.GetTasksVersion() != 2 {
		t.Fatalf("got %v, want task 11 at version 2", res)
	}
	if again := fetch(0, "k1"); again.GetTask().GetId() != 11 {
		t.Errorf("same request key: got %v, want task 11 again", again)
	}
	if other := fetch(0, "k2"); other.GetTask() != nil {
		t.Errorf("new request key: got %v, want no task", other)
	}

	bad := &client{rc: c.rc, uuid: r.UUID, token: "wrong"}
	if _, err := bad.rc.FetchTask(testctx.New(t, 10*time.Second), req(bad, &runnerv1.FetchTaskRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("wrong token: %v", err)
	}
	if calls := s.CallsTo(FetchTask); calls[len(calls)-1].Code != connect.CodeUnauthenticated {
		t.Errorf("last call recorded with code %v", calls[len(calls)-1].Code)
	}
}

func TestRegisterSecret(t *testing.T) {
	s := New(t)
	r, err := s.RegisterSecret("x", "7c31591e8b67225a116d4a4519ea8e507e08f71f")
	if err != nil {
		t.Fatal(err)
	}
	if r.UUID != "37633331-3539-3165-3862-363732323561" {
		t.Errorf("uuid %s", r.UUID)
	}
	if _, err := s.RegisterSecret("x", "short"); err == nil {
		t.Error("short secret accepted")
	}
}
