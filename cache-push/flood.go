package cachepush

// What keeps one builder (or one message) from stalling a pusher: a share
// of the handlers per builder, a bound on the failures of one message
// (then a dead-letter event), terminal errors recognised as terminal, and
// the reputation cost of signing malformed provenance.

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/storepath"
)

// ReasonDeadLetter is the rejection reason counted for a result given up
// after Config.MaxFailures retryable failures.
const ReasonDeadLetter = "dead-letter"

// EventDeadLetter is the event kind of a result given up on.
const EventDeadLetter = "dead-letter"

// DefaultMaxFailures is Config.MaxFailures' default.
const DefaultMaxFailures = 20

// DefaultDeferDelay is Config.DeferDelay's default.
const DefaultDeferDelay = 500 * time.Millisecond

// outageWindow: a failing message is given up only when some other
// message came through in this window; when none did, the failures are
// more likely an outage of something every message needs.
const outageWindow = time.Minute

// ErrDeadLettered wraps the last error of a result given up on.
var ErrDeadLettered = errors.New("result dead-lettered")

// DeadLetter is the event published on events.<tenant>.dead-letter when a
// result is given up after repeated retryable failures. Builder is what
// the message says (unverified: a message may name any builder).
type DeadLetter struct {
	Time    time.Time `json:"time"`
	MsgID   string    `json:"msgId,omitempty"`
	Tenant  string    `json:"tenant"`
	Builder string    `json:"builder,omitempty"`
	Subject string    `json:"subject"`
	// Stream is the message's sequence in RESULTS, to find or replay it.
	Stream uint64 `json:"stream"`
	// Deliveries is the server's count (deferrals included); Failures the
	// retryable failures this pusher saw.
	Deliveries uint64 `json:"deliveries"`
	Failures   int    `json:"failures"`
	Error      string `json:"error"`
}

// floodState is the Pusher's bookkeeping for the above.
type floodState struct {
	// share is how many handlers one builder may occupy; 0: no limit.
	share int

	mu       sync.Mutex
	busy     map[string]int       // handlers per (routing) builder id
	suspect  map[string]time.Time // builders held to their share, until
	failures map[uint64]int       // retryable failures per stream sequence
	lastDone atomic.Int64         // unix ns of the last success
}

// maxFailureEntries bounds the failure counts kept: a message handled by
// another member of the group is never seen again here.
const maxFailureEntries = 100_000

// suspectFor is how long a builder whose result failed or was rejected
// is held to its share of the handlers.
const suspectFor = time.Minute

// builderShare is the share of concurrency handlers one builder may hold:
// half, rounded up, so a flood leaves the other half to everyone else.
func builderShare(concurrency int) int {
	if concurrency <= 1 {
		return 0
	}
	return (concurrency + 1) / 2
}

// maxDeferDelay caps deferDelay.
const maxDeferDelay = 30 * time.Second

// deferDelay is how long to defer a message on its n-th delivery: base,
// doubling with each delivery. The server hands out due redeliveries
// before new messages, so a flood of deferred messages coming back
// faster than the free handlers can defer them again would keep every
// new message, the other builders' too, from being delivered at all.
// Growing delays thin the flood out; a builder deferred now and then
// waits little.
func deferDelay(base time.Duration, n uint64) time.Duration {
	if n < 1 {
		n = 1
	}
	if n > 8 {
		return maxDeferDelay
	}
	return min(base<<(n-1), maxDeferDelay)
}

// routingBuilder reads the builder id a result message names, without
// validating anything: it is for scheduling only, never for trust.
func routingBuilder(data []byte) string {
	var r struct {
		Builder string `json:"builder"`
	}
	if json.Unmarshal(data, &r) != nil {
		return ""
	}
	return routingID(r.Builder)
}

// routingBuilderOf is routingBuilder for a message already decoded into
// r (nil when it did not decode): the same field, read once. The
// signature is checked later; this is still scheduling only.
func routingBuilderOf(r *queue.Result, data []byte) string {
	if r == nil {
		return routingBuilder(data)
	}
	return routingID(r.Builder)
}

func routingID(b string) string {
	if len(b) > 256 {
		return b[:256]
	}
	return b
}

// acquire takes one of builder's handler slots, or reports false when the
// builder is suspect and holds its share already. A builder whose
// results go through may use every handler: a deployment with one
// builder, or one busy builder among idle ones, keeps its throughput;
// queueing behind valid results is first come, first served.
func (f *floodState) acquire(builder string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy == nil {
		f.busy = map[string]int{}
	}
	if f.share > 0 && f.busy[builder] >= f.share && time.Now().Before(f.suspect[builder]) {
		return false
	}
	f.busy[builder]++
	return true
}

