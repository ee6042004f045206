package cachepush

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/nardiff"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
)

// Reasons and events of the quorum.
const (
	ReasonQuarantined = "quarantined"
	EventDisputed     = queue.EventDisputed
)

// Verdicts of a tally.
const (
	VerdictPending     = "pending"      // not enough agreeing votes yet
	VerdictAgreed      = "agreed"       // a quorum agrees on one NAR
	VerdictDisputed    = "disputed"     // builders disagree; nothing published
	VerdictTrustedOnly = "trusted-only" // disputed, published from the trusted builder
	// VerdictWaiting is what status says of a path decided without votes
	// (content-addressed) that waits for its references.
	VerdictWaiting = "waiting"
)

// KV is the key-value store of votes and reputation; *queue.Conn has it.
type KV interface {
	KVPut(ctx context.Context, bucket, key string, value []byte) error
	KVGet(ctx context.Context, bucket, key string) ([]byte, error)
	KVList(ctx context.Context, bucket, prefix string) (map[string][]byte, error)
	KVUpdate(ctx context.Context, bucket, key string, f func(old []byte) ([]byte, error)) error
	KVCreate(ctx context.Context, bucket, key string, value []byte) (uint64, error)
	KVUpdateAt(ctx context.Context, bucket, key string, value []byte, rev uint64) error
	KVDelete(ctx context.Context, bucket, key string) error
}

// Vote is one builder's verified claim about one output. Only verified
// results become votes; the bundle is kept for the provenance sidecar.
type Vote struct {
	Tenant     string          `json:"tenant"`
	StorePath  string          `json:"storePath"`
	DrvPath    string          `json:"drvPath"`
	System     string          `json:"system"`
	Builder    string          `json:"builder"`
	NarSHA256  string          `json:"narSha256"`
	NarSize    uint64          `json:"narSize"`
	References []string        `json:"references,omitempty"` // from the verified statement
	StagingKey string          `json:"stagingKey"`
	NixSig     string          `json:"nixSig,omitempty"` // checked against the policy's key
	Bundle     json.RawMessage `json:"bundle"`
	Time       time.Time       `json:"time"`
	MsgID      string          `json:"msgId,omitempty"`
	// Counted: this vote's agreement or disagreement is in the builder's
	// reputation (so a redelivery does not count it twice).
	Counted string `json:"counted,omitempty"`
}

// Answer is what a vote says the narinfo should state: NAR hash, NAR size
// and references. Votes agree only when their answers are equal: a quorum
// that agreed on the NAR bytes alone let one builder among the agreeing
// ones add a reference to any cached path, or drop the dependencies that
// keep live paths from collection.
func (v Vote) Answer() string {
	refs := slices.Clone(v.References)
	slices.Sort(refs)
	refs = slices.Compact(refs)
	return v.NarSHA256 + " " + strconv.FormatUint(v.NarSize, 10) + " " + strings.Join(refs, ",")
}

// Tally is the state of the votes on one output.
type Tally struct {
	Verdict string        `json:"verdict"`
	Why     string        `json:"why"`
	Quorum  policy.Quorum `json:"quorum"`
	Winner  string        `json:"winner,omitempty"` // NAR sha256 published (agreed or trusted-only)
	// Answer is the winning answer (Vote.Answer): the NAR, its size and
	// its references.
	Answer string `json:"-"`
	// Groups are the votes by answer (Vote.Answer).
	Groups   map[string][]Vote `json:"-"`
	Agreeing []Vote            `json:"-"`
	Minority []Vote            `json:"-"`
	Ignored  []string          `json:"ignored,omitempty"`  // quarantined builders
	Adaptive bool              `json:"adaptive,omitempty"` // a veteran's vote waived one confirmation
}

// Standing is what reputation says about the voters.
type Standing struct {
	Quarantined map[string]bool // votes ignored
	Veteran     map[string]bool // long clean record (quorum.trusted_after)
}

// Veteran is the quorum's rule for a builder whose long clean record
// waives one confirmation (quorum.trusted_after).
func Veteran(r Reputation, q policy.Quorum) bool {
	return q.TrustedAfter > 0 && r.Agreements >= q.TrustedAfter && r.Disagreements == 0 && !r.Quarantined
}

