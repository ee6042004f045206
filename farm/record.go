package farm

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/storepath"
)

// RecordVersion is the format version of every record and message of
// this package.
const RecordVersion = 1

// Keys in queue.BucketFarm. A derivation is named by its .drv path's
// hash part, unique in a set.
func setKey(id string) string          { return queue.FarmSetPrefix + "." + id }
func nodePrefix(id string) string      { return queue.FarmNodePrefix + "." + id }
func nodeKey(id, drv string) string    { return nodePrefix(id) + "." + hashOf(drv) }
func statePrefix(id string) string     { return queue.FarmStatePrefix + "." + id }
func stateKey(id, drv string) string   { return statePrefix(id) + "." + hashOf(drv) }
func classPrefix(tenant string) string { return queue.FarmClassPrefix + "." + tenant }

func classKey(tenant, system, class string) string {
	return classPrefix(tenant) + "." + system + "." + class
}

const setPrefix = "set"

func hashOf(p string) string {
	h, _, _ := strings.Cut(path.Base(p), "-")
	return h
}

// Set is a build set's record (set.<id>): written at submission, changed
// only to cancel it or to mark it finished.
type Set struct {
	Version int       `json:"version"`
	ID      string    `json:"id"`
	Tenant  string    `json:"tenant"`
	Created time.Time `json:"created"`
	// Roots are the derivations asked for; the set is their closure.
	Roots []string `json:"roots"`
	// Size is the number of derivations (node records) in the set.
	Size int `json:"size"`
	// Quorum is how many distinct owners build each derivation.
	Quorum int `json:"quorum"`
	// MaxAttempts bounds the failed builds of one derivation before it
	// fails for good and blocks its dependents.
	MaxAttempts int `json:"maxAttempts"`
	// Closure is the staging key of the set's .drv closure export, or
	// empty (StageClosure).
	Closure  string     `json:"closure,omitempty"`
	Canceled *time.Time `json:"canceled,omitempty"`
	// Finished is when a scheduler found every derivation final.
	Finished *time.Time `json:"finished,omitempty"`
}

// Closed reports whether schedulers are done with the set: finished or
// cancelled.
func (s *Set) Closed() bool { return s.Finished != nil || s.Canceled != nil }

// Status is where a derivation of a set stands.
type Status string

const (
	// Waiting: some output it needs from its inputs is not visible yet.
	Waiting Status = "waiting"
	// Dispatched: its requests are on the work queue or being built.
	Dispatched Status = "dispatched"
	// Done: every output is visible in the cache (State.Skipped: it was
	// at submission).
	Done Status = "done"
	// Failed: its builds failed MaxAttempts times.
	Failed Status = "failed"
	// Blocked: an input failed (State.BlockedBy).
	Blocked Status = "blocked"
)

// Final reports whether nothing more happens to a derivation in s.
func (s Status) Final() bool { return s == Done || s == Failed || s == Blocked }

// State is a derivation's state in a set (state.<id>.<hash>), only
// changed with compare-and-set.
type State struct {
	Version int    `json:"version"`
	DrvPath string `json:"drvPath"`
	Status  Status `json:"status"`
	// Skipped: its outputs were visible when the set was submitted.
	Skipped bool `json:"skipped,omitempty"`
	// Visible are the names of its outputs seen visible.
	Visible []string `json:"visible,omitempty"`
	// Have are the store paths it needs from its inputs seen visible.
	Have []string `json:"have,omitempty"`
	// Attempts is, per replica, the attempt its current request is for
	// (1 for the first); empty until dispatched.
	Attempts []int `json:"attempts,omitempty"`
	// Requests is, per replica, the stream sequence of its current
	// request in the FARM work queue (0: not known), so that a request
	// dropped without a build is sent again (Scheduler.requeue).
	Requests []uint64 `json:"requests,omitempty"`
	// Displaced is, per replica, the builders whose claims on its
	// current attempt the scheduler sent the request again past (their
	// claims said it was built, for too long: Scheduler.requeue). Their
	// claims hold nothing there.
	Displaced [][]string `json:"displaced,omitempty"`
	// Held is, per replica, who the scheduler has seen holding its
	// current request and since when (Scheduler.requeue), kept here so
	// that a scheduler restarted more often than HoldTimeout still sends
	// a request kept for good again.
	Held []Hold `json:"held,omitempty"`
	// Failures are the failed builds, oldest first.
	Failures []Failure `json:"failures,omitempty"`
	// Disputes counts the cache's disputes on its outputs (builders
	// disagreeing) that made the scheduler dispatch more replicas.
	Disputes int `json:"disputes,omitempty"`
	// Voters are the builders of the last dispute's answers: its extra
	// replicas go to others (sent again too, see Scheduler.requeue).
	Voters    []string `json:"voters,omitempty"`
	BlockedBy string   `json:"blockedBy,omitempty"`
	// Dispatched is when the first requests were published.
	Dispatched *time.Time `json:"dispatched,omitempty"`
	Updated    time.Time  `json:"updated"`
}