// distrust holds builder to its share for a while: one of its results
// failed or was rejected. The id is the unverified one of the message, so
// junk naming an honest builder can cost it half the handlers for a
// while, never all of them.
func (f *floodState) distrust(builder string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.suspect == nil || len(f.suspect) >= maxFailureEntries {
		f.suspect = map[string]time.Time{}
	}
	f.suspect[builder] = time.Now().Add(suspectFor)
}

func (f *floodState) release(builder string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy[builder]--; f.busy[builder] <= 0 {
		delete(f.busy, builder)
	}
}

// failed counts one retryable failure of the message at seq and returns
// the count so far.
func (f *floodState) failed(seq uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failures == nil || len(f.failures) >= maxFailureEntries {
		f.failures = map[uint64]int{}
	}
	f.failures[seq]++
	return f.failures[seq]
}

// done forgets the message at seq; progress records a success.
func (f *floodState) done(seq uint64, progress bool) {
	f.mu.Lock()
	delete(f.failures, seq)
	f.mu.Unlock()
	if progress {
		f.lastDone.Store(time.Now().UnixNano())
	}
}

// progressing reports whether some message succeeded lately.
func (f *floodState) progressing() bool {
	ns := f.lastDone.Load()
	return ns != 0 && time.Since(time.Unix(0, ns)) < outageWindow
}