// StandingOf is the standing of the builders of votes under q, their
// records read with rep.
func StandingOf(votes []Vote, q policy.Quorum, rep func(builder string) Reputation) Standing {
	st := Standing{Quarantined: map[string]bool{}, Veteran: map[string]bool{}}
	for _, v := range votes {
		r := rep(v.Builder)
		st.Quarantined[v.Builder] = r.Quarantined
		st.Veteran[v.Builder] = Veteran(r, q)
	}
	return st
}

// PathTally reads the votes on storePath and the voters' records and
// tallies them as the pusher does: what `provenix status` reports. System
// is the votes' (empty without votes).
func PathTally(ctx context.Context, kv KV, pol *policy.Policy, tenant, storePath string) (t Tally, votes []Vote, system string, err error) {
	votes, err = Votes(ctx, kv, tenant, storePath, pol.BuilderIDs())
	if err != nil {
		return Tally{}, nil, "", err
	}
	for _, v := range votes {
		system = v.System
	}
	q := pol.QuorumFor(tenant, system, storePath)
	st := StandingOf(votes, q, func(b string) Reputation {
		if r, err := GetReputation(ctx, kv, b); err == nil {
			return *r
		}
		return Reputation{Builder: b}
	})
	return TallyVotes(pol, q, votes, st), votes, system, nil
}

// SpotChecked reports whether storePath is among the rate fraction of
// paths that always need the full quorum. It hashes the path, so every
// pusher picks the same paths and a builder cannot tell in advance.
func SpotChecked(storePath string, rate float64) bool {
	if rate <= 0 {
		return false
	}
	h := sha256.Sum256([]byte(storePath))
	return float64(binary.BigEndian.Uint32(h[:4]))/float64(1<<32) < rate
}

// TallyVotes decides on the votes for one output under q. Votes of
// quarantined builders are ignored. A NAR is agreed when its distinct
// voters reach q.Min and outnumber those of every other NAR.
func TallyVotes(p *policy.Policy, q policy.Quorum, votes []Vote, st Standing) Tally {
	t := Tally{Quorum: q, Groups: map[string][]Vote{}}
	for _, v := range votes {
		if st.Quarantined[v.Builder] {
			t.Ignored = append(t.Ignored, v.Builder)
			continue
		}
		t.Groups[v.Answer()] = append(t.Groups[v.Answer()], v)
	}
	type g struct {
		hash     string
		distinct int
	}
	var gs []g
	for h, vs := range t.Groups {
		builders := make([]string, len(vs))
		for i, v := range vs {
			builders[i] = v.Builder
		}
		gs = append(gs, g{h, p.CountDistinct(builders, q.Distinct)})
	}
	sort.Slice(gs, func(i, j int) bool {
		if gs[i].distinct != gs[j].distinct {
			return gs[i].distinct > gs[j].distinct
		}
		return gs[i].hash < gs[j].hash
	})
	if len(gs) == 0 {
		t.Verdict, t.Why = VerdictPending, "no counted votes"
		return t
	}
	best := gs[0]
	min := q.Min
	if q.TrustedAfter > 0 && min > 1 && len(votes) > 0 && !SpotChecked(votes[0].StorePath, q.SpotCheck) {
		for _, v := range t.Groups[best.hash] {
			if st.Veteran[v.Builder] {
				min-- // adaptive replication: a veteran's vote counts twice
				t.Adaptive = true
				break
			}
		}
	}
	second := 0
	if len(gs) > 1 {
		second = gs[1].distinct
	}
	setSides := func(winner string) {
		t.Answer = winner
		t.Winner = t.Groups[winner][0].NarSHA256
		for h, vs := range t.Groups {
			if h == winner {
				t.Agreeing = append(t.Agreeing, vs...)
			} else {
				t.Minority = append(t.Minority, vs...)
			}
		}
		sort.Slice(t.Agreeing, func(i, j int) bool { return t.Agreeing[i].Builder < t.Agreeing[j].Builder })
		sort.Slice(t.Minority, func(i, j int) bool { return t.Minority[i].Builder < t.Minority[j].Builder })
	}
	switch {
	case best.distinct >= min && best.distinct > second:
		t.Verdict = VerdictAgreed
		t.Why = fmt.Sprintf("%d distinct %s(s) agree on NAR %.12s, its size and references (quorum %d)", best.distinct, q.Distinct, best.hash, q.Min)
		if t.Adaptive {
			t.Why += ", one confirmation waived for a builder with a clean record"
		}
		if len(gs) > 1 {
			t.Why += fmt.Sprintf("; %d other answer(s) in the minority", len(gs)-1)
		}
		setSides(best.hash)
	case len(gs) > 1:
		t.Verdict = VerdictDisputed
		t.Why = fmt.Sprintf("%d different answers (NAR, size or references); the largest agreement is %d of %d required", len(gs), best.distinct, q.Min)
		if q.OnDisagreement == policy.OnDisagreementTrustedOnly {
			for h, vs := range t.Groups {
				for _, v := range vs {
					if v.Builder == q.Trusted {
						t.Verdict = VerdictTrustedOnly
						t.Why += fmt.Sprintf("; publishing trusted builder %s's NAR, unverified by quorum", q.Trusted)
						setSides(h)
					}
				}
			}
		}
	default:
		t.Verdict = VerdictPending
		t.Why = fmt.Sprintf("%d of %d distinct %s(s) so far", best.distinct, q.Min, q.Distinct)
	}
	return t
}

