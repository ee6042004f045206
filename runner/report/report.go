// Package report turns a running job into the forge's view of it: one log
// per job (UpdateLog, acknowledged by index), one StepState per workflow
// step pointing into that log, the job's outputs and its result
// (UpdateTask). It also notices when the forge cancels the task.
//
// Every line is masked with the task's secrets before it is kept, so no
// secret reaches the forge even if the job process failed to mask it.
package report

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	"codeberg.org/provenix/provenix/internal/retry"
	"codeberg.org/provenix/provenix/runner/job"
)

// Client is the part of the forge client the reporter uses.
type Client interface {
	UpdateTask(ctx context.Context, req *runnerv1.UpdateTaskRequest) (*runnerv1.UpdateTaskResponse, error)
	UpdateLog(ctx context.Context, req *runnerv1.UpdateLogRequest) (*runnerv1.UpdateLogResponse, error)
}

// Options tune a Reporter.
type Options struct {
	// Interval between reports while the job runs (runner.report_interval).
	Interval time.Duration
	// Secrets are masked in every line; values shorter than 3 bytes are
	// not, as masking them would garble the log without hiding anything.
	Secrets []string
	// Debug keeps act's debug lines (ACTIONS_STEP_DEBUG / ACTIONS_RUNNER_DEBUG).
	Debug  bool
	Logger *slog.Logger
}

// Reporter is one task's report. Create it with New, Start it, feed it
// lines and events, and Close it with the result.
type Reporter struct {
	client Client
	opts   Options
	mask   *strings.Replacer

	mu        sync.Mutex
	state     *runnerv1.TaskState
	stepIndex map[string]int
	rows      []*runnerv1.LogRow // not yet acknowledged, from ackIndex on
	ackIndex  int64              // rows the forge has acknowledged
	total     int64              // rows produced so far
	outputs   map[string]string
	sent      map[string]bool
	closed    bool

	cancelOnce sync.Once
	cancelled  chan struct{}
	stop       chan struct{}
	loopDone   chan struct{}
}

// New prepares the report of task with the given steps.
func New(client Client, taskID int64, steps []job.Step, opts Options) *Reporter {
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Reporter{
		client:    client,
		opts:      opts,
		mask:      masker(opts.Secrets),
		state:     &runnerv1.TaskState{Id: taskID, StartedAt: timestamppb.Now()},
		stepIndex: map[string]int{},
		outputs:   map[string]string{},
		sent:      map[string]bool{},
		cancelled: make(chan struct{}),
		stop:      make(chan struct{}),
		loopDone:  make(chan struct{}),
	}
	for _, s := range steps {
		r.state.Steps = append(r.state.Steps, &runnerv1.StepState{Id: int64(s.Index)})
		r.stepIndex[s.ID] = s.Index
	}
	return r
}

func masker(secrets []string) *strings.Replacer {
	vals := []string{}
	for _, s := range secrets {
		if len(s) >= 3 {
			vals = append(vals, s)
			// A multi-line secret printed line by line must not leak either.
			for _, l := range strings.Split(s, "\n") {
				if l = strings.TrimSpace(l); len(l) >= 3 && l != s {
					vals = append(vals, l)
				}
			}
		}
	}
	// Longest first, so a secret containing another is masked whole.
	sort.Slice(vals, func(i, j int) bool { return len(vals[i]) > len(vals[j]) })
	pairs := make([]string, 0, 2*len(vals))
	for _, v := range vals {
		pairs = append(pairs, v, "***")
	}
	return strings.NewReplacer(pairs...)
}

// Start reports periodically until Close.
func (r *Reporter) Start(ctx context.Context) {
	go func() {
		defer close(r.loopDone)
		t := time.NewTicker(r.opts.Interval)
		defer t.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if err := r.flushLogs(ctx, false); err != nil {
					r.opts.Logger.Warn("log report failed; will retry", "task", r.state.Id, "err", err)
				}
				if err := r.reportState(ctx); err != nil {
					r.opts.Logger.Warn("state report failed; will retry", "task", r.state.Id, "err", err)
				}
			}
		}
	}()
}

// Cancelled is closed when the forge says the task is over (cancelled
// by a user, or failed by the server) while it still runs here.
func (r *Reporter) Cancelled() <-chan struct{} { return r.cancelled }

// Logf adds a line of the runner's own to the job's log.
func (r *Reporter) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addRow(time.Now(), fmt.Sprintf(format, args...))
}

// addRow appends one line, masked; mu held.
func (r *Reporter) addRow(t time.Time, msg string) {
	for _, line := range strings.Split(strings.TrimRight(msg, "\n"), "\n") {
		r.rows = append(r.rows, &runnerv1.LogRow{Time: timestamppb.New(t), Content: r.mask.Replace(line)})
		r.total++
	}
}

// Event takes one event from the job process.
func (r *Reporter) Event(ev job.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev.Done {
		for k, v := range ev.Outputs {
			r.outputs[k] = r.mask.Replace(v)
		}
		return
	}
	var step *runnerv1.StepState
	if i, ok := r.stepIndex[ev.Step]; ok && ev.Stage == "Main" {
		step = r.state.Steps[i]
	}
	visible := ev.Raw || ev.Level != "debug" || r.opts.Debug
	if step != nil && step.StartedAt == nil && (visible || ev.StepResult != "") {
		step.StartedAt = timestamppb.New(ev.Time)
		step.LogIndex = r.total
	}
	if visible && ev.Msg != "" {
		r.addRow(ev.Time, ev.Msg)
	}
	if step != nil {
		step.LogLength = r.total - step.LogIndex
		if ev.StepResult != "" && step.Result == runnerv1.Result_RESULT_UNSPECIFIED {
			step.Result = Result(ev.StepResult)
			step.StoppedAt = timestamppb.New(ev.Time)
		}
	}
}