// outage reports errors that hit every message alike: retrying them
// forever is right, and giving up on a result because of them would lose
// it. The store full, JetStream full or over quota, the connection gone.
func outage(err error) bool {
	for _, e := range []error{store.ErrNoSpace, queue.ErrStorageFull, queue.ErrQuotaExceeded, queue.ErrPermissionDenied,
		nats.ErrConnectionClosed, nats.ErrConnectionDraining, nats.ErrNoResponders, nats.ErrDisconnected,
		jetstream.ErrNoStreamResponse} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// unfixable reports errors that no retry can fix: a key or name the
// broker or store refuses, a malformed value, JSON that does not decode or
// encode. They are terminal (a rejection), not retried.
func unfixable(err error) bool {
	for _, e := range []error{queue.ErrInvalidName, queue.ErrMalformed, queue.ErrTooLarge, jetstream.ErrInvalidKey,
		nats.ErrInvalidKey, store.ErrInvalidKey, storepath.ErrInvalid} {
		if errors.Is(err, e) {
			return true
		}
	}
	var (
		syn  *json.SyntaxError
		typ  *json.UnmarshalTypeError
		val  *json.UnsupportedValueError
		typ2 *json.UnsupportedTypeError
		mar  *json.MarshalerError
		hx   hex.InvalidByteError
	)
	return errors.As(err, &syn) || errors.As(err, &typ) || errors.As(err, &val) || errors.As(err, &typ2) ||
		errors.As(err, &mar) || errors.As(err, &hx) || errors.Is(err, hex.ErrLength)
}

// deadLetter reports a result given up on.
func (p *Pusher) deadLetter(ctx context.Context, d *queue.Delivery, builder string, failures int, err error) {
	dl := DeadLetter{Time: time.Now().UTC(), MsgID: d.MsgID, Tenant: tenantOf(d.Subject), Builder: builder, Subject: d.Subject,
		Stream: d.Stream, Deliveries: d.NumDelivered, Failures: failures, Error: err.Error()}
	p.cfg.Metrics.Rejected(ReasonDeadLetter)
	p.log.Error("result dead-lettered after repeated failures", "msgId", d.MsgID, "builder", builder, "subject", d.Subject,
		"stream", d.Stream, "deliveries", d.NumDelivered, "failures", failures, "err", err)
	p.event(ctx, dl.Tenant, EventDeadLetter, dl)
}

// statementErr checks what a verified statement says with the rules the
// unsigned result's fields get (attest checks only the shape): paths a
// builder signed that are not store paths are its fault.
func statementErr(v *attest.Verified) error {
	if err := storepath.Check(v.DrvPath); err != nil {
		return fmt.Errorf("derivation: %w", err)
	}
	if err := queue.ValidToken(v.System); err != nil {
		return fmt.Errorf("system: %w", err)
	}
	seen := map[string]bool{}
	for _, o := range v.Outputs {
		if err := storepath.Check(o.Path); err != nil {
			return fmt.Errorf("output: %w", err)
		}
		if o.Name == "" || seen[o.Name] || strings.ContainsAny(o.Name, " \t\r\n/") {
			return fmt.Errorf("output %s: empty, repeated or invalid output name %q", o.Path, o.Name)
		}
		seen[o.Name] = true
		for _, ref := range o.References {
			if err := storepath.Check(ref); err != nil {
				return fmt.Errorf("output %s: reference: %w", o.Path, err)
			}
		}
	}
	return nil
}

// signedMalformed tells whether data, a result that did not decode, holds
// a bundle a trusted builder signed over a malformed statement, and which
// builder: only then is the defect that builder's (anyone can put a
// builder's id, or a copy of its valid bundle, into a bad result).
func (p *Pusher) signedMalformed(data []byte) (builder string, err error) {
	var raw struct {
		Bundle json.RawMessage `json:"bundle"`
	}
	if json.Unmarshal(data, &raw) != nil || len(raw.Bundle) == 0 {
		return "", nil
	}
	want := rawSubjects(raw.Bundle)
	if len(want) == 0 {
		return "", nil
	}
	return p.blame(raw.Bundle, want)
}

// blame verifies bundle against want and returns the builder whose
// signed statement is malformed, with the defect; "" when the signature
// does not verify or the statement is fine.
func (p *Pusher) blame(bundle []byte, want []attest.Subject) (string, error) {
	v, err := p.verifier.Verify(bundle, want)
	var sm *attest.SignedMalformedError
	if errors.As(err, &sm) {
		return sm.BuilderID, sm
	}
	if err != nil {
		return "", nil
	}
	if serr := statementErr(v); serr != nil {
		return v.BuilderID, serr
	}
	return "", nil
}

// rawSubjects reads the subjects (name and sha256) of a bundle's DSSE
// payload without judging them, so that a statement whose subjects are
// malformed can still have its signature checked.
func rawSubjects(bundle []byte) []attest.Subject {
	var b struct {
		DSSE struct {
			Payload string `json:"payload"`
		} `json:"dsseEnvelope"`
	}
	if json.Unmarshal(bundle, &b) != nil {
		return nil
	}
	payload, err := base64.StdEncoding.DecodeString(b.DSSE.Payload)
	if err != nil {
		return nil
	}
	var st struct {
		Subject []struct {
			Name   string            `json:"name"`
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
	}
	if json.Unmarshal(payload, &st) != nil {
		return nil
	}
	var out []attest.Subject
	for _, s := range st.Subject {
		h, err := hex.DecodeString(s.Digest["sha256"])
		if err != nil || len(h) != sha256.Size {
			continue
		}
		var sub attest.Subject
		sub.Path = s.Name
		copy(sub.NarHash[:], h)
		out = append(out, sub)
	}
	return out
}

// chargeMalformed counts a malformed statement signed by builder against
// its reputation, and quarantines it under the policy's reputation rule
// (as for minority votes). The same bundle counts once: a relayed copy of
// one mistake is not a second one.
func (p *Pusher) chargeMalformed(ctx context.Context, builder string, bundle []byte) {
	sum := sha256.Sum256(bundle)
	digest := hex.EncodeToString(sum[:8])
	rule := p.cfg.Policy.Reputation
	now := time.Now().UTC()
	err := p.updateReputation(ctx, builder, func(r *Reputation) {
		r.LastSeen = now
		var recent []MalformedMark
		for _, m := range r.MalformedRecent {
			if m.Digest == digest {
				recent = nil
				return
			}
			if now.Sub(m.Time) < rule.Window {
				recent = append(recent, m)
			}
		}
		r.Malformed++
		r.MalformedRecent = append(recent, MalformedMark{Time: now, Digest: digest})
		if len(r.MalformedRecent) > rule.QuarantineAfter {
			r.MalformedRecent = r.MalformedRecent[len(r.MalformedRecent)-rule.QuarantineAfter:]
		}
		if len(r.MalformedRecent) >= rule.QuarantineAfter && !r.Quarantined {
			r.Quarantined, r.QuarantinedAt = true, &now
			p.log.Warn("builder quarantined for signing malformed provenance", "builder", builder, "malformed", r.Malformed)
		}
	})
	if err != nil {
		p.log.Warn("reputation not updated", "builder", builder, "err", err)
	}
}

// rawBundle is the bundle of a result message that did not decode.
func rawBundle(data []byte) []byte {
	var raw struct {
		Bundle json.RawMessage `json:"bundle"`
	}
	_ = json.Unmarshal(data, &raw)
	return raw.Bundle
}