// Failure is one failed build.
type Failure struct {
	Replica  int    `json:"replica"`
	Attempt  int    `json:"attempt"`
	Builder  string `json:"builder"`
	Owner    string `json:"owner,omitempty"`
	ExitCode int    `json:"exitCode"`
	// Rejected is the cache's reason when the build ran but the cache
	// refused its result (its NAR disagrees with others', say).
	Rejected string    `json:"rejected,omitempty"`
	Log      []string  `json:"log,omitempty"`
	Time     time.Time `json:"time"`
}

// disputed reports whether the cache refused a result of the
// derivation, or its builders disagreed.
func (s *State) disputed() bool {
	return s.Disputes > 0 || slices.ContainsFunc(s.Failures, func(f Failure) bool { return f.Rejected != "" })
}

// displaced reports whether c's replica was sent again past c.
func (s *State) displaced(c *Claim) bool {
	return c.Replica >= 0 && c.Replica < len(s.Displaced) && c.Replica < len(s.Attempts) &&
		c.Attempt == s.Attempts[c.Replica] && slices.Contains(s.Displaced[c.Replica], c.Builder)
}

// displace records that replica's request was sent again past the
// claims of builders.
func (s *State) displace(replica int, builders []string) {
	for len(s.Displaced) <= replica {
		s.Displaced = append(s.Displaced, nil)
	}
	s.Displaced[replica] = append(s.Displaced[replica], builders...)
	slices.Sort(s.Displaced[replica])
	s.Displaced[replica] = slices.Compact(s.Displaced[replica])
}

// setRequest records that replica's current request is stored at seq.
func (s *State) setRequest(replica int, seq uint64) {
	for len(s.Requests) <= replica {
		s.Requests = append(s.Requests, 0)
	}
	s.Requests[replica] = seq
	if replica < len(s.Held) {
		s.Held[replica] = Hold{} // it was the old message's
	}
}

// Hold is who has been seen holding one request message, and since when
// the count runs.
type Hold struct {
	// Msg is the request's stream sequence; 0 when none was seen held.
	Msg   uint64    `json:"msg,omitempty"`
	Since time.Time `json:"since,omitzero"`
	// Builders are the builders seen holding it by a claim; none when
	// only a worker without a claim was.
	Builders []string `json:"builders,omitempty"`
}

// hold records replica's request, stored at msg, seen held now by
// builder (or, "", by a worker that wrote no claim), and returns since
// when the count runs and every builder seen holding it; changed says
// whether s changed. A builder not seen on msg before starts the count
// again (an honest worker that took over from one that crashed gets its
// own HoldTimeout); one seen before, or "", does not, so that a keeper
// cannot start it again by withdrawing its claim, or by handing it to
// another builder id and back.
func (s *State) hold(replica int, msg uint64, builder string, now time.Time) (since time.Time, builders []string, changed bool) {
	for len(s.Held) <= replica {
		s.Held = append(s.Held, Hold{})
	}
	h := &s.Held[replica]
	if h.Msg != msg {
		*h, changed = Hold{Msg: msg, Since: now}, true
	}
	if builder != "" && !slices.Contains(h.Builders, builder) {
		h.Since, h.Builders, changed = now, append(h.Builders, builder), true
	}
	return h.Since, slices.Clone(h.Builders), changed
}

func (s *State) hasFailure(replica, attempt int) bool {
	return slices.ContainsFunc(s.Failures, func(f Failure) bool { return f.Replica == replica && f.Attempt == attempt })
}