// Result maps act's result words to the protocol's.
func Result(s string) runnerv1.Result {
	switch strings.ToLower(s) {
	case "success":
		return runnerv1.Result_RESULT_SUCCESS
	case "failure":
		return runnerv1.Result_RESULT_FAILURE
	case "cancelled":
		return runnerv1.Result_RESULT_CANCELLED
	case "skipped":
		return runnerv1.Result_RESULT_SKIPPED
	}
	return runnerv1.Result_RESULT_UNSPECIFIED
}

// flushLogs sends the rows the forge has not acknowledged.
func (r *Reporter) flushLogs(ctx context.Context, noMore bool) error {
	r.mu.Lock()
	req := &runnerv1.UpdateLogRequest{TaskId: r.state.Id, Index: r.ackIndex, Rows: append([]*runnerv1.LogRow(nil), r.rows...), NoMore: noMore}
	r.mu.Unlock()
	if len(req.Rows) == 0 && !noMore {
		return nil
	}
	resp, err := r.client.UpdateLog(ctx, req)
	if err != nil {
		return fmt.Errorf("update log: %w", err)
	}
	ack := resp.GetAckIndex()
	r.mu.Lock()
	defer r.mu.Unlock()
	if ack < r.ackIndex || ack > r.ackIndex+int64(len(r.rows)) {
		return fmt.Errorf("update log: forge acknowledged %d, expected %d..%d", ack, r.ackIndex, r.ackIndex+int64(len(r.rows)))
	}
	r.rows = r.rows[ack-r.ackIndex:]
	r.ackIndex = ack
	if noMore && len(r.rows) > 0 {
		return fmt.Errorf("update log: %d rows not acknowledged", len(r.rows))
	}
	return nil
}

// reportState sends the task state and the outputs not yet sent.
func (r *Reporter) reportState(ctx context.Context) error {
	r.mu.Lock()
	st := cloneState(r.state)
	outs := map[string]string{}
	for k, v := range r.outputs {
		if !r.sent[k] {
			outs[k] = v
		}
	}
	running := !r.closed
	r.mu.Unlock()
	resp, err := r.client.UpdateTask(ctx, &runnerv1.UpdateTaskRequest{State: st, Outputs: outs})
	if err != nil {
		return fmt.Errorf("update task: %w", err)
	}
	r.mu.Lock()
	for _, k := range resp.GetSentOutputs() {
		r.sent[k] = true
	}
	r.mu.Unlock()
	if running && resp.GetState().GetResult() != runnerv1.Result_RESULT_UNSPECIFIED {
		r.cancelOnce.Do(func() { close(r.cancelled) })
	}
	return nil
}

func cloneState(s *runnerv1.TaskState) *runnerv1.TaskState {
	c := &runnerv1.TaskState{Id: s.Id, Result: s.Result, StartedAt: s.StartedAt, StoppedAt: s.StoppedAt}
	for _, st := range s.Steps {
		c.Steps = append(c.Steps, &runnerv1.StepState{Id: st.Id, Result: st.Result, StartedAt: st.StartedAt, StoppedAt: st.StoppedAt, LogIndex: st.LogIndex, LogLength: st.LogLength})
	}
	return c
}

// ErrIncomplete is returned by Close when the forge could not be told
// everything before ctx ended.
var ErrIncomplete = errors.New("report incomplete")

// finalRetry spaces Close's attempts: from 200 ms, doubling up to 6.4 s,
// until ctx ends.
var finalRetry = retry.Policy{Initial: 200 * time.Millisecond, Max: 6400 * time.Millisecond}

// Close ends the report: steps still open get the job's result, logs are
// flushed with no_more, then outputs and the result are sent. It retries
// until the forge has everything or ctx ends.
func (r *Reporter) Close(ctx context.Context, result runnerv1.Result) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	now := timestamppb.Now()
	for _, st := range r.state.Steps {
		if st.Result == runnerv1.Result_RESULT_UNSPECIFIED {
			// A step that never ran: skipped after a failure, or cut short.
			st.Result = runnerv1.Result_RESULT_SKIPPED
			if st.StartedAt != nil {
				st.Result = result
				st.StoppedAt = now
			}
		}
	}
	r.mu.Unlock()
	close(r.stop)
	<-r.loopDone

	final := func(what string, f func() error) error {
		var last error
		p := finalRetry
		p.OnRetry = func(_ int, _ time.Duration, err error) {
			r.opts.Logger.Warn("final report failed; retrying", "task", r.state.Id, "what", what, "err", err)
		}
		if err := retry.Do(ctx, p, func(int) error { last = f(); return last }); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrIncomplete, what, last)
		}
		return nil
	}
	if err := final("logs", func() error { return r.flushLogs(ctx, true) }); err != nil {
		return err
	}
	// Outputs first, while the task is still running: the forge accepts
	// outputs only for a task that has not finished.
	if err := final("outputs", func() error {
		if err := r.reportState(ctx); err != nil {
			return err
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for k := range r.outputs {
			if !r.sent[k] {
				return fmt.Errorf("output %q not acknowledged", k)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	r.mu.Lock()
	r.state.Result = result
	r.state.StoppedAt = now
	r.mu.Unlock()
	return final("result", func() error { return r.reportState(ctx) })
}