// Votes reads the votes of the given builders on storePath: one direct
// get per builder (the policy's builders are few), which is much cheaper
// than listing the bucket with a watcher. The gets run at once, so a
// vote waits one round trip for the others' votes, not one per builder.
func Votes(ctx context.Context, kv KV, tenant, storePath string, builders []string) ([]Vote, error) {
	raw := make([][]byte, len(builders))
	errs := make([]error, len(builders))
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxVoteReads)
	for i, id := range builders {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			raw[i], errs[i] = kv.KVGet(ctx, queue.BucketVotes, queue.VoteKey(tenant, storePath, id))
		})
	}
	wg.Wait()
	out := make([]Vote, 0, len(builders))
	for i, id := range builders {
		if errors.Is(errs[i], queue.ErrNotFound) {
			continue
		}
		if errs[i] != nil {
			return nil, errs[i]
		}
		var v Vote
		if err := json.Unmarshal(raw[i], &v); err != nil {
			return nil, fmt.Errorf("vote of %s on %s: %w", id, storePath, err)
		}
		if v.StorePath != storePath || v.Builder != id { // a hash-part collision would be news
			continue
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Builder < out[j].Builder })
	return out, nil
}

// maxVoteReads bounds the vote reads of one Votes call running at once.
const maxVoteReads = 8

// checkNixSig keeps a builder's Nix signature only if it verifies with the
// policy's key for that builder over the fingerprint of the attested
// output; anything else is dropped (and logged), never published.
func (p *Pusher) checkNixSig(builder, sig string, out attest.Output) string {
	if sig == "" {
		return ""
	}
	pub, ok := p.cfg.Policy.NixKey(builder)
	if !ok {
		p.log.Warn("builder sent a Nix signature but has no nix_key in the policy; dropped", "builder", builder)
		return ""
	}
	s, err := signature.ParseSignature(sig)
	if err != nil || s.Name != pub.Name || !pub.Verify(nix.Fingerprint(out.Path, out.NarHash, out.NarSize, out.References), s) {
		p.log.Warn("builder's Nix signature does not verify; dropped", "builder", builder, "path", out.Path)
		return ""
	}
	return sig
}

