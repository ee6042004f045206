package runner

import (
	"context"
	"time"

	"codeberg.org/provenix/provenix/usage"
)

// usageTimeout bounds publishing one job's usage record.
const usageTimeout = 10 * time.Second

// recordUsage records what the job cost (Connection.Usage): CPU and peak
// memory from its cgroup where it had one (every process it started, to
// the end), else from the job process's rusage; wall time from the task's
// start to now (its attestation included); the NAR bytes it attested and
// staged. A record that cannot be published is logged: the job's result
// does not depend on it.
func (r *Runner) recordUsage(ctx context.Context, t *taskRun) {
	c := t.conn
	if c.Usage == nil || c.Builder == nil {
		return
	}
	w := t.workflow
	rec := &usage.Record{
		Kind: usage.KindJob, Tenant: c.Builder.Tenant, Builder: c.Builder.BuilderID, Connection: c.Name,
		Forge: w.Server, Repository: w.Repository, Workflow: w.Workflow, Job: w.Job, RunID: w.RunID, TaskID: t.task.GetId(),
		Start: t.started.UTC(), End: time.Now().UTC(),
	}
	cpu, rss := usage.Process(t.proc)
	rec.CPUMicros, rec.CPUFrom = cpu.Microseconds(), usage.FromRusage
	if rss > 0 {
		rec.PeakMemory, rec.MemoryFrom = rss, usage.FromRusage
	}
	if s := t.box.used; s != nil {
		rec.CPUMicros, rec.CPUFrom = s.CPU.Microseconds(), usage.FromCgroup
		if s.PeakMemory > 0 {
			rec.PeakMemory, rec.MemoryFrom = s.PeakMemory, usage.FromCgroup
		}
	}
	t.mu.Lock()
	rec.BytesBuilt, rec.BytesStaged = t.built, t.staged
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), usageTimeout)
	defer cancel()
	if err := c.Usage.Record(ctx, rec); err != nil {
		r.log.Warn("recording the job's usage", "task", t.task.GetId(), "err", err)
		return
	}
	r.log.Debug("usage recorded", "task", t.task.GetId(), "cpu", rec.CPU(), "from", rec.CPUFrom, "built", rec.BytesBuilt, "staged", rec.BytesStaged)
}
