package report

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"

	"codeberg.org/provenix/provenix/runner/job"
)

// fakeForge acknowledges logs as a forge does, optionally only part of a
// batch, and can answer UpdateTask with a server-side result.
type fakeForge struct {
	mu       sync.Mutex
	rows     []string
	ackLimit int // ack at most this many new rows per call (0: all)
	failLogs int
	states   []*runnerv1.TaskState
	outputs  map[string]string
	answer   runnerv1.Result
	noMore   bool
}

func (f *fakeForge) UpdateLog(_ context.Context, r *runnerv1.UpdateLogRequest) (*runnerv1.UpdateLogResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failLogs > 0 {
		f.failLogs--
		return nil, errors.New("unavailable")
	}
	if r.Index != int64(len(f.rows)) {
		return &runnerv1.UpdateLogResponse{AckIndex: int64(len(f.rows))}, nil
	}
	n := len(r.Rows)
	if f.ackLimit > 0 && n > f.ackLimit {
		n = f.ackLimit
	}
	for _, row := range r.Rows[:n] {
		f.rows = append(f.rows, row.Content)
	}
	f.noMore = r.NoMore && n == len(r.Rows)
	return &runnerv1.UpdateLogResponse{AckIndex: int64(len(f.rows))}, nil
}

func (f *fakeForge) UpdateTask(_ context.Context, r *runnerv1.UpdateTaskRequest) (*runnerv1.UpdateTaskResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states = append(f.states, r.State)
	if f.outputs == nil {
		f.outputs = map[string]string{}
	}
	var sent []string
	for k, v := range r.Outputs {
		f.outputs[k] = v
	}
	for k := range f.outputs {
		sent = append(sent, k)
	}
	return &runnerv1.UpdateTaskResponse{State: &runnerv1.TaskState{Id: r.State.Id, Result: f.answer}, SentOutputs: sent}, nil
}

func TestReportStepsLogsAndMasking(t *testing.T) {
	ff := &fakeForge{ackLimit: 2, failLogs: 1}
	steps := []job.Step{{Index: 0, ID: "a"}, {Index: 1, ID: "1"}, {Index: 2, ID: "never"}}
	r := New(ff, 9, steps, Options{Interval: 10 * time.Millisecond, Secrets: []string{"hunter2", "line-one\nline-two", "x"}})
	r.Start(context.Background())
	now := time.Now()
	r.Logf("set up with hunter2")
	r.Event(job.Event{Time: now, Step: "a", Stage: "Main", Msg: "⭐ Run Main a"})
	r.Event(job.Event{Time: now, Step: "a", Stage: "Main", Raw: true, Msg: "pw=hunter2 and line-two"})
	r.Event(job.Event{Time: now, Step: "a", Stage: "Main", Level: "debug", Msg: "noise"})
	r.Event(job.Event{Time: now, Step: "a", Stage: "Main", StepResult: "success", Msg: "✅ Success"})
	r.Event(job.Event{Time: now, Step: "1", Stage: "Main", Level: "debug", StepResult: "skipped", Msg: "Skipping"})
	r.Event(job.Event{Time: now, Step: "a", Stage: "Post", Msg: "post of a", StepResult: "success"})
	r.Event(job.Event{Done: true, JobResult: "success", Outputs: map[string]string{"o": "hunter2!"}})
	if err := r.Close(context.Background(), runnerv1.Result_RESULT_SUCCESS); err != nil {
		t.Fatal(err)
	}
	all := strings.Join(ff.rows, "\n")
	if strings.Contains(all, "hunter2") || strings.Contains(all, "line-two") || strings.Contains(all, "noise") {
		t.Fatalf("log:\n%s", all)
	}
	if !strings.Contains(all, "pw=*** and ***") || !ff.noMore {
		t.Fatalf("log (noMore %v):\n%s", ff.noMore, all)
	}
	if ff.outputs["o"] != "***!" {
		t.Errorf("outputs %v", ff.outputs)
	}
	final := ff.states[len(ff.states)-1]
	if final.Result != runnerv1.Result_RESULT_SUCCESS {
		t.Fatalf("final %v", final)
	}
	a, skipped, never := final.Steps[0], final.Steps[1], final.Steps[2]
	if a.Result != runnerv1.Result_RESULT_SUCCESS || a.LogIndex != 1 || a.LogLength != 3 {
		t.Errorf("step a %v", a)
	}
	if got := ff.rows[a.LogIndex : a.LogIndex+a.LogLength]; got[1] != "pw=*** and ***" {
		t.Errorf("step a lines %q", got)
	}
	if skipped.Result != runnerv1.Result_RESULT_SKIPPED || skipped.LogLength != 0 {
		t.Errorf("skipped step %v", skipped)
	}
	if never.Result != runnerv1.Result_RESULT_SKIPPED {
		t.Errorf("step that never ran %v", never)
	}
	// Outputs went out before the result.
	for i, s := range ff.states {
		if s.Result != runnerv1.Result_RESULT_UNSPECIFIED && i == 0 {
			t.Errorf("result sent before outputs")
		}
	}
}

func TestReportNoticesServerCancel(t *testing.T) {
	ff := &fakeForge{answer: runnerv1.Result_RESULT_CANCELLED}
	r := New(ff, 1, nil, Options{Interval: 10 * time.Millisecond})
	r.Start(context.Background())
	select {
	case <-r.Cancelled():
	case <-time.After(5 * time.Second):
		t.Fatal("cancel not noticed")
	}
	if err := r.Close(context.Background(), runnerv1.Result_RESULT_CANCELLED); err != nil {
		t.Fatal(err)
	}
}