// vote records a verified output as a vote, tallies, and publishes when
// the quorum agrees. It returns what became of the output and whether it
// still waits for votes. The reputation of the decided votes is counted
// in after: the caller waits for it before the result is acked.
func (p *Pusher) vote(ctx context.Context, r *queue.Result, v *attest.Verified, out attest.Output, o queue.Output, msgID string, after *sync.WaitGroup) (oc outcome, pending bool, err error) {
	vote := Vote{
		Tenant: r.Tenant, StorePath: out.Path, DrvPath: v.DrvPath, System: v.System, Builder: v.BuilderID,
		NarSHA256: out.NarHashHex(), NarSize: out.NarSize, References: out.References, StagingKey: o.StagingKey,
		NixSig: p.checkNixSig(v.BuilderID, o.NixSig, out), Bundle: r.Bundle, Time: time.Now().UTC(), MsgID: msgID,
	}
	key := queue.VoteKey(r.Tenant, out.Path, v.BuilderID)
	first, err := json.Marshal(vote)
	if err != nil {
		return 0, false, err
	}
	// Most votes are a builder's first on a path: one round trip. Its
	// revision lets countReputation mark it counted without reading it
	// back (0 when it replaced an older vote: that one is read).
	rev, err := p.cfg.KV.KVCreate(ctx, queue.BucketVotes, key, first)
	if errors.Is(err, queue.ErrKeyExists) {
		// A builder's newer vote replaces its older one, keeping the
		// reputation mark and the time when it is the same NAR (a
		// redelivery, or a relay by anyone who may publish results:
		// with a new time, the deciding vote would sort after a late
		// one, which would earn its agreement: decisive).
		err = p.cfg.KV.KVUpdate(ctx, queue.BucketVotes, key, func(old []byte) ([]byte, error) {
			var prev Vote
			if old != nil && json.Unmarshal(old, &prev) == nil && prev.Answer() == vote.Answer() {
				vote.Counted, vote.Time = prev.Counted, prev.Time
				if prev.NixSig != "" && vote.NixSig == "" {
					vote.NixSig = prev.NixSig
				}
			}
			return json.Marshal(vote)
		})
	}
	if err != nil {
		return 0, false, fmt.Errorf("record vote: %w", err)
	}

	// The others' votes; this builder's is the one just written.
	var others []string
	for _, id := range p.cfg.Policy.BuilderIDs() {
		if id != v.BuilderID {
			others = append(others, id)
		}
	}
	votes, err := Votes(ctx, p.cfg.KV, r.Tenant, out.Path, others)
	if err != nil {
		return 0, false, fmt.Errorf("read votes: %w", err)
	}
	votes = append(votes, vote)
	sort.Slice(votes, func(i, j int) bool { return votes[i].Builder < votes[j].Builder })
	q := p.cfg.Policy.QuorumFor(r.Tenant, v.System, out.Path)
	t := TallyVotes(p.cfg.Policy, q, votes, StandingOf(votes, q, func(b string) Reputation { return p.reputation(ctx, b) }))
	p.log.Info("tally", "path", out.Path, "builder", v.BuilderID, "verdict", t.Verdict, "why", t.Why)
	p.cfg.Metrics.Vote(t.Verdict)

	if slices.Contains(t.Ignored, v.BuilderID) && t.Verdict != VerdictAgreed && t.Verdict != VerdictTrustedOnly {
		// Its vote stays for audit but counts for nothing: say so, so
		// that whoever asked for this build (the farm) asks another.
		return 0, false, rejected(ReasonQuarantined, fmt.Errorf("%s: builder %s is quarantined; its vote is not counted", out.Path, v.BuilderID))
	}
	if t.Verdict == VerdictPending || t.Verdict == VerdictDisputed {
		p.voided(ctx, r.Tenant, v.DrvPath, v.BuilderID, votes, t)
	}
	switch t.Verdict {
	case VerdictPending:
		return outPending, true, nil
	case VerdictDisputed:
		p.disputed(ctx, r.Tenant, out.Path, v.DrvPath, t)
		// More independent votes may still settle it.
		return outPending, true, nil
	}
	if t.Verdict == VerdictTrustedOnly {
		p.disputed(ctx, r.Tenant, out.Path, v.DrvPath, t)
	}
	oc, err = p.publishAgreed(ctx, t, v.BuilderID)
	if err != nil {
		return 0, false, err
	}
	if oc != outExisting {
		p.cfg.Metrics.QuorumWait(time.Since(firstVote(t.Agreeing)))
	}
	if t.Verdict == VerdictAgreed {
		// Reputation counts only decided votes: agreement with the
		// published NAR, or disagreement with it.
		count := func() {
			p.countReputation(ctx, r.Tenant, out.Path, t, storedVote{vote: vote, rev: rev, json: first})
			p.releaseEvidence(ctx, r.Tenant, out.Path, t)
		}
		if len(t.Minority) > 0 {
			// A disagreement may quarantine its builder: counted before
			// the result's next output is tallied, not alongside it.
			count()
		} else {
			after.Go(count)
		}
	}
	if vote.Answer() != t.Answer {
		return 0, false, rejected(ReasonConflict, fmt.Errorf("%s: this answer (NAR %s, its size and references) is in the minority; NAR %s (%s) won", out.Path, vote.NarSHA256, t.Winner, t.Verdict))
	}
	return oc, false, nil
}

