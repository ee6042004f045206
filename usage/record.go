// Package usage accounts for what Provenix work cost and whom to bill:
// one Record per runner job, farm build, volunteer rebuild, and per
// reader and minute of the cache server, published on NATS
// (usage.<tenant>.<scope> in the USAGE stream, queue.StreamUsage) and
// read back, checked and summed into a table a worker operator can bill
// from (Read, Aggregator, WriteTable, WriteCSV).
//
// A record is its publisher's word: a runner can lie about its own
// usage, within its own tenant and under its own builder id only (the
// NATS permissions of its user allow nothing else, and Read refuses a
// record whose builder does not own the subject it came on).
package usage

import (
	"crypto/rand"
	"errors"
	"fmt"
	"time"
)

// Version is the version of the Record wire format.
const Version = 1

// Kind is what a record accounts for.
type Kind string

// Kinds of records.
const (
	// KindJob is one forge job on a runner.
	KindJob Kind = "job"
	// KindFarm is one farm build (first builds of a build set).
	KindFarm Kind = "farm"
	// KindVolunteer is one volunteer rebuild (a vote for a quorum).
	KindVolunteer Kind = "volunteer"
	// KindServe is what a cache server served one reader of a tenant
	// over a window (batched: never one record per request).
	KindServe Kind = "serve"
)

// Where a measurement came from (Record.CPUFrom, Record.MemoryFrom).
const (
	// FromCgroup: the job's cgroup v2 (cpu.stat usage_usec,
	// memory.peak): every process of the job, also those it left
	// behind.
	FromCgroup = "cgroup"
	// FromRusage: getrusage of the reaped child (its waited-for
	// descendants included; processes it orphaned are not).
	FromRusage = "rusage"
)

// ErrInvalid: a record is malformed or breaks a rule of Validate.
var ErrInvalid = errors.New("usage: invalid record")

// maxText bounds each text field.
const maxText = 512

// Record is what one unit of work cost, and whom it is for.
type Record struct {
	Version int `json:"v"`
	// ID is unique per record: its Nats-Msg-Id (a retried publish is
	// stored once).
	ID   string `json:"id"`
	Kind Kind   `json:"kind"`
	// Tenant is billed: the NATS account's tenant.
	Tenant string `json:"tenant"`
	// Connection is the runner's forge connection (its name in the
	// runner's configuration), Forge the forge's URL.
	Connection string `json:"connection,omitempty"`
	Forge      string `json:"forge,omitempty"`
	// Repository, Workflow, Job and RunID name the forge job (as the
	// forge sent them, never the job), TaskID the forge's task.
	Repository string `json:"repository,omitempty"`
	Workflow   string `json:"workflow,omitempty"`
	Job        string `json:"job,omitempty"`
	RunID      string `json:"runId,omitempty"`
	TaskID     int64  `json:"taskId,omitempty"`
	// DrvPath is the derivation of a farm or volunteer build.
	DrvPath string `json:"drvPath,omitempty"`
	// Builder is the builder id that did the work (every kind but serve).
	Builder string `json:"builder,omitempty"`
	// Reader is the cache reader served (serve only): the authenticated
	// reader's name, or Anonymous.
	Reader string `json:"reader,omitempty"`
	// Start and End bound the work (for serve, the window).
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// CPUMicros is user plus system CPU time of the whole process tree,
	// in microseconds, measured as CPUFrom says.
	CPUMicros int64  `json:"cpuUsec"`
	CPUFrom   string `json:"cpuFrom,omitempty"`
	// PeakMemory is the peak memory in bytes: the cgroup's memory.peak
	// (all its processes together), or the largest process's maximum
	// resident set (rusage); MemoryFrom says which, "" when unknown.
	PeakMemory int64  `json:"peakMemory,omitempty"`
	MemoryFrom string `json:"memoryFrom,omitempty"`
	// BytesBuilt is the sum of the NAR sizes of the outputs the work
	// realised and attested; BytesStaged the bytes it uploaded to the
	// staging object store (NARs and closure exports not staged before).
	BytesBuilt  int64 `json:"bytesBuilt,omitempty"`
	BytesStaged int64 `json:"bytesStaged,omitempty"`
	// BytesServed and Requests are the cache server's (serve only).
	BytesServed int64 `json:"bytesServed,omitempty"`
	Requests    int64 `json:"requests,omitempty"`
}

// Anonymous is the Reader of requests without credentials.
const Anonymous = "anonymous"

// Wall is the record's wall time.
func (r *Record) Wall() time.Duration { return r.End.Sub(r.Start) }

// CPU is the record's CPU time.
func (r *Record) CPU() time.Duration { return time.Duration(r.CPUMicros) * time.Microsecond }

// NewID is a fresh record id.
func NewID() string { return rand.Text() }

// Validate checks a record's fields: a known kind and version, a tenant,
// a builder (a reader for serve), no negative amounts, an end not before
// the start, bounded text.
func (r *Record) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if r.Version != Version {
		return bad("version %d, want %d", r.Version, Version)
	}
	if r.ID == "" {
		return bad("no id")
	}
	switch r.Kind {
	case KindJob, KindFarm, KindVolunteer:
		if r.Builder == "" {
			return bad("%s record without a builder", r.Kind)
		}
		if r.Reader != "" || r.BytesServed != 0 || r.Requests != 0 {
			return bad("%s record with serve fields", r.Kind)
		}
	case KindServe:
		if r.Reader == "" {
			return bad("serve record without a reader")
		}
		if r.Builder != "" {
			return bad("serve record with a builder")
		}
	default:
		return bad("unknown kind %q", r.Kind)
	}
	if r.Tenant == "" {
		return bad("no tenant")
	}
	for name, s := range map[string]string{"id": r.ID, "tenant": r.Tenant, "connection": r.Connection, "forge": r.Forge,
		"repository": r.Repository, "workflow": r.Workflow, "job": r.Job, "run id": r.RunID, "derivation": r.DrvPath,
		"builder": r.Builder, "reader": r.Reader, "cpu source": r.CPUFrom, "memory source": r.MemoryFrom} {
		if len(s) > maxText {
			return bad("%s longer than %d bytes", name, maxText)
		}
	}
	for name, n := range map[string]int64{"cpu": r.CPUMicros, "peak memory": r.PeakMemory, "bytes built": r.BytesBuilt,
		"bytes staged": r.BytesStaged, "bytes served": r.BytesServed, "requests": r.Requests, "task id": r.TaskID} {
		if n < 0 {
			return bad("negative %s %d", name, n)
		}
	}
	if r.Start.IsZero() || r.End.Before(r.Start) {
		return bad("window %s to %s", r.Start.Format(time.RFC3339), r.End.Format(time.RFC3339))
	}
	return nil
}