// failedBuilders are the builders that failed this derivation: a retry
// goes to another.
func (s *State) failedBuilders() []string {
	var out []string
	for _, f := range s.Failures {
		out = append(out, f.Builder)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Request asks a worker to build one replica of a derivation. Nothing in
// it is signed: a worker builds what DrvPath names (Nix checks the
// outputs are the ones the .drv gives) and attests what it got.
type Request struct {
	Version  int               `json:"version"`
	Set      string            `json:"set"`
	Tenant   string            `json:"tenant"`
	DrvPath  string            `json:"drvPath"`
	System   string            `json:"system"`
	Features []string          `json:"features,omitempty"`
	Outputs  map[string]string `json:"outputs"`
	Replica  int               `json:"replica"`
	Attempt  int               `json:"attempt"`
	// Exclude are builders that failed this derivation already.
	Exclude []string `json:"exclude,omitempty"`
	// Closure is the staging key of the set's .drv closure export
	// (Set.Closure), or empty.
	Closure   string    `json:"closure,omitempty"`
	Requested time.Time `json:"requested"`
}

// MsgID is the request's Nats-Msg-Id: one per set, derivation, replica
// and attempt, whoever publishes it.
func (r *Request) MsgID() string {
	return "farm:" + r.Set + ":" + hashOf(r.DrvPath) + ":" + strconv.Itoa(r.Replica) + ":" + strconv.Itoa(r.Attempt)
}

// Subject is where the request goes.
func (r *Request) Subject() (string, error) {
	return queue.FarmBuildSubject(r.Tenant, r.System, FeatureClass(r.Features))
}

// Validate checks the fields' shapes.
func (r *Request) Validate() error {
	switch {
	case r.Version != RecordVersion:
		return fmt.Errorf("%w: request version %d", ErrInvalid, r.Version)
	case validID(r.Set) != nil:
		return fmt.Errorf("%w: request set %q", ErrInvalid, r.Set)
	case queue.ValidToken(r.Tenant) != nil || queue.ValidToken(r.System) != nil:
		return fmt.Errorf("%w: request tenant %q or system %q", ErrInvalid, r.Tenant, r.System)
	case storepath.Check(r.DrvPath) != nil || !strings.HasSuffix(r.DrvPath, ".drv"):
		return fmt.Errorf("%w: request drvPath %q", ErrInvalid, r.DrvPath)
	case len(r.Outputs) == 0:
		return fmt.Errorf("%w: request without outputs", ErrInvalid)
	case r.Replica < 0 || r.Attempt < 1:
		return fmt.Errorf("%w: request replica %d attempt %d", ErrInvalid, r.Replica, r.Attempt)
	case r.Closure != "" && !strings.HasPrefix(r.Closure, "closure/"):
		return fmt.Errorf("%w: request closure key %q", ErrInvalid, r.Closure)
	}
	for _, p := range r.Outputs {
		if storepath.Check(p) != nil {
			return fmt.Errorf("%w: request output %q", ErrInvalid, p)
		}
	}
	return nil
}

// DecodeRequest parses and validates a request.
func DecodeRequest(b []byte) (*Request, error) {
	r, err := queue.DecodeFarmMessage[Request](b, "request")
	if err != nil {
		return nil, fmt.Errorf("%w: request: %w", ErrInvalid, err)
	}
	return r, nil
}

// Outcome of a build, as a worker reports it.
type Outcome string

const (
	// Built: the worker built the derivation and published its result;
	// the cache decides when its outputs are visible.
	Built Outcome = "built"
	// BuildFailed: the build failed (Nix exited non-zero).
	BuildFailed Outcome = "failed"
)

// Report is a worker's word on one request, published on its builder's
// subject (Subject: the NATS user of a runner may publish its own
// builder's reports only).
type Report struct {
	Version  int     `json:"version"`
	Set      string  `json:"set"`
	Tenant   string  `json:"tenant"`
	DrvPath  string  `json:"drvPath"`
	Replica  int     `json:"replica"`
	Attempt  int     `json:"attempt"`
	Builder  string  `json:"builder"`
	Owner    string  `json:"owner,omitempty"`
	Outcome  Outcome `json:"outcome"`
	ExitCode int     `json:"exitCode,omitempty"`
	// Log is the last lines of a failed build's log.
	Log []string `json:"log,omitempty"`
	// CPUSeconds is the user+system time of the build's processes.
	CPUSeconds float64   `json:"cpuSeconds,omitempty"`
	WallMillis int64     `json:"wallMillis,omitempty"`
	Time       time.Time `json:"time"`
}

// MsgID is the report's Nats-Msg-Id: one per request and builder.
func (r *Report) MsgID() string {
	return "report:" + r.Set + ":" + hashOf(r.DrvPath) + ":" + strconv.Itoa(r.Replica) + ":" + strconv.Itoa(r.Attempt) + ":" + builderDigest(r.Builder)
}

// Subject is where r goes: its tenant's and builder's report subject.
func (r *Report) Subject() (string, error) {
	return queue.FarmReportSubject(r.Tenant, r.Builder)
}

// Validate checks the fields' shapes.
func (r *Report) Validate() error {
	if r.Version != RecordVersion || validID(r.Set) != nil || storepath.Check(r.DrvPath) != nil || r.Builder == "" ||
		(r.Outcome != Built && r.Outcome != BuildFailed) || r.Replica < 0 || r.Attempt < 1 {
		return fmt.Errorf("%w: report for %q by %q", ErrInvalid, r.DrvPath, r.Builder)
	}
	return nil
}

// DecodeReport parses and validates a report as it arrived on subject:
// a report whose tenant and builder are not its subject's is refused
// (ErrInvalid). The subject is what binds a report to its publisher
// (see Report.Subject): a report is only a worker's word, and a runner
// must not speak for another builder, whose figures it would change or
// whose failures it would invent.
func DecodeReport(subject string, b []byte) (*Report, error) {
	r, err := queue.DecodeFarmMessage[Report](b, "report")
	if err != nil {
		return nil, fmt.Errorf("%w: report: %w", ErrInvalid, err)
	}
	if want, err := r.Subject(); err != nil || subject != want {
		return nil, fmt.Errorf("%w: a report of tenant %q and builder %q arrived on %s, not on %s", ErrInvalid, r.Tenant, r.Builder, subject, want)
	}
	return r, nil
}

// validID accepts set ids as NewSetID makes them.
func validID(id string) error {
	if len(id) < 8 || len(id) > 64 || strings.IndexFunc(id, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	}) >= 0 {
		return fmt.Errorf("%w: set id %q", ErrInvalid, id)
	}
	return nil
}