// voided announces the votes of builders quarantined after they voted
// (t.Ignored, other than voter's): each was counted as a replica by
// whoever asked for it (the farm) and now counts for nothing, while the
// tally still waits. Without a rejection event for each, the farm waits
// forever for a replica that was built and will never count, and a
// dispute among the counted votes asks for too few replicas. A
// redelivered or repeated event changes nothing there.
func (p *Pusher) voided(ctx context.Context, tenant, drv, voter string, votes []Vote, t Tally) {
	for _, v := range votes {
		if v.Builder == voter || !slices.Contains(t.Ignored, v.Builder) {
			continue
		}
		p.log.Info("vote of a builder quarantined since counts for nothing", "path", v.StorePath, "builder", v.Builder)
		p.event(ctx, tenant, queue.EventRejected, Rejection{Time: time.Now().UTC(), MsgID: v.MsgID, Tenant: tenant,
			Builder: v.Builder, DrvPath: cmp.Or(v.DrvPath, drv), System: v.System, Reason: ReasonQuarantined,
			Error: fmt.Sprintf("%s: builder %s was quarantined after it voted; its vote is not counted", v.StorePath, v.Builder)})
	}
}

// publishAgreed writes the winning NAR into the cache, or adds newly
// agreeing bundles and signatures to the entry already there. Everything
// it writes comes from verified votes.
//
// The NAR is read from the staged object of by's vote (the builder whose
// result completed the quorum: its key is its own doing) when it agrees,
// and else, or when that one is missing or not the agreed NAR, from the
// other agreeing votes' in turn. A vote's staging key is not signed:
// anyone who may publish results can relay a builder's result with
// another key, which replaces its vote's (a builder stages in its own
// scope, which process checks; an unscoped key is anyone's), and that
// must neither keep the agreed NAR out nor get the completing builder's
// result refused.
func (p *Pusher) publishAgreed(ctx context.Context, t Tally, by string) (outcome, error) {
	order := slices.Clone(t.Agreeing)
	if i := slices.IndexFunc(order, func(v Vote) bool { return v.Builder == by }); i > 0 {
		order[0], order[i] = order[i], order[0]
	}
	var first error
	for i, a := range order {
		oc, err := p.publishAgreedFrom(ctx, t, a)
		if err == nil || !stagedNARWrong(err) {
			return oc, err
		}
		if i == 0 {
			first = err
		}
		p.log.Warn("agreed NAR not in a vote's staged object; trying the next agreeing vote's", "path", a.StorePath, "builder", a.Builder, "err", err)
	}
	return 0, first
}

// stagedNARWrong reports whether err refused a staged object: missing,
// or not the attested NAR.
func stagedNARWrong(err error) bool {
	var re *RejectedError
	return errors.As(err, &re) && (re.Reason == ReasonNAR || re.Reason == ReasonRestage || re.Reason == ReasonStaging)
}

// publishAgreedFrom is publishAgreed with a's staged object.
func (p *Pusher) publishAgreedFrom(ctx context.Context, t Tally, a Vote) (outcome, error) {
	var out attest.Output
	out.Path, out.NarSize, out.References = a.StorePath, a.NarSize, a.References
	if _, err := hex.Decode(out.NarHash[:], []byte(a.NarSHA256)); err != nil {
		return 0, fmt.Errorf("vote of %s: NAR hash %q: %w", a.Builder, a.NarSHA256, err)
	}
	var bundles []json.RawMessage
	var sigs, agreeing []string
	for _, v := range t.Agreeing {
		bundles = append(bundles, v.Bundle)
		agreeing = append(agreeing, v.Builder)
		if v.NixSig != "" {
			sigs = append(sigs, v.NixSig)
		}
	}
	info := &cachelayout.QuorumInfo{Verdict: t.Verdict, Min: t.Quorum.Min, Distinct: t.Quorum.Distinct, Agreeing: agreeing,
		UnverifiedByQuorum: t.Verdict == VerdictTrustedOnly}
	m := entryMeta{tenant: a.Tenant, builder: a.Builder, msgID: a.MsgID, drv: agreedDeriver(t.Agreeing)}
	return p.writeEntry(ctx, m, out, a.StagingKey, bundles, sigs, info)
}

// agreedDeriver is the derivation every agreeing vote names, or "" when
// they name different ones: the narinfo's Deriver is then left out rather
// than taken from whichever builder sorts first.
func agreedDeriver(votes []Vote) string {
	for _, v := range votes[1:] {
		if v.DrvPath != votes[0].DrvPath {
			return ""
		}
	}
	return votes[0].DrvPath
}

// disputed reports a disagreement; the votes stay for audit.
func (p *Pusher) disputed(ctx context.Context, tenant, storePath, drv string, t Tally) {
	d := Dispute{Time: time.Now().UTC(), Tenant: tenant, StorePath: storePath, DrvPath: drv, Verdict: t.Verdict, Why: t.Why, NARs: map[string][]string{}}
	for _, a := range slices.Sorted(maps.Keys(t.Groups)) {
		vs := t.Groups[a]
		ans := DisputeAnswer{NarSHA256: vs[0].NarSHA256, NarSize: vs[0].NarSize, References: slices.Sorted(slices.Values(vs[0].References))}
		for _, v := range vs {
			d.NARs[v.NarSHA256] = append(d.NARs[v.NarSHA256], v.Builder)
			ans.Builders = append(ans.Builders, v.Builder)
		}
		sort.Strings(ans.Builders)
		d.Answers = append(d.Answers, ans)
	}
	for h := range d.NARs {
		sort.Strings(d.NARs[h])
	}
	p.log.Warn("disputed", "path", storePath, "why", t.Why, "nars", d.NARs)
	var votes []Vote
	var bundles []json.RawMessage
	for _, vs := range t.Groups {
		votes = append(votes, vs...)
		for _, v := range vs {
			bundles = append(bundles, v.Bundle)
		}
	}
	p.verdict(Verdict{Kind: EventDisputed, Tenant: tenant, StorePath: storePath, Bundles: bundles, Why: t.Why})
	p.holdEvidence(ctx, tenant, storePath, votes)
	p.explainDispute(ctx, tenant, d, votes)
}

// explainDispute publishes the dispute with a summary of what differs
// between its NARs. The diff runs after the verdict, in the background,
// under tight limits and DiffTimeout, at most maxSummaryDiffs at once: it
// never delays the result that caused it, and when it cannot run (busy,
// disabled, the NARs unreadable) the event goes out without a summary or
// with its error.
func (p *Pusher) explainDispute(ctx context.Context, tenant string, d Dispute, votes []Vote) {
	if p.cfg.DiffTimeout < 0 || len(DistinctNARs(votes)) < 2 {
		p.event(ctx, tenant, EventDisputed, d)
		return
	}
	select {
	case p.diffSlots <- struct{}{}:
	default:
		d.Summary = &nardiff.Summary{Error: "not compared: the pusher was busy comparing other disputes"}
		p.event(ctx, tenant, EventDisputed, d)
		return
	}
	ctx = context.WithoutCancel(ctx)
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		defer func() { <-p.diffSlots }()
		d.Summary = p.disputeSummary(ctx, votes, d.StorePath, p.cfg.DiffTimeout)
		if d.Summary != nil {
			p.log.Warn("dispute explained", "path", d.StorePath, "summary", d.Summary.String())
		}
		ctx, cancel := context.WithTimeout(ctx, queue.DefaultTimeout)
		defer cancel()
		p.event(ctx, tenant, EventDisputed, d)
	}()
}

// Dispute is the event published on events.<tenant>.disputed.
type Dispute struct {
	Time      time.Time           `json:"time"`
	Tenant    string              `json:"tenant"`
	StorePath string              `json:"storePath"`
	DrvPath   string              `json:"drvPath"`
	Verdict   string              `json:"verdict"`
	Why       string              `json:"why"`
	NARs      map[string][]string `json:"nars"` // NAR sha256 → builders
	// Answers are the distinct answers (NAR, size, references) and who
	// gave each: builders that agree on the NAR but not on its references
	// disagree.
	Answers []DisputeAnswer `json:"answers"`
	// Summary says what differs between the two most voted NARs: the
	// top differing files and the recognised causes (nil when the answers
	// differ only in their references).
	Summary *nardiff.Summary `json:"summary,omitempty"`
}

// DisputeAnswer is one answer of a dispute.
type DisputeAnswer struct {
	NarSHA256  string   `json:"narSha256"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Builders   []string `json:"builders"`
}

// firstVote is the time of the earliest of votes (which is not empty).
func firstVote(votes []Vote) time.Time {
	first := votes[0].Time
	for _, v := range votes[1:] {
		if v.Time.Before(first) {
			first = v.Time
		}
	}
	return first
}
